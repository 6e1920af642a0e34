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
    coordinate_median,
    robust_aggregate,
    trim_count,
    trimmed_mean,
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
