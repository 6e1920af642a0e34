"""Head sharing (``personalization.share_head_rounds``): the per-round shared set every party
computes, and the configurations it refuses."""

from __future__ import annotations

import pytest

from fedsa_common.federation.adaptive_split import round_shared, shares_head, split_changes
from fedsa_common.federation.config import ConfigError, FederationConfig, validate_model

NAMES = sorted([*(f"bert.encoder.layer.{i}.attention.self.query.lora_{ab}.weight"
                  for i in range(2) for ab in "AB"), "classifier.weight", "classifier.bias"])
A0, B0, A1, B1 = (n for n in NAMES if "lora" in n)
HEAD = ["classifier.bias", "classifier.weight"]


def config(k: int | str, rounds: int = 4, **fedsa) -> FederationConfig:
    return FederationConfig.model_validate({
        "rounds": rounds,
        "fedsa_lora": {**fedsa, "personalization": {"share_head_rounds": k}}})


def test_head_is_shared_in_rounds_one_to_k_only() -> None:
    cfg = config(2)
    assert [shares_head(cfg, r) for r in range(1, 6)] == [True, True, False, False, False]
    assert round_shared(NAMES, cfg, 1) == sorted([A0, A1, *HEAD])
    assert round_shared(NAMES, cfg, 3) == [A0, A1]
    assert split_changes(cfg)


def test_k_zero_is_the_algorithms_split_in_every_round() -> None:
    cfg = config(0)
    assert not any(shares_head(cfg, r) for r in range(1, 6))
    assert round_shared(NAMES, cfg, 1) == [A0, A1] == round_shared(NAMES, cfg, 9)
    assert not split_changes(cfg)


@pytest.mark.parametrize(("algorithm", "shared"), [("fedsa", [A0, A1, *HEAD]),
                                                   ("fedit", [A0, A1, B0, B1, *HEAD]),
                                                   ("ffa", [B0, B1, *HEAD]), ("local", [])])
def test_unset_shares_the_head_in_every_round_except_under_local(algorithm, shared) -> None:
    cfg = FederationConfig.model_validate({"rounds": 4, "fedsa_lora": {"algorithm": algorithm}})
    assert [round_shared(NAMES, cfg, r) for r in (1, 4, 5)] == [sorted(shared)] * 3
    assert not split_changes(cfg)
    assert "personalization" not in cfg.model_dump()["fedsa_lora"]


def test_unset_keeps_the_head_local_under_importance_based_and_refuses_it_when_set() -> None:
    importance = {"enable": True, "strategy": "importance_based"}
    cfg = FederationConfig.model_validate({"fedsa_lora": {"adaptive_split": importance}})
    assert not shares_head(cfg, 1)
    assert "importance_based" in refusal({"fedsa_lora": {
        "adaptive_split": importance, "personalization": {"share_head_rounds": "all"}}})


def test_k_of_at_least_rounds_shares_the_head_also_in_the_final_announcement() -> None:
    cfg = config(4, rounds=4)
    assert shares_head(cfg, 5)  # the cloud's finished announcement after round 4
    assert not split_changes(cfg)
    assert not shares_head(config(3, rounds=4), 5)


@pytest.mark.parametrize(("algorithm", "lora"), [("fedit", [A0, A1, B0, B1]), ("ffa", [B0, B1]),
                                                 ("local", [])])
def test_head_joins_every_algorithms_split(algorithm, lora) -> None:
    cfg = config(1, algorithm=algorithm)
    assert round_shared(NAMES, cfg, 1) == sorted([*lora, *HEAD])
    assert round_shared(NAMES, cfg, 2) == sorted(lora)


def test_head_joins_a_layer_wise_split() -> None:
    cfg = config(1, adaptive_split={"enable": True, "strategy": "layer_wise",
                                    "layers": [{"layers": 1, "share": ["lora_B"]}]})
    assert round_shared(NAMES, cfg, 1) == sorted([A0, B1, *HEAD])
    assert round_shared(NAMES, cfg, 2) == sorted([A0, B1])


