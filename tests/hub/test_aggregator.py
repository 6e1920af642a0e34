"""The streaming aggregation interface (hub/aggregator.py): the rule registry names the
field it reads, admission steps check and change updates in order, and every aggregator
forwards the same aggregate after a save and restore as before it; a secure round's
aggregator forwards nothing until the protocol unmasked the sum, then exactly that sum."""

from __future__ import annotations

import math
import random

import pytest
import torch

from fedsa_common.federation.adaptive_split import ImportanceStats
from fedsa_common.federation.config import AggregationSection, RoundPolicySection
from fedsa_common.privacy.secagg import RoundContext, SecAggClient, SecAggParams, SecAggServer
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import UpdateHeader
from hub.aggregation import fedavg, l2_norm
from hub.aggregator import (
    FLOAT32_LIMIT,
    Aggregate,
    ClipNorm,
    ImportanceReports,
    KeptUpdates,
    NormBound,
    RunningMean,
    SecureSum,
    Update,
    ValueBound,
    aggregator_class,
    policy_steps,
)
from hub.privacy import IntakeDp
from hub.robust import coordinate_median, trimmed_mean
from hub.similarity import SimilarityWeighting
from tests.support.secagg import deliver_and_check

SHAPES = {"a.lora_A.weight": (2, 3), "b.lora_A.weight": (4,)}


def header(client: str, samples: int = 10, importance: dict[str, float] | None = None
           ) -> UpdateHeader:
    return UpdateHeader(federation="f", round=7, client=client, region="eu", base_version=6,
                        codec="dense", num_samples=samples, importance=importance)


def update(client: str, value: float | None = None, samples: int = 10, seed: int = 0,
           importance: dict[str, float] | None = None) -> Update:
    g = torch.Generator().manual_seed(seed)
    delta = {n: (torch.full(s, value) if value is not None else torch.randn(s, generator=g))
             for n, s in SHAPES.items()}
    return Update(header(client, samples, importance), delta, float(samples))


def same(a: Aggregate, b: Aggregate) -> None:
    assert (a.weight, a.count, a.ids, a.importance) == (b.weight, b.count, b.ids, b.importance)
    assert a.sums.keys() == b.sums.keys()
    assert all(torch.equal(a.sums[n], b.sums[n]) for n in a.sums)


# ---------------------------------------------------------------------------- registry
def test_the_registry_maps_each_rule_to_its_aggregator() -> None:
    assert aggregator_class("mean") is RunningMean
    assert aggregator_class("median") is KeptUpdates
    assert aggregator_class("trimmed_mean") is KeptUpdates
    assert RunningMean.after_final and not KeptUpdates.after_final


def test_an_unknown_rule_names_the_field_and_the_known_rules() -> None:
    with pytest.raises(ValueError) as err:
        aggregator_class("krum")
    message = str(err.value)
    assert message.startswith("round_policy.aggregation.rule: unknown rule 'krum'")
    assert "mean, median, trimmed_mean" in message


# ---------------------------------------------------------------------------- admission
def test_policy_steps_bound_then_clip_and_only_the_value_bound_by_default() -> None:
    assert policy_steps(RoundPolicySection()) == [ValueBound(1e4)]
    policy = RoundPolicySection(max_update_norm=5.0, max_update_value=2.0,
                                aggregation=AggregationSection(clip_norm=0.5))
    assert policy_steps(policy) == [ValueBound(2.0), NormBound(5.0), ClipNorm(0.5)]


def test_value_bound_refuses_a_finite_value_that_a_float64_norm_lets_through() -> None:
    """Issue 15, point 7: 3e38 is finite in float32 and its norm is finite in float64, so
    the norm and finiteness checks accepted it."""
    huge = update("d1", value=3e38)
    assert math.isfinite(l2_norm(huge.delta))
    with pytest.raises(WireError) as err:
        ValueBound(1e4).admit(huge)
    assert err.value.reason == "value_bound"
    small = update("d2", value=-1e4)
    assert ValueBound(1e4).admit(small) is small


def test_norm_bound_refuses_and_clip_scales() -> None:
    long = update("d1", value=1.0)  # norm sqrt(10)
    with pytest.raises(WireError) as err:
        NormBound(3.0).admit(long)
    assert err.value.reason == "norm_bound"
    assert NormBound(4.0).admit(long) is long
    clipped = ClipNorm(0.5).admit(long)
    assert l2_norm(clipped.delta) == pytest.approx(0.5, rel=1e-6)
    assert clipped.weight == long.weight and clipped.header is long.header


def test_importance_reports_are_admitted_only_by_their_step() -> None:
    sent = update("d1", importance={"a.lora_A.weight": 2.0, "b.lora_A.weight": 1.0})
    assert sent.report is None  # not admitted yet
    assert ImportanceReports().admit(sent).report == {"a.lora_A.weight": 2.0,
                                                      "b.lora_A.weight": 1.0}


