"""Weighted aggregation of shared-parameter deltas, flat or hierarchical.

A regional hub keeps one running weighted sum (memory of one model, not one per client) and
forwards it with its total weight; the cloud adds the regional sums and divides once.
Because the sum is associative this equals flat FedAvg over the same updates, which is what
lets regions pre-aggregate without changing the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from fedsa_common.privacy.dp import l2_norm
from fedsa_common.wire.codecs.layout import Layout, flat_of
from fedsa_common.wire.tensors import Tensors

__all__ = ["RunningSum", "apply_server_update", "fedavg", "l2_norm"]



@dataclass
class RunningSum:
    """``sum_i w_i * delta_i``, ``sum_i w_i`` and the number of updates folded in.

    The sums live in one flat float64 vector (``sums`` are views of it), so folding in an
    update is one addition however many tensors it has: a regional hub does this for every
    device of every round.
    """

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self._layout = Layout.of({n: tuple(t.shape) for n, t in self.sums.items()})
        self._flat = self._layout.flatten(self.sums, torch.float64)
        self.sums = self._layout.split(self._flat)

    @classmethod
    def zeros(cls, shapes: Mapping[str, tuple[int, ...]]) -> RunningSum:
        return cls({n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()})

    def add(self, delta: Tensors, weight: float) -> None:
        if weight <= 0 or not math.isfinite(weight):
            raise ValueError(f"weight must be positive and finite, got {weight}")
        if set(delta) != set(self.sums):
            raise ValueError("delta names differ from the running sum's names")
        flat = flat_of(delta, self._layout)  # a decoded update needs no concatenation
        self._flat.add_(self._layout.flatten(delta) if flat is None else flat, alpha=weight)
        self.weight += weight
        self.count += 1

    def merge(self, sums: Tensors, weight: float, count: int) -> None:
        """Fold in another running sum (a regional partial)."""
        if set(sums) != set(self.sums):
            raise ValueError("partial names differ from the running sum's names")
        self._flat.add_(self._layout.flatten(sums, torch.float64))
        self.weight += weight
        self.count += count

    def mean(self) -> dict[str, torch.Tensor]:
        if self.weight <= 0:
            return self._layout.split(self._layout.zeros())
        return self._layout.split((self._flat / self.weight).to(torch.float32))

    def as_float32(self) -> dict[str, torch.Tensor]:
        return self._layout.split(self._flat.to(torch.float32))


def fedavg(updates: Iterable[tuple[Tensors, float]]) -> dict[str, torch.Tensor]:
    """Flat weighted mean of deltas: the reference that hierarchical aggregation must equal."""
    items = list(updates)
    if not items:
        raise ValueError("no updates")
    total = sum(w for _, w in items)
    names = items[0][0].keys()
    return {
        n: (sum(d[n].to(torch.float64) * w for d, w in items) / total).to(torch.float32)
        for n in names
    }


def apply_server_update(
    global_params: Tensors, mean_delta: Tensors, server_lr: float = 1.0
) -> dict[str, torch.Tensor]:
    return {n: global_params[n] + server_lr * mean_delta[n] for n in global_params}