def refusal(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_model(FederationConfig, data)
    return str(err.value)


def test_importance_based_with_head_sharing_is_refused() -> None:
    msg = refusal({"fedsa_lora": {
        "adaptive_split": {"enable": True, "strategy": "importance_based"},
        "personalization": {"share_head_rounds": 1}}})
    assert "share_head_rounds" in msg and "importance_based" in msg


@pytest.mark.parametrize(("policy", "field"), [({"mode": "async"}, "round_policy.mode"),
                                               ({"late": "stale_weight"}, "round_policy.late")])
def test_a_set_that_changes_needs_whole_synchronous_rounds(policy, field) -> None:
    msg = refusal({"rounds": 4, "round_policy": policy,
                   "fedsa_lora": {"personalization": {"share_head_rounds": 2}}})
    assert "share_head_rounds" in msg and field in msg
    # shared in every round, the set never changes: allowed
    FederationConfig.model_validate({"rounds": 4, "round_policy": policy, "fedsa_lora": {
        "personalization": {"share_head_rounds": 4}}})


def test_negative_k_is_refused_and_a_set_zero_is_dumped() -> None:
    assert "share_head_rounds" in refusal(
        {"fedsa_lora": {"personalization": {"share_head_rounds": -1}}})
    # 0 differs from unset (which shares the head), so it must survive a dump and reload
    assert config(0).model_dump()["fedsa_lora"]["personalization"] == {"share_head_rounds": 0}
    assert config(2).model_dump()["fedsa_lora"]["personalization"] == {"share_head_rounds": 2}
    again = FederationConfig.model_validate(config(0).model_dump(mode="json"))
    assert not shares_head(again, 1)


# B sharing (personalization.share_b_rounds): FedSA's B averaged in rounds 1..K ------------
def b_config(k: int, rounds: int = 4, algorithm: str = "fedsa", head: int = 0) -> FederationConfig:
    return FederationConfig.model_validate({
        "rounds": rounds, "fedsa_lora": {"algorithm": algorithm, "personalization": {
            "share_b_rounds": k, "share_head_rounds": head}}})


def test_b_is_shared_in_rounds_one_to_k_only() -> None:
    from fedsa_common.federation.adaptive_split import shares_b

    cfg = b_config(2)
    assert [shares_b(cfg, r) for r in range(1, 5)] == [True, True, False, False]
    assert round_shared(NAMES, cfg, 2) == sorted([A0, A1, B0, B1])
    assert round_shared(NAMES, cfg, 3) == [A0, A1]
    assert split_changes(cfg)
    assert round_shared(NAMES, b_config(1, head=1), 1) == sorted([A0, A1, B0, B1, *HEAD])
    assert not split_changes(b_config(4, rounds=4))


@pytest.mark.parametrize(("algorithm", "why"), [("fedit", "already shares B"),
                                                ("ffa", "already shares B"),
                                                ("local", "shares nothing")])
def test_b_sharing_is_for_fedsa_only(algorithm, why) -> None:
    msg = refusal({"fedsa_lora": {"algorithm": algorithm,
                                  "personalization": {"share_b_rounds": 2}}})
    assert "share_b_rounds" in msg and why in msg


def test_b_sharing_before_the_last_round_needs_sync_rounds() -> None:
    msg = refusal({"rounds": 4, "round_policy": {"mode": "async"},
                   "fedsa_lora": {"personalization": {"share_b_rounds": 2}}})
    assert "share_b_rounds" in msg and "round_policy.mode" in msg


# K = all: every round, whatever ``rounds`` becomes ---------------------------------------
def test_all_shares_in_every_round_and_follows_rounds_when_extended() -> None:
    cfg = config("all", rounds=4)
    assert all(shares_head(cfg, r) for r in range(1, 6))
    assert not split_changes(cfg)
    extended = cfg.model_copy(update={"rounds": 9})
    assert all(shares_head(extended, r) for r in range(1, 11))
    assert not split_changes(extended)
    # a number fixed for 4 rounds would hand the head back after round 4 of 9
    assert split_changes(config(4, rounds=9)) and not shares_head(config(4, rounds=9), 5)


def test_all_never_changes_the_set_so_async_rounds_may_use_it() -> None:
    FederationConfig.model_validate({"rounds": 4, "round_policy": {"mode": "async"},
                                     "fedsa_lora": {"personalization": {
                                         "share_head_rounds": "all", "share_b_rounds": "all"}}})
    assert config("all").model_dump()["fedsa_lora"]["personalization"] == {
        "share_head_rounds": "all"}


def test_a_word_other_than_all_is_refused_naming_the_field() -> None:
    msg = refusal({"fedsa_lora": {"personalization": {"share_b_rounds": "every"}}})
    assert "share_b_rounds" in msg
    msg = refusal({"fedsa_lora": {"algorithm": "fedit",
                                  "personalization": {"share_b_rounds": "all"}}})
    assert "already shares B" in msg
