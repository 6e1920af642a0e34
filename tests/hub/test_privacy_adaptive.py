"""Adaptive clipping carried by the hubs, layer by layer: the round's clip norm in the
announcement (absent without it), devices' plans clipping to it, a regional intake clipping
to it and counting the updates that were within it (persisted mid-round), the cloud's intake
summing the regions' counts, and the cloud's step: update noise at z_delta * C, the clip
moved in the direction the count implies, and a restarted cloud continuing with the clip its
checkpoint recorded."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedsa_common.federation.config import FederationConfig, RoundPolicySection
from fedsa_common.privacy.dp import dp_plan, l2_norm, privatize_update, round_dp_plan
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    PartialHeader,
    RoundSummary,
    UpdateHeader,
    decode_json,
    encode_json,
)
from hub.aggregation import RunningSum
from hub.checkpoint import CloudState, load_checkpoint, save_checkpoint
from hub.cloud_intake import CloudIntake
from hub.intake import RegionIntake
from hub.privacy import CloudPrivacy, IntakeDp, clip_from_history, intake_dp

SHAPES = {"x.lora_A.weight": (4, 8)}
# the count's noise on the fraction is SIGMA_B / 4 = 0.125: a round with every update
# within the clip (fraction ~ 1) or none (~ 0) lands on its side of the target 0.5 but for
# odds of 3e-5, so one round's direction is asserted
Z, SIGMA_B, FIRST_CLIP = 0.5, 0.5, 0.5
Z_DELTA = (Z ** -2 - (2 * SIGMA_B) ** -2) ** -0.5


def config(adaptive: bool = True, **ac) -> FederationConfig:
    return FederationConfig.model_validate({
        "rounds": 5, "sampling": {"clients_per_round": 4},
        "fedsa_lora": {"compression": {"method": "topk_int8", "ratio": 1.0},
                       "privacy": {"differential_privacy": {
                           "enable": True, "noise_multiplier": Z, "clip_norm": FIRST_CLIP,
                           "adaptive_clipping": {"enable": adaptive,
                                                 "clipped_count_stddev": SIGMA_B,
                                                 "clip_lr": 0.5, **ac}}}}})


def announcement(cfg: FederationConfig, clip: float | None) -> AnnounceHeader:
    return AnnounceHeader(federation="f", round=1, version=0, status="running",
                          selected={"eu": ["d1", "d2", "d3", "d4"]},
                          config=cfg.model_dump(mode="json"), config_hash=cfg.digest(),
                          deadline_s=30, issued_at=0.0, shared=list(SHAPES),
                          dp_clip_norm=clip)


# ------------------------------------------------------------------ wire and plan
def test_headers_carry_the_fields_only_with_adaptive_clipping():
    plain = announcement(config(adaptive=False), None)
    assert "dp_clip_norm" not in json.loads(encode_json(plain))
    with_clip = announcement(config(), 0.25)
    assert decode_json(AnnounceHeader, encode_json(with_clip)).dp_clip_norm == 0.25
    update = UpdateHeader(federation="f", round=1, client="d1", region="eu", base_version=0,
                          codec="dense", num_samples=3)
    assert "dp_unclipped" not in json.loads(encode_json(update))
    partial = PartialHeader(federation="f", round=1, region="eu", base_version=0, count=2,
                            weight=2.0, accepted=["d1:1", "d2:1"])
    assert "dp_unclipped" not in json.loads(encode_json(partial))
    forged = {**json.loads(encode_json(partial)), "dp_unclipped": 3}
    with pytest.raises(WireError, match="dp_unclipped 3 > count 2"):
        decode_json(PartialHeader, json.dumps(forged).encode())
    with pytest.raises(WireError, match="dp_clip_norm"):
        decode_json(AnnounceHeader, json.dumps(
            {**json.loads(encode_json(with_clip)), "dp_clip_norm": -1.0}).encode())


def test_a_round_plan_clips_to_the_announced_norm_and_says_whether_it_had_to():
    plan = round_dp_plan(config(), 0.25)
    assert plan is not None and plan.clip_norm == 0.25
    assert plan.central_noise_std == pytest.approx(Z_DELTA * 0.25)
    delta = {n: torch.full(s, 0.1) for n, s in SHAPES.items()}  # norm 0.566
    clipped, norm = privatize_update(delta, plan)
    assert l2_norm(clipped) == pytest.approx(0.25, rel=1e-5)
    assert plan.unclipped(norm) is False
    assert round_dp_plan(config(), 1.0).unclipped(norm) is True  # type: ignore[union-attr]
    first = round_dp_plan(config(), None)  # nothing announced: the configured clip
    assert first is not None and first.clip_norm == FIRST_CLIP
    # without adaptive clipping an announced clip changes nothing and nothing is reported
    off = round_dp_plan(config(adaptive=False), 0.25)
    assert off is not None and off.clip_norm == FIRST_CLIP and off.unclipped(norm) is None
    assert off.central_noise_std == pytest.approx(Z * FIRST_CLIP)


# ------------------------------------------------------------------ regional intake
def region_intake(cfg: FederationConfig, clip: float | None) -> RegionIntake:
    it = RegionIntake("eu", "f")
    it.announce(announcement(cfg, clip), SHAPES, cfg.round_policy,
                cfg.fedsa_lora.compression.codec, steps=[intake_dp(cfg, clip)])
    return it


def accept(it: RegionIntake, client: str, value: float, said: bool | None) -> None:
    delta = {n: torch.full(s, value) for n, s in SHAPES.items()}
    enc = get_codec("topk_int8", ratio=1.0).encode(delta)
    header = UpdateHeader(federation="f", round=1, client=client, region="eu",
                          base_version=0, codec="topk_int8", codec_params={"ratio": 1.0},
                          codec_meta=enc.meta, num_samples=10, dp_unclipped=said)
    it.accept(header, enc.tensors, 100)


def test_region_clips_to_the_announced_norm_and_counts_what_devices_say():
    it = region_intake(config(), 0.25)
    assert it.step(IntakeDp) == IntakeDp(0.25, adaptive=True)
    accept(it, "d1", 0.04, said=True)  # norm 0.226 (devices send it clipped): counted
    accept(it, "d2", 0.04, said=False)  # the device had to clip it: not counted
    # a device that does not say (from before the field) is judged by its norm here
    accept(it, "d3", 0.01, said=None)  # 0.057 <= 0.25: counted
    meta, tensors = it.to_state()  # a restart mid-round keeps the count and the clip
    it = RegionIntake.from_state("eu", "f", meta, tensors)
    assert it.step(IntakeDp) == IntakeDp(0.25, adaptive=True)
    accept(it, "d4", 1.0, said=None)  # 5.66 > 0.25: clipped, not counted
    [(header, sums)] = it.flush(final=True)
    assert header.count == 4 and header.dp_unclipped == 2
    assert decode_json(PartialHeader, encode_json(header)).dp_unclipped == 2
    # the updates point the same way, so their norms add; d4 is clipped to the announced
    # clip, not the configured 0.5
    assert l2_norm(sums) == pytest.approx((0.04 * 2 + 0.01) * 32 ** 0.5 + 0.25, rel=1e-2)


def test_region_without_adaptive_clipping_counts_nothing():
    it = region_intake(config(adaptive=False), None)
    assert it.step(IntakeDp) == IntakeDp(FIRST_CLIP)
    accept(it, "d1", 0.01, said=None)
    meta, _ = it.to_state()
    assert "adaptive" not in meta["dp"] and "unclipped" not in meta
    [(header, _)] = it.flush(final=True)
    assert header.dp_unclipped is None


# ------------------------------------------------------------------ cloud
def partial(region: str, count: int, unclipped: int | None, base_version: int = 0,
            round_: int = 1) -> tuple[PartialHeader, dict[str, torch.Tensor]]:
    header = PartialHeader(federation="f", round=round_, region=region,
                           base_version=base_version, count=count, weight=float(count),
                           accepted=[f"{region}{i}:{round_}" for i in range(count)],
                           dp_unclipped=unclipped)
    return header, {n: torch.full(s, 0.1) for n, s in SHAPES.items()}


def test_cloud_intake_sums_the_counts_of_merged_partials_and_persists_them():
    it = CloudIntake(1, b"announce", {"eu": ["x"]}, 0.0, RunningSum.zeros(SHAPES))
    policy = RoundPolicySection()
    for header, tensors in (partial("eu", 3, 2), partial("us", 2, 0), partial("as", 1, None)):
        it.accept(header, tensors, version=0, policy=policy, shared_set_changes=False)
    late, tensors = partial("eu", 2, 2, round_=0)  # dropped as late: not counted
    assert it.accept(late.model_copy(update={"seq": 1}), tensors, version=0, policy=policy,
                     shared_set_changes=False).reason == "late"
    assert it.total.count == 6 and it.unclipped == 2
    meta, tensors = it.to_state()
    assert CloudIntake.from_state(meta, tensors, b"announce").unclipped == 2
    fresh = CloudIntake(1, b"a", {}, 0.0, RunningSum.zeros(SHAPES))
    assert "unclipped" not in fresh.to_state()[0]  # states read as before without it


def noise_std(privacy: CloudPrivacy, denominator: int) -> float:
    """The std of the noise the cloud put on a round's sum (of one zero update)."""
    total = RunningSum.zeros({"a": (200, 200)})
    total.add({"a": torch.zeros(200, 200)}, 1.0)
    return float(privacy.mean(total, denominator)["a"].std()) * denominator


