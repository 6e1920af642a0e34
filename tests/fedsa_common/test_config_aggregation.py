"""``round_policy.aggregation``: dumps nothing at its defaults (digests, checkpoints and
finished bench runs stay valid), round-trips when set, and its errors name the field."""

import pytest

from fedsa_common.federation.config import (
    ConfigError,
    FederationConfig,
    RoundPolicySection,
    validate_model,
)

# FederationConfig().digest() before the aggregation section existed (re-pinned when the
# default codec became topk 0.05 int8: a deliberate change of every default digest)
# re-pinned when server_lr and share_head_rounds became unset by default (their defaults
# depend on the optimizer and the algorithm)
DEFAULT_DIGEST = "97cb68adf77dd6a1"


def test_defaults_dump_nothing_and_keep_the_digest():
    config = FederationConfig()
    assert "aggregation" not in config.model_dump(mode="json")["round_policy"]
    assert config.digest() == DEFAULT_DIGEST
    explicit = FederationConfig.model_validate(
        {"round_policy": {"aggregation": {"rule": "mean", "clip_norm": None}}})
    assert explicit.digest() == DEFAULT_DIGEST


def test_set_values_dump_and_round_trip():
    raw = {"round_policy": {"aggregation": {"rule": "trimmed_mean", "trim_fraction": 0.3,
                                            "clip_norm": 2.5}}}
    config = FederationConfig.model_validate(raw)
    dumped = config.model_dump(mode="json")
    assert dumped["round_policy"]["aggregation"] == raw["round_policy"]["aggregation"]
    assert FederationConfig.model_validate(dumped) == config
    assert config.digest() != DEFAULT_DIGEST
    median = RoundPolicySection(aggregation={"rule": "median"})
    assert median.model_dump(mode="json")["aggregation"] == {"rule": "median"}
    assert median.aggregation.robust and not RoundPolicySection().aggregation.robust


@pytest.mark.parametrize(("aggregation", "extra", "field"), [
    ({"rule": "krum"}, {}, "round_policy.aggregation.rule"),
    ({"rule": "trimmed_mean", "trim_fraction": 0.5}, {}, "round_policy.aggregation.trim_fraction"),
    ({"clip_norm": 0}, {}, "round_policy.aggregation.clip_norm"),
    ({"rule": "median", "trim_fraction": 0.1}, {}, "trim_fraction: only for rule trimmed_mean"),
    ({"rule": "median"}, {"mode": "async"}, "aggregation.rule: median needs mode sync"),
    ({"rule": "trimmed_mean"}, {"over_select": 1.5}, "not over_select 1.5"),
    ({"rule": "median"}, {"late": "stale_weight"}, "not late stale_weight"),
    ({"rulez": "median"}, {}, "round_policy.aggregation.rulez"),
])
def test_bad_values_name_the_field(aggregation, extra, field):
    with pytest.raises(ConfigError) as err:
        validate_model(FederationConfig, {"round_policy": {**extra,
                                                           "aggregation": aggregation}})
    assert field in str(err.value)
