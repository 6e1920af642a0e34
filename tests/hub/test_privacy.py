"""The hubs' side of differential privacy: a regional intake folds DP updates clipped and
unit-weighted (and keeps that through its persisted form), the cloud adds noise once to
the sum in central mode only, and its ledger survives a restart through the round
summaries it checkpoints."""

from __future__ import annotations

import pytest
import torch

from fedsa_common.federation.config import FederationConfig, RoundPolicySection
from fedsa_common.privacy.dp import epsilon_spent, l2_norm
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    RoundSummary,
    UpdateHeader,
    decode_json,
    encode_json,
)
from hub.aggregation import RunningSum
from hub.intake import RegionIntake
from hub.privacy import CloudPrivacy, IntakeDp, intake_dp, sample_rate

SHAPES = {"x.lora_A.weight": (4, 8)}


def config(**dp) -> FederationConfig:
    return FederationConfig.model_validate({
        "rounds": 5, "fedsa_lora": {"compression": {"method": "topk_int8", "ratio": 1.0},
                                    "privacy": {"differential_privacy": {"enable": True,
                                                                         **dp}}}})


def region_intake(cfg: FederationConfig) -> RegionIntake:
    it = RegionIntake("eu", "f")
    header = AnnounceHeader(federation="f", round=1, version=0, status="running",
                            selected={"eu": ["d1", "d2"]}, config=cfg.model_dump(mode="json"),
                            config_hash="h", deadline_s=30, issued_at=0.0, shared=list(SHAPES))
    it.announce(header, SHAPES, cfg.round_policy, cfg.fedsa_lora.compression.codec,
                steps=[intake_dp(cfg)])
    return it


def accept(it: RegionIntake, client: str, scale: float, samples: int) -> dict:
    delta = {n: torch.full(s, scale) for n, s in SHAPES.items()}
    enc = get_codec("topk_int8", ratio=1.0).encode(delta)
    header = UpdateHeader(federation="f", round=1, client=client, region="eu",
                          base_version=0, codec="topk_int8", codec_params={"ratio": 1.0},
                          codec_meta=enc.meta, num_samples=samples)
    it.accept(header, enc.tensors, 100)
    return delta


def test_central_intake_clips_again_and_weighs_every_update_once():
    it = region_intake(config(clip_norm=0.5, noise_multiplier=1.0))
    accept(it, "d1", 1.0, samples=10)  # norm sqrt(32): clipped to 0.5
    small = accept(it, "d2", 0.01, samples=1000)  # norm 0.057: kept
    [(header, sums)] = it.flush(final=True)
    assert header.count == 2 and header.weight == 2.0  # not 1010
    expected = 0.5 / (32 ** 0.5) + small["x.lora_A.weight"][0, 0].item()
    torch.testing.assert_close(sums["x.lora_A.weight"],
                               torch.full((4, 8), expected), rtol=1e-2, atol=1e-4)


def test_local_intake_weighs_once_but_leaves_noised_updates_unclipped():
    it = region_intake(config(mode="local", clip_norm=0.5, noise_multiplier=1.0))
    accept(it, "d1", 1.0, samples=10)
    accept(it, "d2", 1.0, samples=30)
    [(header, sums)] = it.flush(final=True)
    assert header.weight == 2.0
    assert l2_norm(sums) == pytest.approx(2 * 32 ** 0.5, rel=1e-2)


def test_intake_without_dp_keeps_sample_weights():
    plain = FederationConfig.model_validate(
        {"fedsa_lora": {"compression": {"method": "topk_int8", "ratio": 1.0}}})
    it = region_intake(plain)
    assert it.step(IntakeDp) is None
    accept(it, "d1", 1.0, samples=10)
    [(header, _)] = it.flush(final=True)
    assert header.weight == 10.0


def test_intake_dp_survives_persistence():
    it = region_intake(config(clip_norm=0.25))
    accept(it, "d1", 1.0, samples=10)
    meta, tensors = it.to_state()
    back = RegionIntake.from_state("eu", "f", meta, tensors)
    assert back.step(IntakeDp) == IntakeDp(0.25)
    accept(back, "d2", 1.0, samples=10)
    [(header, sums)] = back.flush(final=True)
    assert header.weight == 2.0 and l2_norm(sums) == pytest.approx(0.5, rel=1e-2)
    plain = RegionIntake("eu", "f", RoundPolicySection())
    meta, tensors = plain.to_state()
    assert "dp" not in meta
    assert RegionIntake.from_state("eu", "f", meta, tensors).step(IntakeDp) is None


def running_sum(value: float, count: int) -> RunningSum:
    total = RunningSum.zeros({"a": (100, 100)})
    for _ in range(count):
        total.add({"a": torch.full((100, 100), value)}, 1.0)
    return total


def summary(rnd: int, **dp) -> RoundSummary:
    return RoundSummary(federation="f", round=rnd, version=rnd, mode="sync", selected=4,
                        applied=[], applied_step=True, started_at=0.0, duration_s=1.0, **dp)


