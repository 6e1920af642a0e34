"""The announced split on a device and where moved tensors start (pure)."""

from __future__ import annotations

import pytest
import torch

from edge_client.split_state import (
    carry_residual,
    final_global,
    importance_report,
    local_start,
    round_split,
    shared_start,
)
from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.errors import WireError

NAMES = sorted([*(f"bert.encoder.layer.{i}.attention.self.query.lora_{ab}.weight"
                  for i in range(2) for ab in "AB"), "classifier.weight"])
A0, B0, A1, B1, HEAD = NAMES
SHAPES = {n: (2, 2) for n in NAMES}
HEAD_LOCAL = {"personalization": {"share_head_rounds": 0}}
FEDSA = FederationConfig.model_validate({"fedsa_lora": HEAD_LOCAL})
IMPORTANCE = FederationConfig.model_validate(
    {"fedsa_lora": {"adaptive_split": {"enable": True, "strategy": "importance_based"}}})
LAYER_WISE = FederationConfig.model_validate(
    {"fedsa_lora": {**HEAD_LOCAL, "adaptive_split": {
        "enable": True, "strategy": "layer_wise", "layers": [{"layers": 1, "share": ["lora_B"]}]}}})


def values(names, v: float = 0.0) -> dict[str, torch.Tensor]:
    return {n: torch.full(SHAPES[n], v) for n in names}


def test_fixed_split_must_be_announced_as_configured() -> None:
    assert round_split(NAMES, [A0, A1], values([A0, A1]), SHAPES, FEDSA, 1) == (
        [A0, A1], [B0, B1, HEAD])
    with pytest.raises(WireError, match="differs from the configured split"):
        round_split(NAMES, [A0, B0], values([A0, B0]), SHAPES, FEDSA, 1)


def test_the_default_split_announces_the_head_with_a() -> None:
    default = FederationConfig()
    assert round_split(NAMES, [A0, A1, HEAD], values([A0, A1, HEAD]), SHAPES, default, 1) == (
        [A0, A1, HEAD], [B0, B1])
    with pytest.raises(WireError, match="differs from the configured split"):
        round_split(NAMES, [A0, A1], values([A0, A1]), SHAPES, default, 1)


def test_layer_wise_split_is_checked_against_the_rules() -> None:
    assert round_split(NAMES, [A0, B1], values([A0, B1]), SHAPES, LAYER_WISE, 1)[0] == [A0, B1]
    with pytest.raises(WireError):
        round_split(NAMES, [A0, A1], values([A0, A1]), SHAPES, LAYER_WISE, 1)


def test_importance_based_takes_any_lora_subset_the_cloud_announces() -> None:
    shared, local = round_split(NAMES, [B1, A0], values([A0, B1]), SHAPES, IMPORTANCE, 1)
    assert shared == [A0, B1] and local == [B0, A1, HEAD]


@pytest.mark.parametrize(("announced", "tensors"), [
    ([HEAD], values([HEAD])),                       # the head is never shared
    (["bert.pooler.dense.weight"], {"bert.pooler.dense.weight": torch.zeros(2, 2)}),
    ([A0, A0], values([A0])),
    ([A0, B0], values([A0])),                       # a named value is missing
    ([A0], {A0: torch.zeros(3, 2)}),                # of the wrong shape
])
def test_announced_sets_outside_the_model_are_bad_headers(announced, tensors) -> None:
    with pytest.raises(WireError) as err:
        round_split(NAMES, announced, tensors, SHAPES, IMPORTANCE, 1)
    assert err.value.reason == "bad_header"


def test_a_tensor_that_was_local_starts_from_the_devices_own_value() -> None:
    announced = values([A0, B0], 1.0)
    own_local = values([B0, B1, HEAD], 5.0)  # B0 was local when the device last trained
    start = shared_start([A0, B0], announced, own_local)
    assert torch.equal(start[A0], announced[A0])  # was shared: the global value
    assert torch.equal(start[B0], own_local[B0])  # was local: its own value