def summary(rnd: int, **dp) -> dict:
    return RoundSummary(federation="f", round=rnd, version=rnd, mode="sync", selected=4,
                        applied=[], applied_step=True, started_at=0.0,
                        duration_s=1.0, **dp).model_dump(mode="json")


def test_cloud_noises_at_z_delta_times_the_round_clip_and_moves_the_clip(tmp_path):
    cfg = config()
    privacy = CloudPrivacy.for_config(cfg)
    assert privacy.clip_norm == FIRST_CLIP
    assert noise_std(privacy, 4) == pytest.approx(Z_DELTA * FIRST_CLIP, rel=0.03)
    history = []
    # every update was within the clip: the clip shrinks (by the geometric step)
    first = privacy.close_round(1, 4, 4, applied=True, unclipped=4, arrived=4)
    assert first["dp_clip_norm"] == FIRST_CLIP and first["dp_unclipped_fraction"] > 0.5
    assert first["dp_next_clip_norm"] == pytest.approx(
        FIRST_CLIP * math.exp(-0.5 * (first["dp_unclipped_fraction"] - 0.5)))
    assert first["dp_next_clip_norm"] < FIRST_CLIP
    assert first["dp_noise_multiplier"] == Z  # the ledger records the configured z
    history.append(summary(1, **first))
    assert privacy.clip_norm == first["dp_next_clip_norm"]
    assert noise_std(privacy, 4) == pytest.approx(Z_DELTA * privacy.clip_norm, rel=0.03)
    # a round that released nothing neither spends nor moves the clip
    held = privacy.close_round(2, 4, 4, applied=False, unclipped=0, arrived=1)
    assert held["dp_next_clip_norm"] == held["dp_clip_norm"] == privacy.clip_norm
    assert "dp_unclipped_fraction" not in held
    history.append(summary(2, **held))
    # no update was within the clip: it grows, round after round
    for rnd in range(3, 6):
        before = privacy.clip_norm
        fields = privacy.close_round(rnd, 4, 4, applied=True, unclipped=0, arrived=4)
        assert fields["dp_clip_norm"] == before < fields["dp_next_clip_norm"]
        history.append(summary(rnd, **fields))

    # the checkpoint's history carries the clip: a restarted cloud announces the same
    save_checkpoint(tmp_path, CloudState(5, 4, {"a": torch.zeros(1)}, cfg.digest(),
                                         history=history))
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    restarted = CloudPrivacy.for_config(cfg, loaded.history)
    assert restarted.clip_norm == privacy.clip_norm
    assert restarted.epsilon == pytest.approx(privacy.epsilon)


def test_without_adaptive_clipping_the_cloud_announces_no_clip_and_keeps_its_summaries():
    privacy = CloudPrivacy.for_config(config(adaptive=False))
    assert privacy.clip_norm is None
    fields = privacy.close_round(1, 4, 4, applied=True, unclipped=4, arrived=4)
    assert not {"dp_clip_norm", "dp_next_clip_norm", "dp_unclipped_fraction"} & set(fields)
    assert noise_std(privacy, 4) == pytest.approx(Z * FIRST_CLIP, rel=0.03)
    assert clip_from_history(0.7, [summary(1, **fields)]) == 0.7
    plan = dp_plan(config(adaptive=False))
    assert plan is not None and plan.at_clip(0.1) is plan