def test_dp_and_similarity_steps_set_the_weight() -> None:
    u = update("d1", value=1.0, samples=30)
    dp = IntakeDp(clip_norm=0.25).admit(u)
    assert dp.weight == 1.0 and l2_norm(dp.delta) == pytest.approx(0.25, rel=1e-5)
    sim = SimilarityWeighting(0.2, reference={n: -torch.ones(s) for n, s in SHAPES.items()})
    against = sim.admit(u)
    assert against.factor == 0.2 and against.weight == pytest.approx(30 * 0.2)
    assert against.delta is u.delta


def test_configured_steps_round_trip_through_their_state() -> None:
    sim = SimilarityWeighting(0.3, version=4, reference={"a.lora_A.weight": torch.ones(2, 3)})
    for step in (IntakeDp(0.5), IntakeDp(None), ImportanceReports(), sim):
        meta, tensors = step.to_state()
        back = type(step).from_state(meta, tensors)
        assert type(back) is type(step) and back.key == step.key
    assert IntakeDp.from_state(*IntakeDp(0.5).to_state()) == IntakeDp(0.5)
    back = SimilarityWeighting.from_state(*sim.to_state())
    assert (back.floor, back.version, back.previous) == (0.3, 4, None)
    assert torch.equal(back.reference["a.lora_A.weight"], torch.ones(2, 3))


# ---------------------------------------------------------------------------- aggregators
def test_running_mean_is_fedavg_and_sums_reports() -> None:
    agg = RunningMean(SHAPES, AggregationSection())
    empty = agg.result()
    assert (empty.weight, empty.count, empty.ids, empty.importance) == (0.0, 0, [], None)
    updates = [update(f"d{i}", samples=10 * (i + 1), seed=i) for i in range(3)]
    for u in updates[:2]:
        agg.accept(ImportanceReports().admit(replace_header(u, {"a.lora_A.weight": 1.0})))
    agg.accept(updates[2])  # no report: nothing to sum for it
    out = agg.result()
    assert out.count == 3 and out.weight == 60.0 and out.ids == ["d0:7", "d1:7", "d2:7"]
    assert out.importance is not None
    assert ImportanceStats.from_json(out.importance).reports == 2
    mean = fedavg([(u.delta, u.weight) for u in updates])
    for n in SHAPES:
        torch.testing.assert_close(out.sums[n] / out.weight, mean[n])


def replace_header(u: Update, importance: dict[str, float]) -> Update:
    return Update(header(u.header.client, int(u.weight), importance), u.delta, u.weight)


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean"])
def test_every_rule_forwards_the_same_after_save_and_restore(rule: str) -> None:
    aggregation = AggregationSection(rule=rule)
    cls = aggregator_class(rule)
    agg = cls(SHAPES, aggregation)
    for i in range(5):
        agg.accept(update(f"d{i}", samples=i + 1, seed=i))
    sections, tensors = agg.to_state("6")
    assert all(name.split("/")[1] == "6" for name in tensors)  # the tag is in every name
    state = {section: {"6": value} for section, value in sections.items()}
    back = cls.from_state("6", state, tensors, SHAPES, aggregation)
    same(back.result(), agg.result())
    back.accept(update("d9", samples=3, seed=9))  # and it keeps accepting
    assert back.result().count == 6


@pytest.mark.parametrize(("rule", "reference"), [
    ("median", coordinate_median),
    ("trimmed_mean", lambda ds: trimmed_mean(ds, 0.2)),
])
def test_kept_updates_forward_the_robust_estimate_times_the_weight(rule, reference) -> None:
    agg = KeptUpdates(SHAPES, AggregationSection(rule=rule))
    updates = [update(f"d{i}", samples=i + 1, seed=i) for i in range(5)]
    for u in updates:
        agg.accept(u)
    out = agg.result()
    assert out.weight == 5.0 and out.count == 5  # one per update: samples are not weights
    expected = reference([u.delta for u in updates])
    for n in SHAPES:
        torch.testing.assert_close(out.sums[n] / out.weight, expected[n])


def test_kept_updates_weigh_every_update_one_whatever_it_declares() -> None:
    """Issue 15, point 6: two devices declaring 1e6 samples made their region's partial
    weigh 2e6 against the other regions' few hundred at the cloud."""
    agg = KeptUpdates(SHAPES, AggregationSection(rule="median"))
    for i, samples in enumerate([10, 1_000_000, 1_000_000]):
        agg.accept(update(f"d{i}", value=float(i), samples=samples))
    out = agg.result()
    assert (out.weight, out.count) == (3.0, 3)
    assert all(torch.equal(out.sums[n], torch.full(s, 3.0)) for n, s in SHAPES.items())


