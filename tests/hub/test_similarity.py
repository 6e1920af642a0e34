"""Similarity weighting at a regional hub's intake: the reference direction from two
announcements, weights num_samples * factor, and persistence across a restart."""

from __future__ import annotations

import pytest
import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader
from hub.intake import RegionIntake
from hub.similarity import SimilarityWeighting, similarity_for

SHAPES = {"x.lora_A.weight": (2, 4), "y.lora_A.weight": (3,)}
FLOOR = 0.2
CONFIG = FederationConfig.model_validate({
    "fedsa_lora": {"compression": {"enable": False}},
    "round_policy": {"aggregation": {"weighting": "similarity", "similarity_floor": FLOOR}}})


def tensors(value: float) -> dict[str, torch.Tensor]:
    return {n: torch.full(s, value) for n, s in SHAPES.items()}


def announce(intake: RegionIntake, round_: int, version: int, global_value: float) -> None:
    """What RegionalHub.on_announce does with a new round."""
    header = AnnounceHeader(
        federation="f", round=round_, version=version, status="running",
        selected={"eu": ["d1", "d2"]}, config=CONFIG.model_dump(mode="json"),
        config_hash="h", deadline_s=30, issued_at=0.0, shared=sorted(SHAPES))
    agg = CONFIG.round_policy.aggregation
    sim = similarity_for(intake.step(SimilarityWeighting), agg.weighting, agg.similarity_floor)
    intake.announce(header, SHAPES, CONFIG.round_policy, "dense", steps=[sim])
    assert intake.step(SimilarityWeighting) is not None
    intake.step(SimilarityWeighting).announce(version, tensors(global_value))


def accept(intake: RegionIntake, client: str, round_: int, version: int, delta_value: float,
          samples: int = 10) -> None:
    enc = get_codec("dense").encode(tensors(delta_value))
    header = UpdateHeader(federation="f", round=round_, client=client, region="eu",
                          base_version=version, codec="dense", codec_meta=enc.meta,
                          num_samples=samples)
    intake.accept(header, enc.tensors, 100)


def test_reference_is_the_last_global_change() -> None:
    sim = SimilarityWeighting(FLOOR)
    sim.announce(0, tensors(1.0))
    assert sim.reference is None
    sim.announce(1, tensors(1.5))
    assert torch.equal(sim.reference["x.lora_A.weight"], torch.full((2, 4), 0.5))
    sim.announce(1, tensors(1.5))  # a round that applied nothing keeps the reference
    assert sim.reference is not None
    sim.announce(2, {"x.lora_A.weight": torch.ones(2, 4)})  # the shared set changed
    assert sim.reference is None


def test_weights_are_samples_times_agreement_bounded_by_the_floor() -> None:
    intake = RegionIntake("eu", "f")
    announce(intake, 1, 0, global_value=0.0)
    accept(intake, "d1", 1, 0, delta_value=-1.0)  # no reference yet: plain sample weight
    assert intake.groups[0].weight == pytest.approx(10.0)
    intake.flush(final=True)

    announce(intake, 2, 1, global_value=1.0)  # the federation moved by +1 everywhere
    accept(intake, "d1", 2, 1, delta_value=2.0, samples=10)   # along it: factor 1
    assert intake.last_factor == pytest.approx(1.0)  # what the hub logs with the accept
    accept(intake, "d2", 2, 1, delta_value=-3.0, samples=30)  # against it: the floor
    assert intake.last_factor == pytest.approx(FLOOR)
    [(header, sums)] = intake.flush(final=True)
    assert header.weight == pytest.approx(10.0 + 30.0 * FLOOR)
    expected = 10.0 * 2.0 + 30.0 * FLOOR * -3.0
    assert torch.allclose(sums["y.lora_A.weight"], torch.full((3,), expected))


def test_reference_survives_a_restart_of_the_hub() -> None:
    intake = RegionIntake("eu", "f")
    announce(intake, 1, 0, global_value=0.0)
    announce(intake, 2, 1, global_value=1.0)
    meta, state = intake.to_state()
    restored = RegionIntake.from_state("eu", "f", meta, state)
    sim = restored.step(SimilarityWeighting)
    assert sim is not None and sim.floor == FLOOR
    accept(restored, "d2", 2, 1, delta_value=-3.0, samples=30)
    assert restored.groups[1].weight == pytest.approx(30.0 * FLOOR)


def test_restart_without_the_state_weighs_by_samples() -> None:
    """A hub state written without similarity (e.g. before it was enabled) has no
    reference: factors are 1 until two announcements were seen."""
    intake = RegionIntake("eu", "f")
    announce(intake, 1, 0, global_value=0.0)
    meta, state = intake.to_state()
    del meta["similarity"]
    restored = RegionIntake.from_state("eu", "f", meta, state)
    assert restored.step(SimilarityWeighting) is None
    announce(restored, 2, 1, global_value=1.0)
    accept(restored, "d2", 2, 1, delta_value=-3.0, samples=30)
    assert restored.groups[1].weight == pytest.approx(30.0)


def test_sample_weighting_persists_nothing_new() -> None:
    intake = RegionIntake("eu", "f")
    meta, tensors = intake.to_state()
    assert "similarity" not in meta and "importance" not in meta
    assert not any(k.startswith("similarity/") for k in tensors)
    assert similarity_for(None, "samples", 0.1) is None


def test_a_downlink_delta_is_the_reference_at_once() -> None:
    """Under downlink deltas the announcement carries the change itself: it is the
    reference, even for a hub that saw no earlier announcement (e.g. just restarted)."""
    sim = SimilarityWeighting(FLOOR)
    sim.announce_delta(3, 2, tensors(0.25))
    assert torch.equal(sim.reference["y.lora_A.weight"], torch.full((3,), 0.25))
    assert sim.previous is None  # the global itself is unknown from a delta
    sim.announce_delta(3, 2, tensors(0.25))  # re-announced, nothing applied: kept
    assert sim.reference is not None and sim.version == 3
    sim.announce_delta(4, 3, None)  # a delta that did not decode: no reference
    assert sim.reference is None
    # a known global is followed through deltas
    sim = SimilarityWeighting(FLOOR)
    sim.announce(0, tensors(1.0))
    sim.announce_delta(1, 0, tensors(0.5))
    assert torch.equal(sim.previous["x.lora_A.weight"], torch.full((2, 4), 1.5))
    sim.announce(2, tensors(2.5))  # a full announcement after it: the change since
    assert torch.equal(sim.reference["x.lora_A.weight"], torch.ones(2, 4))
    assert sim.factor(tensors(-1.0)) == FLOOR and sim.factor(tensors(1.0)) == 1.0
