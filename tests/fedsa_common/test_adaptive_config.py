"""Configuration of the adaptive split, personalization and similarity weighting: what
validates, what each refusal names, and that defaults leave digests alone."""

from __future__ import annotations

import pytest

from fedsa_common.federation.config import ConfigError, FederationConfig, validate_model

# re-pinned when server_lr and share_head_rounds became unset by default (their defaults
# depend on the optimizer and the algorithm)
DEFAULT_DIGEST = "97cb68adf77dd6a1"
LAYER_WISE = {"enable": True, "strategy": "layer_wise",
              "layers": [{"layers": "0-2", "share": ["lora_A", "lora_B"]},
                         {"layers": 3, "share": []}]}
IMPORTANCE = {"enable": True, "strategy": "importance_based", "threshold": 0.6,
              "warmup_rounds": 2}


def config(**sections) -> FederationConfig:
    return validate_model(FederationConfig, sections)


def error(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        config(**sections)
    return str(info.value).replace("Value error, ", "")  # as `hub config validate` prints


def test_defaults_written_out_keep_the_default_digest() -> None:
    assert FederationConfig().digest() == DEFAULT_DIGEST
    spelled = config(fedsa_lora={"adaptive_split": {"enable": False, "strategy": "layer_wise",
                                                    "threshold": 0.3},
                                 "personalization": {"proximal_mu": 0.0, "finetune_steps": 0,
                                                     "meta": "none"}},
                     round_policy={"aggregation": {"weighting": "samples"}})
    assert spelled.digest() == DEFAULT_DIGEST
    dumped = spelled.model_dump(mode="json")
    assert "adaptive_split" not in dumped["fedsa_lora"]
    assert "personalization" not in dumped["fedsa_lora"]
    assert "aggregation" not in dumped["round_policy"]


@pytest.mark.parametrize("sections", [
    {"fedsa_lora": {"adaptive_split": LAYER_WISE}},
    {"fedsa_lora": {"adaptive_split": IMPORTANCE}},
    {"fedsa_lora": {"personalization": {"proximal_mu": 0.01}}},
    {"fedsa_lora": {"personalization": {"finetune_steps": 2}}},
    {"fedsa_lora": {"personalization": {"finetune_steps": 2, "meta": "per_fedavg"}}},
    {"fedsa_lora": {"personalization": {"finetune_steps": 2, "meta": "per_fedavg",
                                        "meta_inner_lr": 0.05}}},
    {"round_policy": {"aggregation": {"weighting": "similarity", "similarity_floor": 0.2}}},
])
def test_options_in_use_are_dumped_and_survive_the_announcement(sections) -> None:
    """Devices and regional hubs re-validate the announced dump, so it must round-trip."""
    c = config(**sections)
    assert c.digest() != DEFAULT_DIGEST
    again = FederationConfig.model_validate(c.model_dump(mode="json"))
    assert again == c and again.digest() == c.digest()


def test_layer_rules_parse_ranges_and_single_layers() -> None:
    split = config(fedsa_lora={"adaptive_split": LAYER_WISE}).fedsa_lora.adaptive_split
    assert split.adaptive and not split.importance_based
    assert split.rules() == [(0, 2, frozenset({"lora_A", "lora_B"})), (3, 3, frozenset())]


@pytest.mark.parametrize(("section", "expected"), [
    ({"enable": True, "strategy": "layer_wise"},
     "fedsa_lora.adaptive_split: layers: strategy layer_wise needs at least one rule"),
    ({"strategy": "importance_based", "layers": [{"layers": "0", "share": ["lora_A"]}]},
     "layers: only for strategy layer_wise"),
    ({"enable": True, "strategy": "layer_wise", "layers": [{"layers": "3-1", "share": []}]},
     "layers: '3-1' runs backwards"),
    ({"enable": True, "strategy": "layer_wise", "layers": [{"layers": "top", "share": []}]},
     "fedsa_lora.adaptive_split.layers.0.layers"),
    ({"enable": True, "strategy": "layer_wise", "layers": [{"layers": 0, "share": ["head"]}]},
     "fedsa_lora.adaptive_split.layers.0.share.0"),
    ({"threshold": 1.5}, "fedsa_lora.adaptive_split.threshold"),
    ({"warmup_rounds": 0}, "fedsa_lora.adaptive_split.warmup_rounds"),
])
def test_bad_split_sections_name_the_field(section, expected) -> None:
    assert expected in error(fedsa_lora={"adaptive_split": section})


@pytest.mark.parametrize("algorithm", ["ffa", "local"])
@pytest.mark.parametrize("split", [LAYER_WISE, IMPORTANCE])
def test_adaptive_split_needs_an_algorithm_that_trains_a_and_b(algorithm, split) -> None:
    msg = error(fedsa_lora={"algorithm": algorithm, "adaptive_split": split})
    assert f"needs fedsa_lora.algorithm fedsa or fedit (which train A and B), not {algorithm}" \
        in msg


@pytest.mark.parametrize(("policy", "expected"), [
    ({"mode": "async"}, "needs round_policy.mode sync, not async"),
    ({"late": "stale_weight"}, "needs round_policy.late drop, not stale_weight"),
])
def test_importance_based_needs_whole_synchronous_rounds(policy, expected) -> None:
    assert expected in error(fedsa_lora={"adaptive_split": IMPORTANCE}, round_policy=policy)
    # a fixed layer-wise split does not move between rounds, so it may
    config(fedsa_lora={"adaptive_split": LAYER_WISE}, round_policy=policy)


DP = {"differential_privacy": {"enable": True}}
SECAGG = {"secure_aggregation": {"enable": True}}
SIMILARITY = {"aggregation": {"weighting": "similarity"}}


@pytest.mark.parametrize(("sections", "expected"), [
    ({"fedsa_lora": {"adaptive_split": IMPORTANCE, "privacy": DP}},
     "importance_based reports are not covered by fedsa_lora.privacy.differential_privacy"),
    ({"fedsa_lora": {"adaptive_split": IMPORTANCE, "privacy": SECAGG,
                     "compression": {"method": "dense"}}},
     "importance_based reports would bypass fedsa_lora.privacy.secure_aggregation"),
    ({"fedsa_lora": {"privacy": DP}, "round_policy": SIMILARITY},
     "round_policy.aggregation.weighting: similarity cannot run with "
     "fedsa_lora.privacy.differential_privacy"),
    ({"fedsa_lora": {"privacy": SECAGG, "compression": {"method": "dense"}},
      "round_policy": SIMILARITY},
     "round_policy.aggregation.weighting: similarity cannot run with "
     "fedsa_lora.privacy.secure_aggregation"),
    ({"round_policy": {"aggregation": {"rule": "median", "weighting": "similarity"}}},
     "weighting: similarity weighs the mean; rule median is unweighted"),
    ({"round_policy": {"aggregation": {"similarity_floor": 0.5}}},
     "similarity_floor: only for weighting similarity"),
    ({"round_policy": {"aggregation": {"weighting": "similarity", "similarity_floor": 0}}},
     "round_policy.aggregation.similarity_floor"),
    ({"fedsa_lora": {"algorithm": "local", "personalization": {"proximal_mu": 0.1}}},
     "fedsa_lora.personalization.proximal_mu: algorithm local shares nothing"),
    ({"fedsa_lora": {"personalization": {"finetune_steps": -1}}},
     "fedsa_lora.personalization.finetune_steps"),
    ({"fedsa_lora": {"personalization": {"meta": "per_fedavg"}}},
     "fedsa_lora.personalization.meta: per_fedavg trains for the adaptation a device makes "
     "before it evaluates; set fedsa_lora.personalization.finetune_steps > 0"),
    ({"fedsa_lora": {"algorithm": "local",
                     "personalization": {"meta": "per_fedavg", "finetune_steps": 1}}},
     "fedsa_lora.personalization.meta: algorithm local shares nothing to meta-train"),
    ({"fedsa_lora": {"personalization": {"finetune_steps": 1, "meta_inner_lr": 0.1}}},
     "fedsa_lora.personalization.meta_inner_lr: only for meta per_fedavg"),
    ({"fedsa_lora": {"personalization": {"meta": "per_fedavg", "finetune_steps": 1,
                                         "meta_inner_lr": 0}}},
     "fedsa_lora.personalization.meta_inner_lr"),
    ({"fedsa_lora": {"personalization": {"meta": "reptile", "finetune_steps": 1}}},
     "fedsa_lora.personalization.meta"),
])
def test_conflicts_name_the_fields(sections, expected) -> None:
    assert expected in error(**sections)


def test_layer_wise_runs_with_privacy_and_fine_tuning_with_local() -> None:
    """A fixed layer-wise split changes nothing DP or secure aggregation rely on."""
    config(fedsa_lora={"adaptive_split": LAYER_WISE, "privacy": DP})
    config(fedsa_lora={"algorithm": "local", "personalization": {"finetune_steps": 3}})
