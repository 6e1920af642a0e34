"""A regional intake under a robust rule: it keeps the round's individual updates, forwards
``robust estimate x total weight`` (what ``hub/robust.py`` computes from the same updates),
keeps them across a persist/restore, refuses updates after its robust partial, and bounds
norms by scaling for every rule, the mean included."""

import pytest
import torch

from fedsa_common.federation.config import AggregationSection, FederationConfig, RoundPolicySection
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader
from hub.aggregation import fedavg, l2_norm
from hub.aggregator import RunningMean
from hub.intake import RegionIntake
from hub.robust import clip_to_norm, coordinate_median, trimmed_mean

SHAPES = {"x.lora_A.weight": (2, 8), "y.lora_A.weight": (3,)}
CLIENTS = [f"d{i}" for i in range(5)]


def announce() -> AnnounceHeader:
    return AnnounceHeader(
        federation="f", round=3, version=2, status="running", selected={"eu": CLIENTS},
        config=FederationConfig().model_dump(mode="json"), config_hash="h", deadline_s=30,
        issued_at=0.0, shared=list(SHAPES))


def update(client: str, delta: dict[str, torch.Tensor], samples: int
           ) -> tuple[UpdateHeader, dict[str, torch.Tensor]]:
    """A dense (lossless) update, so the hub decodes exactly ``delta``."""
    enc = get_codec("dense").encode(delta)
    header = UpdateHeader(federation="f", round=3, client=client, region="eu", base_version=2,
                          codec="dense", codec_params={}, codec_meta=enc.meta,
                          num_samples=samples)
    return header, enc.tensors


def intake(**aggregation) -> RegionIntake:
    it = RegionIntake("eu", "f")
    policy = RoundPolicySection(aggregation=AggregationSection(**aggregation))
    it.announce(announce(), SHAPES, policy, "topk_int8")
    return it


def round_updates(seed: int = 0) -> list[tuple[str, dict[str, torch.Tensor], int]]:
    """Four honest devices and one sign-flipping attacker sending -10x, with the most samples."""
    g = torch.Generator().manual_seed(seed)
    honest = [{n: torch.randn(s, generator=g) * 0.1 + 1.0 for n, s in SHAPES.items()}
              for _ in range(4)]
    attacker = {n: -10.0 * t for n, t in honest[0].items()}
    return [(c, d, w) for c, d, w in zip(CLIENTS, [*honest, attacker], [10, 20, 30, 40, 900],
                                         strict=True)]


def accept_all(it: RegionIntake, updates) -> None:
    for client, delta, samples in updates:
        it.accept(*update(client, delta, samples), 100)


@pytest.mark.parametrize(("rule", "reference"), [
    ("median", coordinate_median),
    ("trimmed_mean", lambda ds: trimmed_mean(ds, 0.2)),
])
def test_flush_forwards_the_robust_estimate_times_the_weight(rule, reference):
    it = intake(rule=rule)
    updates = round_updates()
    accept_all(it, updates)
    assert it.complete
    [(header, sums)] = it.flush(final=True)
    assert header.count == 5 and header.weight == 5.0 and header.final  # not 1000 samples
    expected = reference([d for _, d, _ in updates])
    for name in SHAPES:
        torch.testing.assert_close(sums[name] / header.weight, expected[name])
        # the attacker pulled every coordinate negative under the mean; here none is
        assert bool((sums[name] > 0).all())
    assert not it.groups  # forwarded, so no longer kept


def test_mean_rule_keeps_nothing_and_still_sums():
    it = intake()
    updates = round_updates()
    accept_all(it, updates)
    assert type(it.groups[2]) is RunningMean  # a running sum: no update kept
    [(header, sums)] = it.flush(final=True)
    ref = fedavg([(d, float(w)) for _, d, w in updates])
    for name in SHAPES:
        torch.testing.assert_close(sums[name] / header.weight, ref[name])
        assert bool((sums[name] < 0).all())  # the attacker won: why robust rules exist


def test_kept_updates_survive_a_restart():
    it = intake(rule="median")
    updates = round_updates(seed=1)
    accept_all(it, updates[:3])
    meta, tensors = it.to_state()
    restored = RegionIntake.from_state("eu", "f", meta, tensors)
    assert restored.policy.aggregation.rule == "median"
    accept_all(restored, updates[3:])
    [(_, sums)] = restored.flush(final=True)
    expected = coordinate_median([d for _, d, _ in updates])
    for name in SHAPES:
        torch.testing.assert_close(sums[name] / 5.0, expected[name])


def test_state_of_a_mean_intake_has_no_kept_tensors():
    it = intake()
    accept_all(it, round_updates()[:2])
    meta, tensors = it.to_state()
    assert meta["kept"] == {} and not any(k.startswith("kept/") for k in tensors)


def test_update_after_the_robust_partial_is_late():
    """A lone late update would reach the cloud unfiltered; under a robust rule it is
    refused (under the mean it still travels, see test_intake.py)."""
    it = intake(rule="median")
    updates = round_updates()
    accept_all(it, updates[:3])
    it.flush(final=True)
    with pytest.raises(WireError) as err:
        it.accept(*update(*updates[3]), 100)
    assert err.value.reason == "late"


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean"])
def test_clip_norm_scales_before_folding_for_every_rule(rule):
    bound = 0.5
    it = intake(rule=rule, clip_norm=bound)
    updates = round_updates()
    accept_all(it, updates)
    [(header, sums)] = it.flush(final=True)
    clipped = [clip_to_norm(d, bound) for _, d, _ in updates]
    assert all(l2_norm(c) == pytest.approx(bound, rel=1e-5) for c in clipped)
    if rule == "mean":
        expected = fedavg([(c, float(w)) for c, (_, _, w) in zip(clipped, updates,
                                                                  strict=True)])
    elif rule == "median":
        expected = coordinate_median(clipped)
    else:
        expected = trimmed_mean(clipped, 0.2)
    for name in SHAPES:
        torch.testing.assert_close(sums[name] / header.weight, expected[name])
