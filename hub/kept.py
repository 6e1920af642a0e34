"""The individual updates a regional hub keeps for a robust aggregation rule (no I/O).

A running sum is enough for the mean, but a median or trimmed mean needs every update of
the round, so under those rules the region holds one decoded delta per accepted device
(memory and persisted state grow with the region's cohort: about ``n x`` the shared
parameters, e.g. 10 devices x 37k fp32 values for MiniLM's A matrices = 1.5 MB).  At the
flush the kept updates become the partial's sums as ``robust_estimate * weight``, so the
cloud's weighted merge of regional partials is unchanged: it averages the regions' robust
estimates weighted by each region's total sample count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsa_common.config import AggregationSection
from hub.robust import robust_aggregate


@dataclass
class KeptUpdates:
    """Per base version, the accepted deltas in the order they were accepted."""

    groups: dict[int, list[dict[str, torch.Tensor]]] = field(default_factory=dict)

    def keep(self, base_version: int, delta: Mapping[str, torch.Tensor]) -> None:
        self.groups.setdefault(base_version, []).append(
            {n: t.to(torch.float32) for n, t in delta.items()})

    def pop_sums(self, base_version: int, weight: float, aggregation: AggregationSection
                 ) -> dict[str, torch.Tensor] | None:
        """The partial sums (robust estimate times ``weight``) of one base version, or None
        when nothing was kept for it (the mean rule, or no updates)."""
        deltas = self.groups.pop(base_version, [])
        if not deltas or aggregation.rule == "mean":
            return None
        estimate = robust_aggregate(deltas, aggregation.rule, aggregation.trim_fraction)
        return {n: (t.to(torch.float64) * weight).to(torch.float32)
                for n, t in estimate.items()}

    def to_state(self) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
        meta = {str(bv): len(ds) for bv, ds in self.groups.items()}
        tensors = {f"kept/{bv}/{i}/{n}": t for bv, ds in self.groups.items()
                   for i, d in enumerate(ds) for n, t in d.items()}
        return meta, tensors

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                   names: list[str]) -> KeptUpdates:
        kept = cls()
        for bv_s, count in meta.items():
            bv = int(bv_s)
            kept.groups[bv] = [{n: tensors[f"kept/{bv}/{i}/{n}"].to(torch.float32)
                                for n in names} for i in range(int(count))]
        return kept
