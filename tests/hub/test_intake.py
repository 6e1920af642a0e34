"""A regional hub's intake: every refusal has a named reason, late and stale updates follow
the round policy, and the whole intake survives a round trip through its persisted form."""

import pytest
import torch

from fedsa_common.federation.config import AggregationSection, FederationConfig, RoundPolicySection
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader
from hub.aggregation import fedavg
from hub.aggregator import ImportanceReports
from hub.intake import RegionIntake
from hub.privacy import IntakeDp
from hub.similarity import SimilarityWeighting

SHAPES = {"x.lora_A.weight": (2, 8)}
SELECTED = {"eu": ["d1", "d2"], "us": ["d3"]}
# Updates go out as topk_int8 with ratio 1.0 (every coordinate, so sums stay checkable); the
# hub accepts only the announced codec parameters, so the round announces exactly that.
ANNOUNCED = FederationConfig.model_validate(
    {"fedsa_lora": {"compression": {"method": "topk_int8", "ratio": 1.0}}})


def announce(round_=3, version=2, selected=None) -> AnnounceHeader:
    return AnnounceHeader(
        federation="f", round=round_, version=version, status="running",
        selected=selected or SELECTED, config=ANNOUNCED.model_dump(mode="json"),
        config_hash="h", deadline_s=30, issued_at=0.0, shared=list(SHAPES),
    )


def update(client="d1", round_=3, base_version=2, codec="topk_int8", samples=10, scale=1.0,
           region="eu"):
    delta = {n: torch.full(s, scale) for n, s in SHAPES.items()}
    params = {"ratio": 1.0} if codec == "topk_int8" else {}
    enc = get_codec(codec, **params).encode(delta)
    header = UpdateHeader(federation="f", round=round_, client=client, region=region,
                          base_version=base_version, codec=codec, codec_params=params,
                          codec_meta=enc.meta, num_samples=samples)
    return header, enc.tensors, delta


def intake(**policy) -> RegionIntake:
    it = RegionIntake("eu", "f")
    it.announce(announce(), SHAPES, RoundPolicySection(**policy), "topk_int8")
    return it


def test_accepts_selected_updates_and_forwards_weighted_sum():
    it = intake()
    h1, t1, d1 = update("d1", samples=10, scale=1.0)
    h2, t2, d2 = update("d2", samples=30, scale=3.0)
    assert it.accept(h1, t1, 100) == "d1:3"
    assert not it.complete
    it.accept(h2, t2, 100)
    assert it.complete
    [(header, sums)] = it.flush(final=True)
    assert header.count == 2 and header.weight == 40 and header.final
    assert header.accepted == ["d1:3", "d2:3"] and header.base_version == 2
    mean = {n: s / header.weight for n, s in sums.items()}
    torch.testing.assert_close(mean, fedavg([(d1, 10.0), (d2, 30.0)]), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"round_": 4}, "future"),
        ({"round_": 1}, "stale"),
        ({"client": "d3", "region": "eu"}, "not_selected"),
        ({"client": "d9"}, "not_selected"),
        ({"base_version": 1}, "wrong_base_version"),
        ({"region": "us", "client": "d3"}, "wrong_region"),
        ({"samples": 10**9}, "too_many_samples"),
    ],
)
def test_refusals_are_named(kwargs, reason):
    it = intake()
    h, tensors, _ = update(**kwargs)
    with pytest.raises(WireError) as err:
        it.accept(h, tensors, 10)
    assert err.value.reason == reason
    assert not it.groups


def test_non_finite_refused():
    it = intake()
    h, _, _ = update(codec="dense")
    with pytest.raises(WireError):
        it.accept(h, {n: torch.full(s, float("inf")) for n, s in SHAPES.items()}, 10)


