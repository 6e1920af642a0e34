"""Robust aggregation rules for deployments without secure aggregation (pure math, no I/O).

Plain (weighted) averaging lets one device move the global model arbitrarily far: the mean
of n updates follows any single one of them.  The rules here bound that influence:

- ``clip_to_norm``: norm bounding.  An update longer than the bound is scaled down to it
  (not refused), so an honest device with an unusually large step still contributes its
  direction while a scaled attack loses its amplification.
- ``coordinate_median``: per coordinate, the median of the n values (the mean of the two
  middle values when n is even).  With f < n/2 arbitrary outliers every coordinate of the
  result lies within the range of the honest values.
- ``trimmed_mean``: per coordinate, drop the ``floor(trim_fraction * n)`` largest and as
  many smallest values and average the rest.  With f <= trim_fraction * n outliers the
  result lies within the honest range; ``trim_fraction`` 0 is the plain mean.

Both rules are *unweighted* over updates, as in their standard definitions (Yin et al.,
"Byzantine-robust distributed learning", ICML 2018): a device declares its own sample
count, so weighting by it would let one attacker claiming many samples outvote the rest.
They take lists of tensor dicts with equal names and shapes and return float32 tensors;
the arithmetic runs in float64 so the result does not depend on the order of the updates.

In the hierarchy the cloud combines the regions' estimates with the same rule,
``combine_estimates``: each region's estimate counts once per update it stands for (its
update count, never a declared sample count), i.e. the rule applied to the multiset in
which every estimate is repeated ``count`` times.  A median of regional medians is not the
median of all updates; what it guarantees is in ``combine_estimates``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from fedsa_common.wire.tensors import Tensors
from hub.aggregation import l2_norm

RobustRule = Literal["median", "trimmed_mean"]


def clip_to_norm(delta: Tensors, bound: float) -> dict[str, torch.Tensor]:
    """``delta`` scaled down to L2 norm ``bound`` if it is longer (the norm over all tensors
    together, so the update's direction is kept); shorter updates come back unchanged."""
    if not (bound > 0 and math.isfinite(bound)):
        raise ValueError(f"bound must be positive and finite, got {bound}")
    norm = l2_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("delta is not finite")
    if norm <= bound:
        return dict(delta)
    scale = bound / norm
    return {n: (t.to(torch.float64) * scale).to(t.dtype) for n, t in delta.items()}


def _stacked(deltas: Sequence[Tensors]) -> dict[str, torch.Tensor]:
    """One float64 tensor per name with the updates along a new first dimension."""
    if not deltas:
        raise ValueError("no updates")
    names = set(deltas[0])
    for d in deltas[1:]:
        if set(d) != names:
            raise ValueError("updates have different tensor names")
    out = {}
    for name in sorted(names):
        shapes = {tuple(d[name].shape) for d in deltas}
        if len(shapes) != 1:
            raise ValueError(f"{name}: updates have different shapes {sorted(shapes)}")
        out[name] = torch.stack([d[name].to(torch.float64) for d in deltas])
    return out


def trim_count(n: int, trim_fraction: float) -> int:
    """How many values a trimmed mean drops at *each* end: ``floor(trim_fraction * n)``,
    never so many that nothing is left."""
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    k = math.floor(trim_fraction * n + 1e-9)  # 0.29 * 100 is 28.999...; it means 29
    return min(k, (n - 1) // 2)


def coordinate_median(deltas: Sequence[Tensors]) -> dict[str, torch.Tensor]:
    """Coordinate-wise median of the updates (unweighted): ``weighted_median`` with unit
    counts."""
    return weighted_median(deltas, [1] * len(deltas))


def trimmed_mean(deltas: Sequence[Tensors], trim_fraction: float) -> dict[str, torch.Tensor]:
    """Coordinate-wise trimmed mean of the updates (unweighted; see ``trim_count``):
    ``weighted_trimmed_mean`` with unit counts."""
    return weighted_trimmed_mean(deltas, [1] * len(deltas), trim_fraction)


def robust_aggregate(deltas: Sequence[Tensors], rule: RobustRule, trim_fraction: float = 0.0
                     ) -> dict[str, torch.Tensor]:
    """The robust estimate of the mean update under ``rule``."""
    if rule == "median":
        return coordinate_median(deltas)
    if rule == "trimmed_mean":
        return trimmed_mean(deltas, trim_fraction)
    raise ValueError(f"unknown robust rule {rule!r}")


def _sorted_with_counts(estimates: Sequence[Tensors], counts: Sequence[int]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Per name, the estimates sorted along the first dimension, the cumulative counts in
    that order (same shape), and the total count."""
    if len(counts) != len(estimates):
        raise ValueError(f"{len(estimates)} estimates but {len(counts)} counts")
    if any(int(c) != c or c < 1 for c in counts):
        raise ValueError(f"counts must be positive integers, got {list(counts)}")
    weights = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    values, cumulative = {}, {}
    for name, stack in _stacked(estimates).items():
        order = torch.argsort(stack, dim=0, stable=True)
        values[name] = torch.gather(stack, 0, order)
        cumulative[name] = weights[order].cumsum(dim=0)
    return values, cumulative, int(sum(counts))


def weighted_median(estimates: Sequence[Tensors], counts: Sequence[int]
                    ) -> dict[str, torch.Tensor]:
    """Per coordinate, the median of the multiset holding each estimate ``count`` times
    (the mean of its two middle values when the total is even): unit counts give
    ``coordinate_median``."""
    values, cumulative, total = _sorted_with_counts(estimates, counts)
    out = {}
    for name, s in values.items():
        cum = cumulative[name]
        # the (1-based) positions total/2 and total/2 + 1 of the multiset (one for odd totals)
        low = (cum < (total + 1) // 2).sum(dim=0, keepdim=True)
        high = (cum < total // 2 + 1).sum(dim=0, keepdim=True)
        mid = (torch.gather(s, 0, low) + torch.gather(s, 0, high)) / 2
        out[name] = mid.squeeze(0).to(torch.float32)
    return out


def weighted_trimmed_mean(estimates: Sequence[Tensors], counts: Sequence[int],
                          trim_fraction: float) -> dict[str, torch.Tensor]:
    """Per coordinate, the trimmed mean of the multiset holding each estimate ``count``
    times: ``trim_count(total, trim_fraction)`` values dropped at each end (an estimate
    can lose part of its count), the rest averaged.  Unit counts give ``trimmed_mean``."""
    values, cumulative, total = _sorted_with_counts(estimates, counts)
    k = trim_count(total, trim_fraction)
    out = {}
    for name, s in values.items():
        cum = cumulative[name]
        before = torch.cat([torch.zeros_like(cum[:1]), cum[:-1]])
        kept = (torch.clamp(cum, max=total - k) - torch.clamp(before, min=k)).clamp(min=0)
        out[name] = ((kept * s).sum(dim=0) / (total - 2 * k)).to(torch.float32)
    return out


def combine_estimates(estimates: Sequence[Tensors], counts: Sequence[int], rule: RobustRule,
                      trim_fraction: float = 0.0) -> dict[str, torch.Tensor]:
    """The cloud's combination of the regions' robust estimates under ``rule``, each
    counted once per update it stands for.

    What it guarantees, per coordinate.  Call a region *held* when its attackers are
    within its own rule's tolerance (median: fewer than half of its updates; trimmed mean:
    at most ``floor(trim_fraction x n)`` of its n), so its estimate lies within the range
    of its honest updates' values.  If the regions that are not held hold together fewer
    than half of the round's updates (median), or at most ``trim_count(N,
    trim_fraction)`` of its N updates (trimmed mean), the result lies within the range of
    the held regions' estimates, hence within the range of the honest updates' values,
    whatever the attackers send or declare.  It is not the median (or trimmed mean) of all
    updates: e.g. attackers holding a bare majority in regions with 40% of the updates
    make those regions' estimates theirs, and then only the other 60% bound the result.
    """
    if rule == "median":
        return weighted_median(estimates, counts)
    if rule == "trimmed_mean":
        return weighted_trimmed_mean(estimates, counts, trim_fraction)
    raise ValueError(f"unknown robust rule {rule!r}")