def test_a_tensor_that_becomes_local_keeps_the_last_global_it_loaded() -> None:
    own_local = values([B0, HEAD], 5.0)
    last_global = values([A0, A1], 2.0)       # A0, A1 were shared when it last trained
    initial = values([A0, A1, B1], -1.0)
    start = local_start([A0, B0, B1, HEAD], own_local, last_global, initial)
    assert torch.equal(start[A0], last_global[A0])
    assert torch.equal(start[B0], own_local[B0])
    assert torch.equal(start[B1], initial[B1])  # never held: the seeded initial value


def test_update_is_always_trained_minus_announced_so_the_mean_is_the_devices_mean() -> None:
    """Two devices move B0 from local to shared with their own values; the cloud's new
    global (announced + mean delta) is the mean of their values, not a reset."""
    announced = values([B0], 0.0)
    trained = [shared_start([B0], announced, values([B0], v))[B0] for v in (3.0, 5.0)]
    deltas = [t - announced[B0] for t in trained]
    new_global = announced[B0] + sum(deltas) / 2
    assert torch.equal(new_global, torch.full((2, 2), 4.0))


def test_residual_follows_the_shared_set() -> None:
    residual = values([A0, A1], 0.5)
    assert carry_residual(residual, [A0, A1], SHAPES) == residual
    moved = carry_residual(residual, [A0, B0], SHAPES)
    assert moved is not None and set(moved) == {A0, B0}
    assert torch.equal(moved[A0], residual[A0]) and not moved[B0].any()
    assert carry_residual(residual, [B0, B1], SHAPES) is None
    assert carry_residual({}, [A0], SHAPES) is None


def test_importance_report_keeps_finite_lora_scores() -> None:
    assert importance_report(None) is None
    assert importance_report({A0: 1.0, B0: float("nan"), HEAD: 3.0, A1: 0.0}) == {
        A0: 1.0, A1: 0.0}


def test_final_global_updates_only_what_the_device_last_trained_as_shared() -> None:
    saved = values([A0, A1], 1.0)
    final = values([A0, B0], 9.0)
    kept = final_global(saved, [A0, B0], final)
    assert kept is not None and set(kept) == {A0, A1}
    assert torch.equal(kept[A0], final[A0]) and torch.equal(kept[A1], saved[A1])
    first = final_global({}, [A0], values([A0], 2.0))
    assert first is not None and torch.equal(first[A0], torch.full((2, 2), 2.0))
    assert final_global(saved, [A0, B0], values([A0])) is None


# head sharing (personalization.share_head_rounds) -------------------------------------
HEAD_2 = FederationConfig.model_validate(
    {"rounds": 4, "fedsa_lora": {"personalization": {"share_head_rounds": 2}}})


def test_head_is_accepted_only_in_the_rounds_that_share_it() -> None:
    announced = [A0, A1, HEAD]
    for rnd in (1, 2):
        assert round_split(NAMES, announced, values(announced), SHAPES, HEAD_2, rnd) == (
            [A0, A1, HEAD], [B0, B1])
    with pytest.raises(WireError, match="not a LoRA tensor of this model in round 3") as err:
        round_split(NAMES, announced, values(announced), SHAPES, HEAD_2, 3)
    assert err.value.reason == "bad_header"
    assert round_split(NAMES, [A0, A1], values([A0, A1]), SHAPES, HEAD_2, 3) == (
        [A0, A1], [B0, B1, HEAD])


def test_a_round_that_shares_the_head_must_announce_it() -> None:
    with pytest.raises(WireError, match="differs from the configured split"):
        round_split(NAMES, [A0, A1], values([A0, A1]), SHAPES, HEAD_2, 1)
    with pytest.raises(WireError, match="wrong shape"):
        round_split(NAMES, [A0, A1, HEAD], {**values([A0, A1]), HEAD: torch.zeros(3, 2)},
                    SHAPES, HEAD_2, 1)


def test_a_head_that_becomes_local_starts_from_the_last_global_head() -> None:
    """Round K+1: the head was shared in round K, so the device has no own value; it takes
    the global head it loaded in round K (its B stays its own)."""
    own_local = values([B0, B1], 5.0)
    last_global = values([A0, A1, HEAD], 2.0)
    start = local_start([B0, B1, HEAD], own_local, last_global, values(NAMES, -1.0))
    assert torch.equal(start[HEAD], last_global[HEAD])
    assert torch.equal(start[B0], own_local[B0])
