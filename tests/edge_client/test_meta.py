"""First-order Per-FedAvg (edge_client/meta.py): the meta step's gradient is the second
batch's gradient at the inner step's point, computed on a two-parameter model where it can be
written down; and inside ``train_steps`` on a tiny random BERT, an inner rate of 0 is a plain
step while any other rate changes training."""

from __future__ import annotations

import pytest
import torch

from edge_client.data import DataSpec, load_device_data
from edge_client.host import ModelHost
from edge_client.meta import PerFedAvg, inner_values, meta_backward
from edge_client.personalize import adapted_names, meta_for
from edge_client.training import TokenizedSplit, tokenize, train_steps
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import local_names, role, shared_names, trainable_names

MODEL = {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3}


def config(**personalization) -> FederationConfig:
    return FederationConfig.model_validate({
        "federation": {"seed": 2}, "model": MODEL,
        "fedsa_lora": {"personalization": personalization}})


# the meta step on a model small enough to differentiate by hand --------------------------
# loss(w, v; x, y) = (w * v * x - y)^2 summed over the batch: w is "adapted" (local), v is not
D1 = (torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0]))
D2 = (torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.0]))


def loss(w: torch.Tensor, v: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]
         ) -> torch.Tensor:
    x, y = batch
    return ((w * v * x - y) ** 2).sum()


def grads_at(w: float, v: float, batch) -> tuple[float, float]:
    """∂loss/∂w and ∂loss/∂v, by hand."""
    x, y = batch
    r = w * v * x - y
    return float((2 * r * v * x).sum()), float((2 * r * w * x).sum())


def meta_grads(alpha: float, w0: float = 0.7, v0: float = -0.4):
    params = {"w": torch.nn.Parameter(torch.tensor(w0)),
              "v": torch.nn.Parameter(torch.tensor(v0))}

    def backward(batch) -> float:
        value = loss(params["w"], params["v"], batch)
        value.backward()
        return float(value)

    out = meta_backward(params, {"w": alpha}, lambda: backward(D1), lambda: backward(D2))
    return params, out


def test_the_outer_gradient_is_the_second_batch_at_the_inner_point() -> None:
    alpha, w0, v0 = 0.05, 0.7, -0.4
    params, out = meta_grads(alpha, w0, v0)
    w1 = w0 - alpha * grads_at(w0, v0, D1)[0]  # only w takes the inner step
    gw, gv = grads_at(w1, v0, D2)
    assert float(params["w"].grad) == pytest.approx(gw, rel=1e-5)
    assert float(params["v"].grad) == pytest.approx(gv, rel=1e-5)
    assert out == pytest.approx(float(loss(torch.tensor(w1), torch.tensor(v0), D2)), rel=1e-5)
    # the parameters are back at θ for the optimizer to step from
    assert float(params["w"]) == pytest.approx(w0) and float(params["v"]) == pytest.approx(v0)
    # and the gradient is not the one at θ (nor D1's)
    assert float(params["w"].grad) != pytest.approx(grads_at(w0, v0, D2)[0], rel=1e-3)


def test_an_inner_rate_of_zero_is_the_second_batchs_plain_gradient() -> None:
    params, _ = meta_grads(0.0)
    gw, gv = grads_at(0.7, -0.4, D2)
    assert float(params["w"].grad) == pytest.approx(gw, rel=1e-6)
    assert float(params["v"].grad) == pytest.approx(gv, rel=1e-6)


def test_parameters_are_restored_when_the_outer_pass_fails() -> None:
    params = {"w": torch.nn.Parameter(torch.tensor(1.0))}

    def inner() -> None:
        loss(params["w"], torch.tensor(1.0), D1).backward()

    def outer() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        meta_backward(params, {"w": 0.5}, inner, outer)
    assert float(params["w"]) == 1.0


def test_inner_values_and_rates() -> None:
    values = {"a": torch.ones(2), "b": torch.ones(2)}
    grads = {"a": torch.tensor([1.0, -2.0]), "b": torch.ones(2)}
    assert torch.equal(inner_values(values, grads, {"a": 0.5})["a"], torch.tensor([0.5, 2.0]))
    assert set(inner_values(values, grads, {"a": 0.5})) == {"a"}  # b is not adapted
    meta = PerFedAvg(0.1, frozenset({"head", "B", "frozen"}))
    # each adapted tensor's rate keeps its optimizer rate's ratio to lr; untrained ones drop
    rates = meta.inner_rates({"head": 0.03, "B": 0.003, "A": 0.003}, 0.003)
    assert rates == pytest.approx({"head": 1.0, "B": 0.1})


# the meta step inside train_steps ---------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
    host = ModelHost()
    adapter = host.adapter(config())
    data = load_device_data(DataSpec(source="20newsgroups", classes=3, max_train=12,
                                     max_test=4))
    tokens = tokenize(adapter, data.train.texts, data.train.labels)
    return adapter, tokens, adapter.get()


def train(adapter, tokens: TokenizedSplit, start, meta: PerFedAvg | None
          ) -> tuple[dict[str, torch.Tensor], int]:
    """Two steps over the whole split as one batch (so both of a meta step's batches hold
    the same texts), without dropout (so every pass computes the same function)."""
    dropouts = [m for m in adapter.model.modules() if isinstance(m, torch.nn.Dropout)]
    rates = [m.p for m in dropouts]
    for m in dropouts:
        m.p = 0.0
    try:
        adapter.set(start)
        adapter.set_trainable(trainable_names(adapter.names, "fedsa"))
        result = train_steps(adapter, tokens, steps=2, batch_size=len(tokens), lr=0.01,
                             head_lr=0.05, seed=5, meta=meta)
        return adapter.get(), result.samples
    finally:
        for m, p in zip(dropouts, rates, strict=True):
            m.p = p
        adapter.enable_all()


def test_meta_step_in_training_is_a_plain_step_at_rate_zero_and_differs_otherwise(setup):
    adapter, tokens, start = setup
    adapted = frozenset(adapted_names(local_names(adapter.names, "fedsa"),
                                      trainable_names(adapter.names, "fedsa")))
    plain, plain_samples = train(adapter, tokens, start, None)
    zero, zero_samples = train(adapter, tokens, start, PerFedAvg(0.0, adapted))
    meta, _ = train(adapter, tokens, start, PerFedAvg(1.0, adapted))
    assert zero_samples == 2 * plain_samples == 4 * len(tokens)  # two batches a step
    for n in plain:
        assert torch.allclose(zero[n], plain[n], atol=1e-6), n
    # a real inner step changes what the shared tensors learn, not only the adapted ones
    shared = [n for n in shared_names(adapter.names, "fedsa") if role(n) == "lora_A"]
    assert any(not torch.allclose(meta[n], plain[n], atol=1e-6) for n in shared)


def test_meta_for_adapts_what_fine_tuning_adapts() -> None:
    names = [f"l.{x}" for x in ("lora_A.weight", "lora_B.weight")] + ["classifier.weight"]
    local, trainable = local_names(names, "fedsa"), trainable_names(names, "fedsa")
    assert meta_for(config(finetune_steps=1), local, trainable) is None
    meta = meta_for(config(meta="per_fedavg", finetune_steps=1, meta_inner_lr=0.2), local,
                    trainable)
    assert meta == PerFedAvg(0.2, frozenset({"l.lora_B.weight", "classifier.weight"}))
    default = meta_for(config(meta="per_fedavg", finetune_steps=1), local, trainable)
    assert default is not None and default.inner_lr == 0.1
