"""Adaptive clipping (Andrew et al. 2021) as pure math: the clip tracks the target quantile
of a fixed norm distribution from either side, the update noise multiplier is the paper's
formula (checked by hand and against opacus's accountant), a count noise too small for
the noise multiplier is refused naming the field, and the configuration accepts the
option in central mode and names the field of what it refuses."""

from __future__ import annotations

import math

import pytest
import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.privacy.dp import dp_plan, epsilon_spent
from fedsa_common.privacy.dp_adaptive import (
    AdaptiveClipping,
    adapt_clip,
    next_clip,
    noised_unclipped_fraction,
    update_noise_multiplier,
    within_clip,
)

FIELD = "fedsa_lora.privacy.differential_privacy.adaptive_clipping"


def test_update_noise_multiplier_by_hand_and_by_the_accountant():
    # z = 1, sigma_b = 1: (1 - 1/4)^-1/2 = 2 / sqrt(3)
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(2 / math.sqrt(3), rel=1e-12)
    # z = 1.8, sigma_b = 5 (m = 100): (1.8^-2 - 10^-2)^-1/2
    z_delta = update_noise_multiplier(1.8, 5.0)
    assert z_delta == pytest.approx((1 / 3.24 - 1 / 100) ** -0.5, rel=1e-12)
    assert z_delta == pytest.approx(1.8299, abs=1e-4)  # 1.8% more noise than z
    # the two releases together spend exactly what one Gaussian step at z does (RDP of
    # Gaussians adds up as 1/z^2): opacus, at sample rate 1, over 8 rounds
    together = epsilon_spent([(z_delta, 1.0), (2 * 5.0, 1.0)] * 8, 1e-5)
    assert together == pytest.approx(epsilon_spent([(1.8, 1.0)] * 8, 1e-5), rel=1e-6)
    # and the configured z alone, as if the count were free, would spend less
    assert epsilon_spent([(1.8, 1.0), (10.0, 1.0)] * 8, 1e-5) > together


@pytest.mark.parametrize("sigma_b", [0.9, 0.5, 0.1])
def test_a_count_noise_too_small_for_the_multiplier_is_refused_naming_the_field(sigma_b):
    with pytest.raises(ValueError, match=f"{FIELD}.clipped_count_stddev: {sigma_b:g} is too "
                                         r"small for noise multiplier 1.8; it must exceed 0.9"):
        update_noise_multiplier(1.8, sigma_b)
    assert update_noise_multiplier(1.8, 0.91) > 1.8 * 5  # just above: huge, but defined


def test_resolve_defaults_the_count_noise_to_a_twentieth_of_the_expected_updates():
    p = AdaptiveClipping.resolve(1.8, 0.5, 0.2, None, expected_updates=100)
    assert p.count_stddev == pytest.approx(5.0)
    assert p.update_multiplier == pytest.approx(update_noise_multiplier(1.8, 5.0))
    with pytest.raises(ValueError, match=f"{FIELD}.clipped_count_stddev: set it, or set "
                                         "sampling.clients_per_round"):
        AdaptiveClipping.resolve(1.8, 0.5, 0.2, None, expected_updates=None)
    with pytest.raises(ValueError, match=f"{FIELD}.clipped_count_stddev"):
        AdaptiveClipping.resolve(1.8, 0.5, 0.2, None, expected_updates=10)  # 0.5 < 0.9


def test_one_step_by_hand():
    norms = torch.tensor([0.1, 0.5, 0.9, 1.0, 1.5, 3.0, 0.2, 2.0])
    # a norm equal to the clip is not clipped
    assert sum(within_clip(float(n), 1.0) for n in norms) == 5
    gen = torch.Generator().manual_seed(0)
    # no noise to speak of: 5 of 8 arrived, m = 10 -> (5 - 4) / 10 + 0.5 = 0.6
    assert noised_unclipped_fraction(5, 8, 10, 1e-12, gen) == pytest.approx(0.6)
    assert next_clip(1.0, 0.7, 0.5, 0.2) == pytest.approx(math.exp(-0.04))
    assert next_clip(2.0, 0.2, 0.5, 0.2) == pytest.approx(2.0 * math.exp(0.06))
    with pytest.raises(ValueError, match="between 0 and arrived"):
        noised_unclipped_fraction(9, 8, 10, 1.0, gen)


