"""Differential-privacy math: the accountant against values from an independent library and
the closed form, calibration round trips, clipping properties, noise, and the plan a
configuration resolves to."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsa_common.federation.config import FederationConfig
from fedsa_common.privacy.dp import (
    PrivacyLedger,
    calibrate_noise_multiplier,
    clip_update,
    dp_plan,
    epsilon_spent,
    expected_updates,
    gaussian_noise_like,
    l2_norm,
    noisy_mean,
    planned_sample_rate,
    privatize_update,
    secure_generator,
)

# (sample rate q, noise multiplier sigma, steps, delta) -> epsilon, computed independently
# with Google's dp-accounting 0.6.0 (dp_accounting.rdp.RdpAccountant, default orders,
# PoissonSampledDpEvent(q, GaussianDpEvent(sigma)) composed `steps` times).  The first row
# is the MNIST setting of Abadi et al. 2016 / the TF Privacy tutorial (batch 256 of 60000,
# sigma 1.1, 60 epochs), whose tutorial reports epsilon of about 3 with the older,
# looser RDP-to-DP conversion.
REFERENCE = [
    (256 / 60000, 1.1, int(60 * 60000 / 256), 1e-5, 2.5965558697943036),
    (0.01, 1.0, 1000, 1e-5, 2.101366525420273),
    (0.1, 1.5, 100, 1e-5, 3.92354440422092),
    (1.0, 1.0, 10, 1e-5, 19.05359753163139),
    (1.0, 2.0, 8, 1e-5, 7.077391578166641),
]


@pytest.mark.parametrize(("q", "sigma", "steps", "delta", "expected"), REFERENCE)
def test_epsilon_matches_dp_accounting(q, sigma, steps, delta, expected):
    assert epsilon_spent([(sigma, q)] * steps, delta) == pytest.approx(expected, rel=1e-3)


def closed_form_full_batch(sigma: float, steps: int, delta: float,
                           orders: np.ndarray) -> float:
    """Without subsampling the Gaussian mechanism has RDP alpha / (2 sigma^2) at order
    alpha (Mironov 2017, composing additively); converted to (eps, delta) with Balle et al.
    2020, Theorem 21, minimised over the orders."""
    rdp = steps * orders / (2 * sigma**2)
    eps = rdp + np.log((orders - 1) / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    return float(eps.min())


@pytest.mark.parametrize(("sigma", "steps"), [(0.8, 1), (1.0, 10), (2.0, 8), (5.0, 100)])
def test_full_participation_matches_closed_form(sigma, steps):
    from opacus.accountants import RDPAccountant

    ours = epsilon_spent([(sigma, 1.0)] * steps, 1e-5)
    same_orders = closed_form_full_batch(sigma, steps, 1e-5,
                                         np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float))
    assert ours == pytest.approx(same_orders, rel=1e-9)
    # a much finer grid of orders can only do better, and barely
    fine = closed_form_full_batch(sigma, steps, 1e-5, np.linspace(1.001, 300, 300_000))
    assert fine <= ours <= fine * 1.02


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert epsilon_spent([], 1e-5) == 0.0
    eps = [epsilon_spent([(1.0, 0.5)] * n, 1e-5) for n in (1, 2, 5, 10)]
    assert eps == sorted(eps) and len(set(eps)) == 4
    assert epsilon_spent([(2.0, 0.5)] * 5, 1e-5) < epsilon_spent([(1.0, 0.5)] * 5, 1e-5)
    assert epsilon_spent([(1.0, 0.1)] * 5, 1e-5) < epsilon_spent([(1.0, 0.5)] * 5, 1e-5)


@pytest.mark.parametrize(("target", "q", "steps"),
                         [(1.0, 1.0, 10), (8.0, 1.0, 8), (3.0, 0.1, 100), (0.5, 0.01, 1000)])
def test_calibration_reaches_target_and_no_further(target, q, steps):
    z = calibrate_noise_multiplier(target, 1e-5, q, steps)
    spent = epsilon_spent([(z, q)] * steps, 1e-5)
    assert spent <= target
    assert spent > target - 0.05  # opacus searches to 0.01 in epsilon
    assert epsilon_spent([(z * 0.97, q)] * steps, 1e-5) > spent


def test_ledger_records_and_rebuilds_from_history():
    ledger = PrivacyLedger(delta=1e-5)
    history = []
    spent = []
    for rnd, q in enumerate([0.5, 0.5, 0.25], start=1):
        spent.append(ledger.record(1.2, q))
        history.append({"round": rnd, "dp_noise_multiplier": 1.2, "dp_sample_rate": q,
                        "dp_epsilon": spent[-1]})
    history.append({"round": 4, "dp_epsilon": spent[-1]})  # a round that spent nothing
    history.append({"round": 5})  # from before DP: no step
    assert spent == sorted(spent) and spent[0] > 0
    rebuilt = PrivacyLedger.from_history(history, 1e-5)
    assert rebuilt.steps == ledger.steps
    assert rebuilt.epsilon == pytest.approx(spent[-1])
    # local mode: sensitivity 2C, so the accountant sees half the noise multiplier
    local = PrivacyLedger.from_history(history, 1e-5, sensitivity=2.0)
    assert local.epsilon == pytest.approx(
        epsilon_spent([(0.6, 0.5), (0.6, 0.5), (0.6, 0.25)], 1e-5))
    with pytest.raises(ValueError):
        ledger.record(1.0, 0.0)


# ------------------------------------------------------------------ clipping and noise
vectors = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=40)


def as_update(a: list[float], b: list[float]) -> dict[str, torch.Tensor]:
    return {"a.lora_A.weight": torch.tensor(a), "b.lora_A.weight": torch.tensor(b)}


@settings(max_examples=200, deadline=None)
@given(vectors, vectors, st.floats(1e-3, 1e3))
def test_clipped_norm_is_bounded_and_direction_kept(a, b, clip):
    update = as_update(a, b)
    clipped, norm = clip_update(update, clip)
    assert norm == pytest.approx(l2_norm(update))
    assert l2_norm(clipped) <= clip * (1 + 1e-6)
    if norm <= clip:  # short updates pass through untouched
        for n in update:
            assert torch.equal(clipped[n], update[n])
    else:  # one common factor: the direction of the whole update is kept
        scale = clip / norm
        for n in update:
            torch.testing.assert_close(clipped[n], update[n] * scale, rtol=1e-5,
                                       atol=1e-6 * clip)
        assert l2_norm(clipped) == pytest.approx(clip, rel=1e-5)


def test_clip_refuses_non_finite_updates_and_bad_norms():
    with pytest.raises(ValueError):
        clip_update({"a": torch.tensor([1.0, float("nan")])}, 1.0)
    with pytest.raises(ValueError):
        clip_update({"a": torch.tensor([1.0])}, 0.0)


def test_gaussian_noise_has_the_asked_std_and_shapes():
    gen = torch.Generator().manual_seed(0)
    like = {"a": torch.zeros(200, 100), "b": torch.zeros(50)}
    noise = gaussian_noise_like(like, 0.3, gen)
    assert {n: t.shape for n, t in noise.items()} == {n: t.shape for n, t in like.items()}
    assert float(noise["a"].std()) == pytest.approx(0.3, rel=0.03)
    assert abs(float(noise["a"].mean())) < 0.01


def test_noisy_mean_adds_noise_once_to_the_sum():
    gen = torch.Generator().manual_seed(1)
    sums = {"a": torch.full((100, 100), 8.0, dtype=torch.float64)}
    mean = noisy_mean(sums, 4, std=2.0, generator=gen)
    # sum/4 = 2; noise std 2 on the sum is std 0.5 on the mean
    assert float(mean["a"].mean()) == pytest.approx(2.0, abs=0.02)
    assert float(mean["a"].std()) == pytest.approx(0.5, rel=0.03)
    with pytest.raises(ValueError):
        noisy_mean(sums, 0, 1.0, gen)


def test_secure_generators_are_not_reproducible():
    like = {"a": torch.zeros(64)}
    first = gaussian_noise_like(like, 1.0, secure_generator())["a"]
    second = gaussian_noise_like(like, 1.0, secure_generator())["a"]
    assert not torch.equal(first, second)


# ------------------------------------------------------------------ configuration
def dp_config(sampling: dict | None = None, **dp) -> FederationConfig:
    section = {"enable": True, **dp}
    return FederationConfig.model_validate(
        {"rounds": 8, "fedsa_lora": {"privacy": {"differential_privacy": section}},
         "sampling": sampling or {}})


def test_privatize_clips_in_central_mode_and_noises_in_local_mode():
    delta = {"x.lora_A.weight": torch.full((4, 8), 1.0)}  # norm sqrt(32)
    assert privatize_update(delta, None) == (delta, None)
    central = dp_plan(dp_config(clip_norm=0.5, noise_multiplier=1.0))
    out, norm = privatize_update(delta, central)
    assert norm == pytest.approx(math.sqrt(32))
    assert l2_norm(out) == pytest.approx(0.5, rel=1e-6)
    local = dp_plan(dp_config(mode="local", clip_norm=0.5, noise_multiplier=4.0))
    gen = torch.Generator().manual_seed(0)
    big = {"x.lora_A.weight": torch.zeros(300, 300)}
    noised, _ = privatize_update(big, local, gen)
    assert float(noised["x.lora_A.weight"].std()) == pytest.approx(2.0, rel=0.03)


def test_plan_uses_the_configured_noise_multiplier_or_calibrates():
    fixed = dp_plan(dp_config(noise_multiplier=1.3, clip_norm=0.2))
    assert fixed is not None and not fixed.calibrated
    assert fixed.noise_multiplier == 1.3 and fixed.noise_std == pytest.approx(0.26)
    central = dp_plan(dp_config(epsilon=4.0))
    assert central is not None and central.calibrated and central.sample_rate == 1.0
    assert central.noise_multiplier == calibrate_noise_multiplier(4.0, 1e-5, 1.0, 8)
    assert epsilon_spent([(central.noise_multiplier, 1.0)] * 8, 1e-5) <= 4.0
    # local: the same budget needs twice the noise (sensitivity 2C), never subsampled
    local = dp_plan(dp_config(mode="local", epsilon=4.0, population=100,
                              sampling={"clients_per_round": 10}))
    assert local is not None and local.sample_rate == 1.0
    assert local.noise_multiplier == pytest.approx(2 * central.noise_multiplier)
    assert local.ledger([{"dp_noise_multiplier": local.noise_multiplier,
                          "dp_sample_rate": 1.0}] * 8).epsilon <= 4.0
    assert dp_plan(FederationConfig()) is None


def test_planned_sample_rate_from_population_and_clients_per_round():
    assert planned_sample_rate(dp_config()) == 1.0
    assert planned_sample_rate(dp_config(population=30)) == 1.0  # everyone every round
    assert planned_sample_rate(dp_config(population=30, sampling={"clients_per_round": 3})
                               ) == pytest.approx(0.1)
    over = FederationConfig.model_validate({
        "fedsa_lora": {"privacy": {"differential_privacy": {"enable": True,
                                                             "population": 30}}},
        "sampling": {"clients_per_round": 3}, "round_policy": {"over_select": 1.5}})
    assert planned_sample_rate(over) == pytest.approx(5 / 30)  # ceil(3 * 1.5) asked


# ------------------------------------------------------------------ central adjacency
def opacus_epsilon(noise_multiplier: float, sample_rate: float, steps: int,
                   delta: float) -> float:
    """opacus's RDP accountant called directly: the independent check of the ledger."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta=delta))


