"""Similarity-weighted aggregation: updates that agree with the federation count more.

In the spirit of attention-weighted aggregation, an update's weight is its sample count
times a factor in [floor, 1] from its cosine agreement with a reference direction.  The
reference is the federation's last applied global change of the shared parameters: the
consensus of the other devices, known to every regional hub from two consecutive
announcements, so each update can be weighted the moment it arrives and the hierarchy (one
running sum per region) is unchanged.

Bounded so no device dominates: the factor never exceeds 1, so no device counts for more
than its sample count, and never falls below ``floor``, so a dissenting device still counts
for at least ``floor`` of it (weights of any two devices with equal data differ by at most
1/floor).  Without a reference (the first rounds) every factor is 1: plain FedAvg.

Pure functions over tensors.
"""

from __future__ import annotations

import math

import torch

from fedsa_common.wire.tensors import Tensors


def cosine(a: Tensors, b: Tensors) -> float | None:
    """Cosine similarity of two tensor sets over their common names (None if either is 0)."""
    dot = na = nb = 0.0
    for name, x in a.items():
        y = b.get(name)
        if y is None:
            continue
        x64, y64 = x.to(torch.float64).flatten(), y.to(torch.float64).flatten()
        dot += float(x64 @ y64)
        na += float(x64 @ x64)
        nb += float(y64 @ y64)
    if na <= 0 or nb <= 0 or not math.isfinite(dot):
        return None
    return dot / math.sqrt(na * nb)


def agreement_factor(delta: Tensors, reference: Tensors | None, floor: float) -> float:
    """``clip((1 + cos) / 2, floor, 1)``: 1 for an update along the consensus, ``floor`` for
    one against it, 1 when there is no reference yet."""
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    if reference is None:
        return 1.0
    cos = cosine(delta, reference)
    if cos is None:
        return 1.0
    return min(1.0, max(floor, (1.0 + cos) / 2.0))


def reference_direction(previous: Tensors | None, current: Tensors
                        ) -> dict[str, torch.Tensor] | None:
    """The last global change (current minus previous global), None without a previous."""
    if previous is None or set(previous) != set(current):
        return None
    return {n: current[n].to(torch.float32) - previous[n].to(torch.float32) for n in current}
