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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from fedsa_common.tensors import Tensors
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
    """Coordinate-wise median of the updates (unweighted)."""
    out = {}
    for name, stack in _stacked(deltas).items():
        s = torch.sort(stack, dim=0).values
        n = s.shape[0]
        mid = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
        out[name] = mid.to(torch.float32)
    return out


def trimmed_mean(deltas: Sequence[Tensors], trim_fraction: float) -> dict[str, torch.Tensor]:
    """Coordinate-wise trimmed mean of the updates (unweighted); see ``trim_count``."""
    stacks = _stacked(deltas)
    k = trim_count(len(deltas), trim_fraction)
    out = {}
    for name, stack in stacks.items():
        s = torch.sort(stack, dim=0).values if k else stack
        kept = s[k : s.shape[0] - k]
        out[name] = kept.mean(dim=0).to(torch.float32)
    return out


def robust_aggregate(deltas: Sequence[Tensors], rule: RobustRule, trim_fraction: float = 0.0
                     ) -> dict[str, torch.Tensor]:
    """The robust estimate of the mean update under ``rule``."""
    if rule == "median":
        return coordinate_median(deltas)
    if rule == "trimmed_mean":
        return trimmed_mean(deltas, trim_fraction)
    raise ValueError(f"unknown robust rule {rule!r}")