def test_expected_updates_is_the_announced_count():
    assert expected_updates(6, None, 1.0) == 6
    assert expected_updates(6, 3, 1.0) == 6  # everyone selected is expected
    assert expected_updates(5, 3, 1.5) == 3  # over-selection closes at clients_per_round
    assert expected_updates(2, 3, 1.5) == 2  # fewer online than asked for
    assert expected_updates(9, None, 1.5) == 6  # all online selected; closes at 9 / 1.5
    with pytest.raises(ValueError):
        expected_updates(0, None, 1.0)


@pytest.mark.parametrize(("sampling", "population"), [({}, None),
                                                     ({"clients_per_round": 3}, 6)])
def test_quickstart_epsilon_matches_opacus_for_both_adjacencies(sampling, population):
    """Quickstart size (8 rounds, epsilon 8): the central ledger accounts the configured z
    (add/remove, fixed denominator) and its replace-one figure the accountant at z / 2,
    each equal to opacus called directly with that effective noise multiplier."""
    plan = dp_plan(dp_config(sampling, epsilon=8.0, population=population))
    assert plan is not None and plan.mode == "central"
    q = plan.sample_rate
    assert q == (1.0 if population is None else 0.5)
    ledger = plan.ledger([{"dp_noise_multiplier": plan.noise_multiplier,
                           "dp_sample_rate": q}] * 8)
    assert ledger.epsilon == pytest.approx(opacus_epsilon(plan.noise_multiplier, q, 8, 1e-5))
    assert ledger.epsilon <= 8.0
    assert ledger.replace_one_epsilon == pytest.approx(
        opacus_epsilon(plan.noise_multiplier / 2, q, 8, 1e-5))
    if population is None:  # the figures the issue reproduced: z 1.80, replace-one 18.8
        assert plan.noise_multiplier == pytest.approx(1.804, abs=1e-3)
        assert ledger.replace_one_epsilon == pytest.approx(18.84, abs=0.01)


def test_local_ledger_is_already_replace_one():
    plan = dp_plan(dp_config(mode="local", epsilon=8.0))
    assert plan is not None
    ledger = plan.ledger([{"dp_noise_multiplier": plan.noise_multiplier,
                           "dp_sample_rate": 1.0}] * 8)
    assert ledger.epsilon == pytest.approx(opacus_epsilon(plan.noise_multiplier / 2, 1.0, 8,
                                                          1e-5))
    assert ledger.replace_one_epsilon == pytest.approx(ledger.epsilon)


def test_plan_denominator_follows_the_round_policy():
    over = FederationConfig.model_validate({
        "fedsa_lora": {"privacy": {"differential_privacy": {"enable": True,
                                                             "noise_multiplier": 1.0}}},
        "sampling": {"clients_per_round": 4}, "round_policy": {"over_select": 1.5}})
    plan = dp_plan(over)
    assert plan is not None and plan.denominator(6) == 4
    plain = dp_plan(dp_config(noise_multiplier=1.0))
    assert plain is not None and plain.denominator(6) == 6