def test_no_aggregator_lets_its_float32_result_overflow() -> None:
    """An update whose weighted values could take the forwarded sums past float32's range
    is refused (``overflow``) before anything changes, for the mean and the robust rules."""
    mean = RunningMean(SHAPES, AggregationSection())
    mean.accept(update("d0", value=1e4, samples=10**30))  # 1e34: fine
    before = mean.result()
    with pytest.raises(WireError) as err:
        mean.accept(update("d1", value=1e4, samples=10**35))  # 1e39 > float32's 3.4e38
    assert err.value.reason == "overflow"
    same(mean.result(), before)
    kept = KeptUpdates(SHAPES, AggregationSection(rule="median"))
    kept.accept(update("d0", value=FLOAT32_LIMIT / 1.5))
    with pytest.raises(WireError) as err:  # the estimate x 2 updates could reach 2.3e38
        kept.accept(update("d1", value=1.0))
    assert err.value.reason == "overflow" and kept.result().count == 1
    out = kept.result()
    assert all(bool(torch.isfinite(t).all()) for t in out.sums.values())


# ---------------------------------------------------------------------------- secure sum
def masked_round(n: int = 4) -> tuple[SecureSum, dict[str, SecAggClient], RoundContext]:
    """A secure round through its key exchange, with a ``SecureSum`` around its server."""
    length = sum(torch.Size(s).numel() for s in SHAPES.values())
    ctx = RoundContext("f", 7, "eu", length, SecAggParams())
    rng = random.Random(0)
    clients = {f"d{i}": SecAggClient(ctx, f"d{i}", rng.randbytes) for i in range(n)}
    server = SecAggServer(ctx)
    for c in clients.values():
        server.add_keys(c.advertise())
    roster = server.close_keys()
    for c in roster.members:
        server.add_shares(clients[c].share_keys(roster))
    deliver_and_check(server, clients)
    return SecureSum(server, SHAPES, "dense", {}), clients, ctx


def test_secure_sum_forwards_nothing_until_unmasked_then_the_weighted_sum() -> None:
    agg, clients, _ = masked_round()
    values = {c: torch.linspace(-0.2, 0.2, 10) * (i + 1) for i, c in enumerate(clients)}
    samples = {c: 10 * (i + 1) for i, c in enumerate(clients)}
    masked = {c: client.masked_input(values[c], samples[c]) for c, client in clients.items()}
    for c in ("d0", "d1", "d2"):  # d3 shared its keys, then vanished
        agg.accept(Update(header(c, samples[c]), {"y": masked[c].y}, float(samples[c])))
    with pytest.raises(WireError) as err:  # a resend of the same masked vector
        agg.accept(Update(header("d0", samples["d0"]), {"y": masked["d0"].y}, 10.0))
    assert err.value.reason == "duplicate"
    empty = agg.result()
    assert (empty.weight, empty.count, empty.ids) == (0.0, 0, [])
    assert all(float(t.abs().sum()) == 0 for t in empty.sums.values())
    assert agg.to_state("6") == ({}, {})  # never persisted: a restart fails the round

    told = agg.server.close_inputs()
    for c in told.survivors:
        agg.server.add_signature(clients[c].sign_survivors(told))
    request = agg.server.close_consistency()
    for c in request.survivors:
        agg.server.add_unmask(clients[c].unmask(request))
    agg.finish()
    out = agg.result()
    assert out.ids == ["d0:7", "d1:7", "d2:7"] and out.count == 3 and out.weight == 60.0
    flat = sum(values[c] * samples[c] for c in ("d0", "d1", "d2"))
    got = torch.cat([out.sums[n].flatten() for n in sorted(SHAPES)])
    torch.testing.assert_close(got, flat.to(torch.float32), atol=1e-3, rtol=0)


def test_the_mean_takes_the_exact_peak_when_its_bound_does_not_settle_the_check() -> None:
    """The running mean checks overflow against a kept upper bound of max|sum| (the sum of
    the accepted ``w max|delta|``); where that bound is too loose it takes the exact peak,
    so updates that cancel out are accepted as before, and one that truly overflows is
    still refused with nothing changed."""
    mean = RunningMean(SHAPES, AggregationSection())
    mean.accept(update("d0", value=7e3, samples=10**34))  # +7e37
    mean.accept(update("d1", value=-7e3, samples=10**34))  # sum 0; the bound says 1.4e38
    assert mean.bound == pytest.approx(1.4e38)
    mean.accept(update("d2", value=7e3, samples=10**34))  # bound 2.1e38 > limit: exact 0
    assert mean.bound == pytest.approx(7e37) and mean.count == 3
    before = mean.result()
    with pytest.raises(WireError) as err:  # exact 7e37 + 1.1e38 > 1.7e38
        mean.accept(update("d3", value=1.1e4, samples=10**34))
    assert err.value.reason == "overflow"
    same(mean.result(), before)


def test_a_restored_mean_starts_from_its_exact_peak() -> None:
    mean = RunningMean(SHAPES, AggregationSection())
    mean.accept(update("d0", value=7e3, samples=10**34))
    mean.accept(update("d1", value=-7e3, samples=10**34))
    sections, tensors = mean.to_state("3")
    state = {section: {"3": value} for section, value in sections.items()}
    restored = RunningMean.from_state("3", state, tensors, SHAPES, AggregationSection())
    assert restored.bound == restored.peak() < 1e-10 * mean.bound  # 0, give or take rounding
