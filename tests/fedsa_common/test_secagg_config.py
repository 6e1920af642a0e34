"""``fedsa_lora.privacy.secure_aggregation``: dumps nothing when off (digests unchanged),
and refuses, naming the fields, every setting masked updates cannot work with."""

from __future__ import annotations

import pytest

from fedsa_common.federation.config import ConfigError, FederationConfig, validate_model
from fedsa_common.privacy.secagg.config_check import secagg_params

ON = {"enable": True}


def _config(secagg: dict | None = None, compression: dict | None = None, **top) -> dict:
    fedsa: dict = {"compression": compression or {"method": "randk"}}
    if secagg is not None:
        fedsa["privacy"] = {"secure_aggregation": secagg}
    return {"fedsa_lora": fedsa, **top}


def test_disabled_section_dumps_nothing():
    base = FederationConfig()
    off = validate_model(FederationConfig, {"fedsa_lora": {"privacy": {
        "secure_aggregation": {"enable": False, "clip": 3.0}}}})
    assert off.digest() == base.digest()
    assert "privacy" not in base.model_dump()["fedsa_lora"]
    on = validate_model(FederationConfig, _config(ON))
    assert on.model_dump()["fedsa_lora"]["privacy"]["secure_aggregation"]["enable"] is True
    assert on.digest() != base.digest()
    assert FederationConfig.model_validate(on.model_dump(mode="json")) == on


@pytest.mark.parametrize("compression", [{"method": "randk", "ratio": 0.2},
                                         {"method": "dense"}, {"enable": False}])
def test_randk_and_dense_are_accepted(compression):
    config = validate_model(FederationConfig, _config(ON, compression))
    params = secagg_params(config)
    assert params.threshold(9) == 6 and params.clip == 1.0


@pytest.mark.parametrize(("overrides", "field"), [
    ({"compression": {"method": "topk_int8"}}, "fedsa_lora.compression.method"),
    ({"compression": {"method": "topk", "values": "fp16"}}, "fedsa_lora.compression.method"),
    ({"round_policy": {"aggregation": {"rule": "median"}}}, "round_policy.aggregation.rule"),
    ({"round_policy": {"aggregation": {"clip_norm": 1.0}}}, "aggregation.clip_norm"),
    ({"round_policy": {"max_update_norm": 5.0}}, "round_policy.max_update_norm"),
    ({"round_policy": {"mode": "async"}}, "round_policy.mode"),
    ({"round_policy": {"over_select": 1.5}}, "round_policy.over_select"),
    ({"round_policy": {"late": "stale_weight"}}, "round_policy.late"),
    ({"secagg": {"enable": True, "clip": 1000.0, "max_weight": 100_000}}, "clip/max_weight"),
])
def test_incompatible_settings_name_the_field(overrides, field):
    secagg = overrides.pop("secagg", ON)
    compression = overrides.pop("compression", None)
    with pytest.raises(ConfigError) as err:
        validate_model(FederationConfig, _config(secagg, compression, **overrides))
    assert field in str(err.value)
    assert "secure_aggregation" in str(err.value)


def test_threshold_must_be_a_majority():
    with pytest.raises(ConfigError, match="threshold_fraction"):
        validate_model(FederationConfig, _config({"enable": True, "threshold_fraction": 0.5}))
    with pytest.raises(ConfigError, match="min_clients"):
        validate_model(FederationConfig, _config({"enable": True, "min_clients": 1}))


def test_verifiable_shares_is_carried_and_dumped_only_when_off():
    """On by default and then not dumped (a secure configuration digests as before VSS
    became optional); off is dumped, so devices learn it from the announced config."""
    on = validate_model(FederationConfig, _config(ON))
    explicit = validate_model(FederationConfig, _config({**ON, "verifiable_shares": True}))
    off = validate_model(FederationConfig, _config({**ON, "verifiable_shares": False}))
    assert secagg_params(on).verifiable_shares is True
    assert secagg_params(off).verifiable_shares is False
    assert "verifiable_shares" not in on.model_dump()["fedsa_lora"]["privacy"][
        "secure_aggregation"]
    assert explicit.digest() == on.digest() != off.digest()
    dumped = off.model_dump(mode="json")
    assert dumped["fedsa_lora"]["privacy"]["secure_aggregation"]["verifiable_shares"] is False
    assert secagg_params(FederationConfig.model_validate(dumped)).verifiable_shares is False


def test_a_bad_verifiable_shares_names_the_field():
    with pytest.raises(ConfigError, match="verifiable_shares"):
        validate_model(FederationConfig, _config({**ON, "verifiable_shares": "sometimes"}))
