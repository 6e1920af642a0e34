"""The personal head (``fedsa_lora.personalization.personal_head``) on a tiny random BERT:
it starts at zero (the model is the shared head's), it adds its logits to the head's, it is
never in any round's shared set, and the exports' folding into one head gives the same
logits.  No broker: model building and pure functions only."""

from __future__ import annotations

import pytest
import torch

from fedsa_common.federation.adaptive_split import round_shared
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import ALGORITHMS, local_names, role, shared_names
from quant.adapters import build_adapter_model
from quant.peft_export import fp32_adapter
from quant.personal_head import fold_personal_head

SPEC_FIELDS = {"path": "tiny-bert", "precision": "fp32", "max_length": 16, "num_labels": 3}


def config(**personal: object) -> FederationConfig:
    return FederationConfig.model_validate({
        "federation": {"name": "ph", "seed": 5}, "model": SPEC_FIELDS,
        "fedsa_lora": {"personalization": personal}})


@pytest.fixture(scope="module")
def models():
    spec = config().model
    plain = build_adapter_model(spec, 3, seed=5, init="b_random")
    personal = build_adapter_model(spec, 3, seed=5, init="b_random", personal_head=True)
    for adapter in (plain, personal):
        adapter.model.eval()
    return plain, personal


def logits(adapter, texts=("a short text", "another one, longer than the first")):
    batch = adapter.tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return adapter.model(**batch).logits


def test_the_personal_head_starts_at_zero_so_the_model_is_the_shared_heads(models) -> None:
    plain, personal = models
    extra = sorted(set(personal.names) - set(plain.names))
    assert extra == ["personal_head.bias", "personal_head.weight"]
    assert {role(n) for n in extra} == {"personal"}
    assert all(torch.count_nonzero(personal.get([n])[n]) == 0 for n in extra)
    assert torch.equal(logits(plain), logits(personal))


def test_its_logits_add_to_the_heads_and_folding_gives_the_same_model(models) -> None:
    _, personal = models
    g = torch.Generator().manual_seed(1)
    values = personal.get()
    values["personal_head.weight"] = torch.randn(values["personal_head.weight"].shape,
                                                 generator=g)
    values["personal_head.bias"] = torch.tensor([0.5, -1.0, 2.0])
    personal.set(values)
    try:
        with_personal = logits(personal)
        personal.set({n: torch.zeros_like(v) for n, v in values.items()
                      if role(n) == "personal"})
        assert not torch.allclose(with_personal, logits(personal))  # it does add something
        folded = fold_personal_head(values)
        assert set(folded) == {n for n in values if role(n) != "personal"}
        one_head = fp32_adapter(config().model, 3, folded)
        assert torch.allclose(logits(one_head), with_personal, atol=1e-5)
    finally:
        personal.set({n: torch.zeros_like(v) for n, v in values.items()
                      if role(n) == "personal"})


def test_values_without_a_personal_head_fold_to_themselves() -> None:
    values = {"classifier.weight": torch.ones(2, 4), "classifier.bias": torch.zeros(2)}
    assert fold_personal_head(values).keys() == values.keys()
    with pytest.raises(ValueError, match=r"personal_head\.bias"):
        fold_personal_head({"personal_head.bias": torch.zeros(2)})


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_algorithm_and_no_round_shares_the_personal_head(models, algorithm: str) -> None:
    names = models[1].names
    assert not any(role(n) == "personal" for n in shared_names(names, algorithm))
    assert {"personal_head.weight", "personal_head.bias"} <= set(local_names(names, algorithm))
    if algorithm != "local":
        shared = round_shared(names, config(personal_head=True).model_copy(
            update={"fedsa_lora": config(personal_head=True).fedsa_lora.model_copy(
                update={"algorithm": algorithm})}), 1)
        assert "classifier.weight" in shared  # the head is shared ...
        assert not any(role(n) == "personal" for n in shared)  # ... its correction is not


def test_dumped_only_when_on_so_digests_stay() -> None:
    assert "personal_head" not in config().model_dump()["fedsa_lora"].get(
        "personalization", {})
    assert config(personal_head=True).model_dump()["fedsa_lora"]["personalization"] == {
        "personal_head": True}
    assert config(personal_head=False).digest() == config().digest()


@pytest.mark.parametrize(("fields", "message"), [
    ({"fedsa_lora": {"algorithm": "local"}}, "algorithm local"),
    ({"fedsa_lora": {"personalization": {"share_head_rounds": 0}}}, "share_head_rounds 0"),
    ({"model": {"task": "causal_lm", "path": "tiny-causal"}}, "causal_lm"),
])
def test_a_personal_head_without_a_shared_head_is_refused_naming_the_field(
        fields: dict, message: str) -> None:
    raw = {"federation": {"name": "ph", "seed": 5}, "model": dict(SPEC_FIELDS),
           "fedsa_lora": {"personalization": {"personal_head": True}}}
    for key, value in fields.items():
        if key == "model":
            raw["model"] = value
        else:
            raw["fedsa_lora"]["algorithm"] = value.get("algorithm", "fedsa")
            raw["fedsa_lora"]["personalization"].update(value.get("personalization", {}))
    with pytest.raises(ValueError, match=rf"fedsa_lora\.personalization\.personal_head.*"
                                         rf"{message}|{message}.*personal_head"):
        FederationConfig.model_validate(raw)


def test_the_shared_model_trains_as_without_a_personal_head() -> None:
    """FedRoD's separate losses: the LoRA tensors and the shared head end where they end
    without a personal head (the personal head takes none of their gradient), while the
    personal head learns; trained on the sum alone, the shared tensors would differ."""
    from edge_client.training import tokenize, train_steps

    spec = config().model
    texts = [f"text number {i} about {'cats' if i % 3 else 'dogs'}" for i in range(24)]
    labels = [i % 3 for i in range(24)]
    ends = []
    for personal in (False, True):
        adapter = build_adapter_model(spec, 3, seed=5, init="b_random", personal_head=personal)
        adapter.enable_all()
        train_steps(adapter, tokenize(adapter, texts, labels), steps=4, batch_size=8,
                    lr=1e-2, head_lr=3e-2, seed=1)
        ends.append(adapter.get())
    plain, with_personal = ends
    for name, value in plain.items():
        assert torch.allclose(value, with_personal[name], atol=1e-6), name
    assert all(torch.count_nonzero(with_personal[n]) > 0
               for n in ("personal_head.weight", "personal_head.bias"))
