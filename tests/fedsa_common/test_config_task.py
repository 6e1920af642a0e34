"""``model.task``: a classifier's configuration dumps (and digests) as before the option
existed, and a causal language model's refuses the settings of a head it does not have."""

from __future__ import annotations

import pytest

from fedsa_common.federation.config import ConfigError, FederationConfig, validate_model

# the digest of the default configuration before model.task existed (main at ce7b96a)
DEFAULT_DIGEST = "97cb68adf77dd6a1"


def causal(**model: object) -> dict[str, object]:
    return {"model": {"task": "causal_lm", "path": "tiny-causal", **model}}


def test_a_classifier_dumps_as_before_the_task_option() -> None:
    explicit = FederationConfig.model_validate({"model": {"task": "classification"}})
    for cfg in (FederationConfig(), explicit):
        model = cfg.model_dump(mode="json")["model"]
        assert "task" not in model
        assert model["lora"]["target_modules"] == ["query", "value"]
        assert list(model["lora"]) == ["r", "alpha", "dropout", "target_modules"]
        assert cfg.digest() == DEFAULT_DIGEST
    assert FederationConfig().model.target_modules == ["query", "value"]


def test_a_causal_model_round_trips_and_leaves_its_targets_to_the_architecture() -> None:
    cfg = FederationConfig.model_validate(causal())
    dumped = cfg.model_dump(mode="json")
    assert dumped["model"]["task"] == "causal_lm"
    assert "target_modules" not in dumped["model"]["lora"]
    assert cfg.model.target_modules is None  # peft's per-architecture default
    assert FederationConfig.model_validate(dumped) == cfg
    assert cfg.digest() != DEFAULT_DIGEST
    given = FederationConfig.model_validate(causal(lora={"target_modules": ["q_proj"]}))
    assert given.model.target_modules == ["q_proj"]
    assert not cfg.model.needs_num_labels and FederationConfig().model.needs_num_labels


@pytest.mark.parametrize("algorithm", ["fedsa", "fedit", "ffa", "local"])
def test_every_algorithm_takes_a_causal_model(algorithm: str) -> None:
    cfg = FederationConfig.model_validate({**causal(), "fedsa_lora": {"algorithm": algorithm}})
    assert cfg.model.causal


@pytest.mark.parametrize(("data", "field"), [
    (causal(num_labels=4), "model.num_labels: not used with task causal_lm"),
    ({**causal(), "training": {"head_lr": 0.01}}, "training.head_lr: not used"),
    ({**causal(), "fedsa_lora": {"personalization": {"share_head_rounds": 2}}},
     "fedsa_lora.personalization.share_head_rounds: not used"),
    ({"model": {"task": "seq2seq"}}, "model.task: got 'seq2seq'; allowed: classification, "
                                     "causal_lm"),
    (causal(lora={"target_modules": []}), "model.lora.target_modules"),
])
def test_errors_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("(", r"\(")):
        validate_model(FederationConfig, data)