@pytest.mark.parametrize("rule", ["mean", "median"])
def test_one_huge_update_cannot_void_the_regions_partial(rule):
    """Issue 15, point 7: a dense update of 3e38 (finite, with a finite float64 norm) was
    accepted, and 1e6 samples x 3e38 overflowed the region's float32 partial to inf, which
    the cloud refuses: the whole region's round was lost."""
    it = intake(aggregation=AggregationSection(rule=rule))
    h1, t1, _ = update("d1", codec="dense", samples=10, scale=0.01)
    it.accept(h1, t1, 10)
    h2, t2, _ = update("d2", codec="dense", samples=1_000_000, scale=3e38)
    with pytest.raises(WireError) as err:
        it.accept(h2, t2, 10)
    assert err.value.reason == "value_bound"
    [(header, sums)] = it.flush(final=True)
    assert header.accepted == ["d1:3"]
    assert all(bool(torch.isfinite(t).all()) for t in sums.values())


def test_duplicate_counts_once():
    it = intake()
    h, t, _ = update("d1")
    it.accept(h, t, 10)
    with pytest.raises(WireError, match="duplicate"):
        it.accept(h, t, 10)
    assert it.groups[2].count == 1 and it.duplicates == 1


def test_norm_bound():
    it = intake(max_update_norm=1.0)
    h, t, _ = update(scale=5.0)
    with pytest.raises(WireError) as err:
        it.accept(h, t, 10)
    assert err.value.reason == "norm_bound"


def test_current_round_update_after_final_still_travels():
    """The cloud may still be collecting the round; it decides what is late."""
    it = intake()
    it.flush(final=True)
    h, t, _ = update("d1")
    assert it.accept(h, t, 10) == "d1:3"
    [(header, _)] = it.flush(final=False)
    assert header.accepted == ["d1:3"] and not header.final


def test_late_update_dropped_or_weighted_by_policy():
    for late, expect_ok in (("drop", False), ("stale_weight", True)):
        it = intake(late=late)
        it.announce(announce(round_=4, version=3), SHAPES, RoundPolicySection(late=late),
                    "topk_int8")
        h, t, _ = update("d1", round_=3, base_version=2)
        if expect_ok:
            it.accept(h, t, 10)
            [(header, _)] = it.flush(final=False)
            assert header.base_version == 2 and header.round == 4
        else:
            with pytest.raises(WireError, match="late"):
                it.accept(h, t, 10)


def test_async_staleness_bound():
    policy = RoundPolicySection(mode="async", max_staleness=1)
    it = RegionIntake("eu", "f")
    for r in (3, 4, 5):
        it.announce(announce(round_=r, version=r - 1), SHAPES, policy, "topk_int8")
    ok, _, _ = update("d1", round_=4, base_version=3)
    it.accept(ok, update()[1], 10)
    too_old, t, _ = update("d2", round_=3, base_version=2)
    with pytest.raises(WireError, match="stale"):
        it.accept(too_old, t, 10)


def test_offline_devices_are_not_waited_for():
    it = intake()
    h, t, _ = update("d1")
    it.accept(h, t, 10)
    assert not it.complete
    it.offline.add("d2")
    assert it.complete


def test_persisted_state_round_trips():
    it = intake()
    h, t, _ = update("d1")
    it.accept(h, t, 10)
    it.offline.add("d2")
    meta, tensors = it.to_state()
    back = RegionIntake.from_state("eu", "f", meta, tensors)
    assert back.accepted_ids == it.accepted_ids and back.offline == {"d2"}
    assert back.round == 3 and back.version == 2
    torch.testing.assert_close(back.groups[2].sums, it.groups[2].sums)
    h2, t2, _ = update("d2")
    back.accept(h2, t2, 10)
    assert back.complete
    with pytest.raises(WireError, match="duplicate"):
        back.accept(h, t, 10)


def test_quorum_counts_only_the_current_rounds_updates():
    """An update of the previous round (accepted under stale_weight) does not stand in for the
    same device's update of the current round."""
    it = intake(late="stale_weight")
    h, t, _ = update("d1")
    it.accept(h, t, 10)
    it.announce(announce(round_=4, version=3), SHAPES, it.policy, "topk_int8")
    late, t, _ = update("d2", round_=3, base_version=2)
    it.accept(late, t, 10)
    assert it.waiting == {"d1", "d2"} and not it.complete
    for client in ("d1", "d2"):
        h, t, _ = update(client, round_=4, base_version=3)
        it.accept(h, t, 10)
    assert it.waiting == set() and it.complete


