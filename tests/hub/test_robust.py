"""Robust aggregation rules: identical updates pass unchanged, a minority of arbitrary
outliers cannot push any coordinate outside the honest values' range, a zero trim is the
plain mean, and norm bounding scales long updates down instead of refusing them."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.aggregation import fedavg, l2_norm
from hub.robust import (
    clip_to_norm,
    combine_estimates,
    coordinate_median,
    robust_aggregate,
    trim_count,
    trimmed_mean,
    weighted_median,
    weighted_trimmed_mean,
)

SHAPES = {"a": (3, 4), "b": (5,)}


def deltas(seed: int, n: int, scale: float = 1.0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g) * scale for k, s in SHAPES.items()}
            for _ in range(n)]


def outliers(seed: int, f: int) -> list[dict[str, torch.Tensor]]:
    """Arbitrary, mostly huge values of either sign, as a scaling or sign-flipping attacker
    would send."""
    g = torch.Generator().manual_seed(seed + 1)
    return [{k: torch.randn(s, generator=g) * 10.0 ** float(torch.randint(0, 7, (1,),
                                                                          generator=g))
             for k, s in SHAPES.items()} for _ in range(f)]


def assert_within_honest_range(result, honest):
    for name in SHAPES:
        stack = torch.stack([h[name] for h in honest])
        lo, hi = stack.min(dim=0).values, stack.max(dim=0).values
        assert bool((result[name] >= lo).all()) and bool((result[name] <= hi).all()), name


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), seed=st.integers(0, 2**31 - 1),
       trim=st.floats(0.0, 0.49))
def test_identical_updates_come_back_unchanged(n, seed, trim):
    [one] = deltas(seed, 1)
    same = [one] * n
    for out in (coordinate_median(same), trimmed_mean(same, trim)):
        for name in SHAPES:
            torch.testing.assert_close(out[name], one[name])


@settings(max_examples=60, deadline=None)
@given(honest_n=st.integers(1, 8), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_median_stays_within_honest_range(honest_n, data, seed):
    f = data.draw(st.integers(0, honest_n - 1))  # f < n/2  <=>  f < honest count
    honest = deltas(seed, honest_n)
    mixed = honest + outliers(seed, f)
    order = data.draw(st.permutations(range(len(mixed))))
    assert_within_honest_range(coordinate_median([mixed[i] for i in order]), honest)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), trim=st.floats(0.0, 0.49), data=st.data(),
       seed=st.integers(0, 2**31 - 1))
def test_trimmed_mean_stays_within_honest_range(n, trim, data, seed):
    f = data.draw(st.integers(0, math.floor(trim * n + 1e-9)))  # f <= trim * n
    honest = deltas(seed, n - f)
    mixed = honest + outliers(seed, f)
    order = data.draw(st.permutations(range(n)))
    assert_within_honest_range(trimmed_mean([mixed[i] for i in order], trim), honest)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_zero_trim_is_the_unweighted_mean(n, seed):
    ds = deltas(seed, n)
    out = trimmed_mean(ds, 0.0)
    ref = fedavg([(d, 1.0) for d in ds])
    for name in SHAPES:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-5, atol=1e-6)


def test_plain_mean_follows_one_attacker_robust_rules_do_not():
    honest = [{"a": torch.full((2,), v)} for v in (1.0, 1.1, 0.9, 1.0)]
    attacker = {"a": torch.full((2,), -100.0)}
    mean = fedavg([(d, 1.0) for d in [*honest, attacker]])
    assert float(mean["a"][0]) < -15
    assert float(coordinate_median([*honest, attacker])["a"][0]) == pytest.approx(1.0)
    # the attacker and the largest honest value are trimmed: mean of 0.9, 1.0, 1.0
    assert float(trimmed_mean([*honest, attacker], 0.2)["a"][0]) == pytest.approx(2.9 / 3)


def test_even_count_median_averages_the_middle_pair():
    out = coordinate_median([{"a": torch.tensor([v])} for v in (4.0, 1.0, 3.0, 2.0)])
    assert float(out["a"][0]) == 2.5


@pytest.mark.parametrize(("n", "trim", "k"), [(10, 0.2, 2), (5, 0.2, 1), (4, 0.2, 0),
                                              (100, 0.29, 29), (2, 0.49, 0), (7, 0.0, 0)])
def test_trim_count(n, trim, k):
    assert trim_count(n, trim) == k


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no updates"):
        coordinate_median([])
    with pytest.raises(ValueError, match="names"):
        trimmed_mean([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}], 0.1)
    with pytest.raises(ValueError, match="shapes"):
        coordinate_median([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}])
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(deltas(0, 3), 0.5)
    with pytest.raises(ValueError, match="rule"):
        robust_aggregate(deltas(0, 3), "mean")  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100.0),
       bound=st.floats(0.1, 50.0))
def test_clip_scales_down_to_the_bound_and_keeps_direction(seed, scale, bound):
    [d] = deltas(seed, 1, scale)
    out = clip_to_norm(d, bound)
    norm = l2_norm(d)
    assert l2_norm(out) == pytest.approx(min(norm, bound), rel=1e-5)
    if norm <= bound:
        assert all(torch.equal(out[k], d[k]) for k in SHAPES)
    else:
        for k in SHAPES:
            torch.testing.assert_close(out[k], d[k] * (bound / norm), rtol=1e-5, atol=1e-7)


def test_clip_refuses_a_bad_bound():
    with pytest.raises(ValueError):
        clip_to_norm(deltas(0, 1)[0], 0.0)


# ---------------------------------------------------------------- the cloud's combination
def close(a, b):
    for name in SHAPES:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 7), trim=st.floats(0.0, 0.49), seed=st.integers(0, 2**31 - 1))
def test_unit_counts_are_the_unweighted_rules(n, trim, seed):
    ds = deltas(seed, n)
    close(weighted_median(ds, [1] * n), coordinate_median(ds))
    close(weighted_trimmed_mean(ds, [1] * n, trim), trimmed_mean(ds, trim))


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 6), min_size=1, max_size=5), trim=st.floats(0.0, 0.49),
       seed=st.integers(0, 2**31 - 1))
def test_counts_mean_each_estimate_stands_for_that_many_updates(counts, trim, seed):
    ds = deltas(seed, len(counts))
    repeated = [d for d, c in zip(ds, counts, strict=True) for _ in range(c)]
    close(combine_estimates(ds, counts, "median"), coordinate_median(repeated))
    close(combine_estimates(ds, counts, "trimmed_mean", trim), trimmed_mean(repeated, trim))


@settings(max_examples=60, deadline=None)
@given(held=st.lists(st.integers(1, 9), min_size=1, max_size=5), data=st.data(),
       trim=st.floats(0.0, 0.49), seed=st.integers(0, 2**31 - 1))
def test_regions_attackers_hold_are_outvoted_within_the_documented_bound(held, data, trim,
                                                                         seed):
    """combine_estimates' guarantee: the regions not held (their estimates arbitrary) hold
    fewer than half of the updates (median) or at most trim_count of them (trimmed mean),
    so every coordinate stays within the held regions' estimates."""
    total_held = sum(held)
    honest = deltas(seed, len(held))
    for rule in ("median", "trimmed_mean"):
        # the most updates lost regions may hold: N - held < N/2, or N - held <= trim_count(N)
        lost = [data.draw(st.integers(1, 9)) for _ in range(data.draw(st.integers(0, 3)))]
        while lost and not (sum(lost) < total_held if rule == "median"
                            else sum(lost) <= trim_count(total_held + sum(lost), trim)):
            lost.pop()
        estimates = honest + outliers(seed, len(lost))
        out = combine_estimates(estimates, [*held, *lost], rule, trim)  # type: ignore[arg-type]
        assert_within_honest_range(out, honest)


def test_the_issues_two_attackers_in_a_three_device_region_are_outvoted():
    """Issue 15, point 6, at the cloud: 12 updates in regions of 5, 4 and 3; the 3-device
    region's median is the attackers' 5.0; combined by update count it is outvoted."""
    north, south, east = ({"a": torch.full((3, 4), v), "b": torch.full((5,), v)}
                          for v in (0.01, -0.02, 5.0))
    out = combine_estimates([north, south, east], [5, 4, 3], "median")
    assert float(out["a"].max()) <= 0.01 and float(out["a"].min()) >= -0.02
    # the weighted mean of the same estimates still follows the attackers a quarter of the way
    mean = fedavg([(north, 5.0), (south, 4.0), (east, 3.0)])
    assert float(mean["a"][0, 0]) > 1.0


def test_combination_refuses_bad_counts():
    with pytest.raises(ValueError, match="counts"):
        combine_estimates(deltas(0, 2), [1], "median")
    with pytest.raises(ValueError, match="counts"):
        combine_estimates(deltas(0, 2), [1, 0], "median")
    with pytest.raises(ValueError, match="rule"):
        combine_estimates(deltas(0, 2), [1, 1], "mean")  # type: ignore[arg-type]
