"""The ``fedsa_lora.privacy.differential_privacy`` section: dumped only when enabled (so
digests without DP stay as they were), devices receive it whole when it is, and every
combination the accounting cannot cover is refused naming the fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsa_common.federation.config import ConfigError, FederationConfig, validate_model
from scenarios.config import load_scenario

DP = "fedsa_lora.privacy.differential_privacy"
ROOT = Path(__file__).parents[2] / "scenarios"


def with_dp(dp: dict, **rest) -> dict:
    return {"model": {"num_labels": 4},
            "fedsa_lora": {"privacy": {"differential_privacy": dp}}, **rest}


def test_disabled_section_leaves_dump_and_digest_alone():
    plain = FederationConfig.model_validate({"model": {"num_labels": 4}})
    disabled = FederationConfig.model_validate(
        with_dp({"enable": False, "epsilon": 2.0, "mode": "local", "clip_norm": 0.1}))
    assert disabled.model_dump(mode="json") == plain.model_dump(mode="json")
    assert "privacy" not in disabled.model_dump(mode="json")["fedsa_lora"]
    assert disabled.digest() == plain.digest()


def test_enabled_section_travels_whole_and_changes_the_digest():
    config = FederationConfig.model_validate(
        with_dp({"enable": True, "epsilon": 3.0, "clip_norm": 0.5}))
    dumped = config.model_dump(mode="json")
    assert dumped["fedsa_lora"]["privacy"]["differential_privacy"] == {
        "enable": True, "mode": "central", "epsilon": 3.0, "delta": 1e-5, "clip_norm": 0.5,
        "noise_multiplier": None, "population": None}
    assert FederationConfig.model_validate(dumped) == config  # what a device rebuilds
    assert config.digest() != FederationConfig.model_validate(
        {"model": {"num_labels": 4}}).digest()


@pytest.mark.parametrize(("dp", "rest", "named"), [
    ({"mode": "loca"}, {}, f"{DP}.mode"),
    ({"clip_norm": 0}, {}, f"{DP}.clip_norm"),
    ({"epsilon": -1}, {}, f"{DP}.epsilon"),
    ({"delta": 1.0}, {}, f"{DP}.delta"),
    ({"noise_multiplier": 0}, {}, f"{DP}.noise_multiplier"),
    ({"population": 0}, {}, f"{DP}.population"),
    ({"sigma": 1.0}, {}, f"{DP}.sigma"),
])
def test_bad_values_name_the_field(dp, rest, named):
    with pytest.raises(ConfigError) as err:
        validate_model(FederationConfig, with_dp({"enable": True, **dp}, **rest))
    assert named in str(err.value)


@pytest.mark.parametrize(("fedsa", "rest", "says"), [
    ({"algorithm": "local"}, {}, "fedsa_lora.algorithm local"),
    ({}, {"round_policy": {"mode": "async"}}, "round_policy.mode sync, not async"),
    ({}, {"round_policy": {"late": "stale_weight"}}, "round_policy.late drop"),
    ({}, {"round_policy": {"aggregation": {"rule": "median"}}},
     "round_policy.aggregation.rule mean, not median"),
])
def test_combinations_the_accounting_cannot_cover_are_refused(fedsa, rest, says):
    data = with_dp({"enable": True}, **rest)
    data["fedsa_lora"].update(fedsa)
    with pytest.raises(ConfigError) as err:
        validate_model(FederationConfig, data)
    assert DP in str(err.value) and says in str(err.value)
    data["fedsa_lora"]["privacy"]["differential_privacy"]["enable"] = False
    validate_model(FederationConfig, data)  # fine without DP


def test_secure_aggregation_together_with_dp_is_refused():
    data = with_dp({"enable": True})
    data["fedsa_lora"]["compression"] = {"method": "dense"}
    data["fedsa_lora"]["privacy"]["secure_aggregation"] = {"enable": True}
    with pytest.raises(ConfigError) as err:
        validate_model(FederationConfig, data)
    assert f"{DP}: not yet with fedsa_lora.privacy.secure_aggregation" in str(err.value)


def test_population_below_clients_per_round_is_refused():
    with pytest.raises(ConfigError) as err:
        validate_model(FederationConfig, with_dp({"enable": True, "population": 2},
                                                 sampling={"clients_per_round": 3}))
    assert f"{DP}.population" in str(err.value)
    assert "sampling.clients_per_round" in str(err.value)


def test_scenario_passes_the_section_to_the_cloud_and_opts_into_nothing(tmp_path):
    text = (ROOT / "tiny.yaml").read_text()
    path = tmp_path / "dp.yaml"
    path.write_text(text + "fedsa_lora: {privacy: {differential_privacy: {enable: true}}}\n"
                    "sampling: {clients_per_round: 2}\n")
    fed = load_scenario(path).federation_config(num_labels=3)
    dp = fed.fedsa_lora.privacy.differential_privacy
    assert dp.enable and dp.population is None  # no amplification unless asked for
    plain = load_scenario(ROOT / "tiny.yaml").federation_config(num_labels=3)
    assert "privacy" not in plain.model_dump(mode="json")["fedsa_lora"]
