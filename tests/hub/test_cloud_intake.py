"""The cloud's intake of regional partials without a hub: it merges on-time partials,
weighs stale ones by 1/sqrt(1+staleness) or drops them by the round policy, counts a
redelivery once, refuses by name, and its state round-trips."""

from __future__ import annotations

import math

import pytest
import torch

from fedsa_common.federation.config import RoundPolicySection
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import PartialHeader
from hub.aggregation import RunningSum
from hub.cloud_intake import CloudIntake, staleness_weight

SHAPES = {"a.lora_A.weight": (2, 3)}
VERSION = 5  # the global version while round 6 is in flight


def intake() -> CloudIntake:
    return CloudIntake(6, b"announce", {"north": ["n1", "n2"], "south": ["s1"]}, 1.0,
                       RunningSum.zeros(SHAPES))


def partial(region: str = "north", seq: int = 0, round_: int = 6, base_version: int = 5,
            count: int = 2, weight: float = 20.0, value: float = 1.0, **fields
            ) -> tuple[PartialHeader, dict[str, torch.Tensor]]:
    header = PartialHeader(federation="f", round=round_, region=region,
                           base_version=base_version, seq=seq, count=count, weight=weight,
                           accepted=[f"{region[0]}{i}:{round_}" for i in range(count)],
                           **fields)
    return header, {n: torch.full(s, value) for n, s in SHAPES.items()}


def accept(it: CloudIntake, header: PartialHeader, tensors, **policy):
    return it.accept(header, tensors, version=VERSION, policy=RoundPolicySection(**policy),
                     shared_set_changes=False)


def test_on_time_partials_are_merged_and_a_redelivery_counted_once() -> None:
    it = intake()
    header, tensors = partial(final=True, rejected={"stale": 2}, bytes_in=300)
    ack = accept(it, header, tensors)
    assert ack.accepted and ack.id == "north:6:0" and ack.reason is None
    assert it.total.count == 2 and it.total.weight == 20.0 and it.finals == {"north"}
    assert it.applied == ["n0:6", "n1:6"] and it.rejected == {"stale": 2}
    again = accept(it, header, tensors)
    assert again.reason == "duplicate" and it.duplicates == 1 and it.total.count == 2


def test_stale_partials_are_weighted_or_dropped_by_the_policy() -> None:
    it = intake()
    header, tensors = partial(base_version=2, value=2.0)  # built 3 versions ago
    assert accept(it, header, tensors, late="drop").reason == "late"
    assert it.dropped == {"n0:6": "late", "n1:6": "late"} and it.total.count == 0
    it = intake()
    assert accept(it, header, tensors, late="stale_weight").reason is None
    w = staleness_weight(3)
    assert w == pytest.approx(1 / math.sqrt(4))
    assert it.total.weight == pytest.approx(20.0 * w)
    torch.testing.assert_close(it.total.sums["a.lora_A.weight"].float(),
                               torch.full((2, 3), 2.0 * w))
    it = intake()
    old, tensors = partial(base_version=0)
    assert accept(it, old, tensors, late="stale_weight", max_staleness=4).reason == "stale"


@pytest.mark.parametrize(("fields", "tensors", "reason"), [
    ({"round_": 7}, None, "future"),
    ({"base_version": 6}, None, "wrong_base_version"),
    ({"weight": 1e9}, None, "bad_header"),
    ({}, {"a.lora_A.weight": torch.ones(3, 2)}, "shape_mismatch"),
    ({}, {"a.lora_A.weight": torch.full((2, 3), float("nan"))}, "non_finite"),
])
def test_refusals_are_named_and_change_nothing(fields, tensors, reason) -> None:
    it = intake()
    header, good = partial(**fields)
    with pytest.raises(WireError) as err:
        accept(it, header, tensors if tensors is not None else good)
    assert err.value.reason == reason
    assert it.seen == set() and it.total.count == 0


def test_state_round_trips() -> None:
    it = intake()
    accept(it, *partial(final=True))
    accept(it, *partial(region="south", base_version=1), late="drop")
    meta, tensors = it.to_state()
    back = CloudIntake.from_state(meta, tensors, it.announce_payload)
    keep = ("round", "announce_payload", "selected", "started", "seen", "applied",
            "dropped", "rejected", "duplicates", "finals", "bytes_in", "importance")
    assert all(getattr(back, k) == getattr(it, k) for k in keep)
    assert (back.total.weight, back.total.count) == (it.total.weight, it.total.count) == (
        20.0, 2)
    assert torch.equal(back.total.sums["a.lora_A.weight"], it.total.sums["a.lora_A.weight"])
    assert back.dropped == {"s0:6": "late", "s1:6": "late"}


def test_a_robust_rule_keeps_each_partials_estimate_through_a_restart() -> None:
    """Under a robust rule the round's update is the count-weighted median of the regions'
    estimates (sums / weight), not their weighted mean, and the kept estimates are part of
    the persisted state."""
    policy = {"aggregation": {"rule": "median"}}
    it = intake()
    accept(it, *partial(count=2, weight=2.0, value=0.2), **policy)  # estimate 0.1
    accept(it, *partial(region="south", count=1, weight=1.0, value=9.0), **policy)
    meta, tensors = it.to_state()
    back = CloudIntake.from_state(meta, tensors, it.announce_payload)
    assert set(back.total.sums) == set(SHAPES)
    assert [(e.pid, e.count) for e in back.estimates] == [("north:6:0", 2), ("south:6:0", 1)]
    accept(back, *partial(region="west", count=2, weight=2.0, value=0.4), **policy)
    mean = back.mean(RoundPolicySection(**policy).aggregation)
    assert mean is not None
    # the multiset 0.1, 0.1, 9.0, 0.2, 0.2: its median is 0.2; the weighted mean is 1.92
    torch.testing.assert_close(mean["a.lora_A.weight"], torch.full((2, 3), 0.2))
    assert float(back.total.mean()["a.lora_A.weight"][0, 0]) == pytest.approx(9.6 / 5)
    assert it.mean(RoundPolicySection().aggregation) is None  # the mean rule: running sum


def test_a_robust_partial_with_updates_but_no_weight_is_refused() -> None:
    it = intake()
    with pytest.raises(WireError) as err:
        accept(it, *partial(count=1, weight=0.0), aggregation={"rule": "median"})
    assert err.value.reason == "bad_header" and it.seen == set() and not it.estimates