def test_cloud_without_dp_changes_nothing():
    privacy = CloudPrivacy.for_config(FederationConfig())
    total = running_sum(0.5, 4)
    torch.testing.assert_close(privacy.mean(total, 8), total.mean())
    privacy.note_sampling(1, 4, 8)
    assert privacy.close_round(1, 4, 8, applied=True) == {}
    assert privacy.epsilon == 0.0
    dumped = summary(1).model_dump(mode="json")
    assert not any(k.startswith("dp_") for k in dumped)


def test_central_cloud_noises_the_sum_once_and_accounts_each_released_round():
    cfg = config(clip_norm=0.5, noise_multiplier=2.0, population=8)
    privacy = CloudPrivacy.for_config(cfg)
    mean = privacy.mean(running_sum(0.25, 4), 4)["a"]
    assert float(mean.mean()) == pytest.approx(0.25, abs=0.01)
    assert float(mean.std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.03)  # z*C on the sum

    history = []
    privacy.note_sampling(1, 2, 8)
    fields = privacy.close_round(1, 2, 8, applied=True)
    assert fields["dp_sample_rate"] == 0.25 and fields["dp_noise_multiplier"] == 2.0
    assert fields["dp_epsilon"] == pytest.approx(epsilon_spent([(2.0, 0.25)], 1e-5))
    history.append(summary(1, **fields).model_dump(mode="json"))
    not_applied = privacy.close_round(2, 2, 8, applied=False)  # nothing released
    assert "dp_noise_multiplier" not in not_applied
    assert not_applied["dp_epsilon"] == fields["dp_epsilon"]
    history.append(summary(2, **not_applied).model_dump(mode="json"))
    privacy.note_sampling(3, 4, 4)
    third = privacy.close_round(3, 4, 4, applied=True)
    assert third["dp_sample_rate"] == 1.0 and third["dp_epsilon"] > fields["dp_epsilon"]
    history.append(summary(3, **third).model_dump(mode="json"))

    # a restarted cloud rebuilds the ledger from its checkpoint history
    restarted = CloudPrivacy.for_config(cfg, history)
    assert restarted.epsilon == pytest.approx(third["dp_epsilon"])


def test_central_step_divides_by_the_announced_count_not_the_arrivals():
    """(S + N) / n with n the updates that arrived makes the noise scale reveal n, so
    add/remove accounting would not hold: the denominator is fixed at announcement."""
    privacy = CloudPrivacy.for_config(config(clip_norm=0.5, noise_multiplier=2.0))
    for arrived in (3, 6):
        mean = privacy.mean(running_sum(0.25, arrived), 6)["a"]
        assert float(mean.mean()) == pytest.approx(0.25 * arrived / 6, abs=0.01)
        assert float(mean.std()) == pytest.approx(2.0 * 0.5 / 6, rel=0.03)  # not / arrived
    over = FederationConfig.model_validate({
        "rounds": 5, "sampling": {"clients_per_round": 4},
        "round_policy": {"over_select": 1.5},
        "fedsa_lora": {"compression": {"method": "topk_int8", "ratio": 1.0},
                       "privacy": {"differential_privacy": {"enable": True,
                                                            "noise_multiplier": 2.0}}}})
    mean = CloudPrivacy.for_config(over).mean(running_sum(0.25, 4), 6)["a"]  # closes at 4
    assert float(mean.std()) == pytest.approx(2.0 * 1.0 / 4, rel=0.03)


def test_without_population_every_round_counts_as_full_participation():
    privacy = CloudPrivacy.for_config(config(noise_multiplier=2.0))
    privacy.note_sampling(1, 2, 8)
    assert privacy.close_round(1, 2, 8, applied=True)["dp_sample_rate"] == 1.0


def test_local_cloud_adds_no_noise_and_charges_every_round():
    cfg = config(mode="local", clip_norm=0.5, noise_multiplier=2.0)
    privacy = CloudPrivacy.for_config(cfg)
    total = running_sum(0.25, 4)
    torch.testing.assert_close(privacy.mean(total, 8), total.mean())
    first = privacy.close_round(1, 2, 8, applied=False)
    assert first["dp_sample_rate"] == 1.0
    # sensitivity 2C: the accountant sees noise multiplier 1
    assert first["dp_epsilon"] == pytest.approx(epsilon_spent([(1.0, 1.0)], 1e-5))


def test_summary_with_dp_fields_round_trips_and_old_summaries_still_parse():
    s = summary(1, dp_epsilon=1.5, dp_delta=1e-5, dp_noise_multiplier=1.1, dp_sample_rate=0.5)
    assert decode_json(RoundSummary, encode_json(s)) == s
    old = encode_json(summary(1))
    assert decode_json(RoundSummary, old).dp_epsilon is None


def test_sample_rate_is_selected_over_online():
    assert sample_rate(2, 8) == 0.25
    assert sample_rate(5, 3) == 1.0  # selected more than seen online: everyone
    assert sample_rate(0, 3) == 1.0