def test_history_is_bounded_by_max_staleness():
    """The intake is persisted before every acknowledgement, so what it remembers must not
    grow with the federation: rounds beyond max_staleness (plus a few) are forgotten, and an
    update for one is refused as stale."""
    from hub.intake import KEEP_EXTRA_ROUNDS

    it = intake(max_staleness=2)
    h, t, _ = update("d1")
    it.accept(h, t, 10)
    for r in range(4, 20):
        it.announce(announce(round_=r, version=r - 1), SHAPES, it.policy, "topk_int8")
    assert len(it.rounds) == 2 + KEEP_EXTRA_ROUNDS + 1
    assert it.accepted_ids == set()
    with pytest.raises(WireError, match="stale"):
        it.accept(h, t, 10)


def legacy_state(**extra) -> tuple[dict, dict]:
    """intake.json/.safetensors as hubs wrote them when DP, similarity weighting, robust
    rules and importance reports were fields of the intake (the layout still written)."""
    policy = extra.pop("policy", RoundPolicySection())
    meta = {"round": 3, "version": 2, "final_sent": False, "seq": 0,
            "shapes": {n: list(s) for n, s in SHAPES.items()},
            "rounds": {"3": [2, ["d1", "d2"], "topk_int8", {"ratio": 1.0}]},
            "groups": {"2": [10.0, 1, ["d1:3"]]}, "accepted_ids": ["d1:3"],
            "rejected": {"stale": 1}, "duplicates": 0, "bytes_in": 100,
            "policy": policy.model_dump(mode="json"), "offline": [], "kept": {}, **extra}
    tensors = {"group/2/x.lora_A.weight": torch.full((2, 8), 10.0)}
    return meta, tensors


def test_a_state_of_the_earlier_layout_loads_and_is_written_back_alike():
    report = {"reports": 1, "tensors": {"x.lora_A.weight": [1, 1.0, 1.0]}}
    similarity = {"floor": 0.2, "version": 2, "previous": False, "reference": True}
    meta, tensors = legacy_state(dp={"clip_norm": 0.5}, similarity=similarity,
                                 importance={"2": report})
    tensors["similarity/reference/x.lora_A.weight"] = torch.ones(2, 8)
    it = RegionIntake.from_state("eu", "f", meta, tensors)
    assert [type(s) for s in it.steps] == [SimilarityWeighting, IntakeDp, ImportanceReports]
    assert it.step(IntakeDp) == IntakeDp(0.5) and it.step(SimilarityWeighting).floor == 0.2
    again, again_tensors = it.to_state()
    assert again == meta
    assert again_tensors.keys() == tensors.keys()
    assert all(torch.equal(again_tensors[k], tensors[k]) for k in tensors)
    [(header, sums)] = it.flush(final=True)
    assert header.count == 1 and header.weight == 10.0 and header.accepted == ["d1:3"]
    assert header.importance is not None and header.importance.reports == 1
    assert torch.equal(sums["x.lora_A.weight"], torch.full((2, 8), 10.0))


def test_kept_updates_of_the_earlier_layout_load_under_a_robust_rule():
    meta, tensors = legacy_state(policy=RoundPolicySection(
        aggregation=AggregationSection(rule="median")), kept={"2": 1})
    tensors["kept/2/0/x.lora_A.weight"] = torch.full((2, 8), 3.0)
    it = RegionIntake.from_state("eu", "f", meta, tensors)
    assert it.to_state()[0] == meta
    [(header, sums)] = it.flush(final=True)
    # the median of the one kept update (3) times its count (1): not the running sum, and
    # not the sample weight (10) it was persisted with (every kept update weighs one)
    assert header.weight == 1.0
    assert torch.equal(sums["x.lora_A.weight"], torch.full((2, 8), 3.0))