@pytest.mark.parametrize(("start", "quantile"), [(0.01, 0.5), (50.0, 0.5), (0.1, 0.8)])
def test_the_clip_converges_to_the_target_quantile_of_the_norms(start, quantile):
    """Norms of 100 updates a round drawn from one log-normal distribution (median 1);
    after 250 rounds the clip sits near that distribution's ``quantile`` and the fraction
    of fresh norms under it is close to the target, starting far below or above."""
    params = AdaptiveClipping.resolve(1.0, quantile, 0.2, None, expected_updates=100)
    gen = torch.Generator().manual_seed(11)
    clip, late = start, []
    for rnd in range(250):
        norms = torch.exp(torch.randn(100, generator=gen, dtype=torch.float64) * 0.5)
        within = sum(within_clip(float(n), clip) for n in norms)
        clip, _fraction = adapt_clip(clip, within, len(norms), 100, params, gen)
        if rnd >= 150:
            late.append(clip)
    settled = sum(late) / len(late)
    # the log-normal's quantile: exp(0.5 * Phi^-1(q))
    expected = math.exp(0.5 * math.sqrt(2) * torch.erfinv(torch.tensor(2 * quantile - 1)
                                                            ).item())
    assert settled == pytest.approx(expected, rel=0.1)
    fresh = torch.exp(torch.randn(100_000, generator=gen, dtype=torch.float64) * 0.5)
    assert float((fresh <= settled).double().mean()) == pytest.approx(quantile, abs=0.04)


def with_adaptive(adaptive: dict, **dp) -> dict:
    return {"model": {"num_labels": 4}, "sampling": {"clients_per_round": 40},
            "fedsa_lora": {"privacy": {"differential_privacy": {
                "enable": True, "noise_multiplier": 1.8, **dp,
                "adaptive_clipping": adaptive}}}}


def test_the_configuration_names_the_field_it_refuses():
    on = FederationConfig.model_validate(with_adaptive({"enable": True}))  # 0.05*40 = 2 > 0.9
    assert on.fedsa_lora.privacy.differential_privacy.adaptive_clipping.enable
    with pytest.raises(ValueError) as err:
        FederationConfig.model_validate(with_adaptive({"enable": True,
                                                       "clipped_count_stddev": 0.5}))
    assert f"{FIELD}.clipped_count_stddev: 0.5 is too small" in str(err.value)
    with pytest.raises(ValueError, match=f"{FIELD}: needs mode central"):
        FederationConfig.model_validate(with_adaptive({"enable": True}, mode="local"))
    off = FederationConfig.model_validate(with_adaptive({"enable": False,
                                                         "target_quantile": 0.9}))
    assert "adaptive_clipping" not in off.model_dump(mode="json")["fedsa_lora"]["privacy"][
        "differential_privacy"]  # digests of DP configurations stay what they were
    plan = dp_plan(off)
    assert plan is not None and plan.adaptive is None
    for bad in ({"target_quantile": 1.0}, {"clip_lr": 0}, {"clipped_count_stddev": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FederationConfig.model_validate(with_adaptive({"enable": False, **bad}))


def test_the_plan_carries_the_resolved_parameters():
    plan = dp_plan(FederationConfig.model_validate(with_adaptive({"enable": True})))
    assert plan is not None and plan.adaptive is not None
    assert plan.adaptive.count_stddev == pytest.approx(2.0)
    assert plan.adaptive.noise_multiplier == plan.noise_multiplier == 1.8
    assert plan.adaptive.update_multiplier == pytest.approx((1.8 ** -2 - 4.0 ** -2) ** -0.5)
