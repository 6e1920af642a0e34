"""A regional hub's similarity weighting (``round_policy.aggregation.weighting: similarity``).

The factor math is in ``hub/weighting.py``; this keeps what it needs across rounds: the
previous announcement's global tensors and the last global change they imply (the
reference direction).  A round whose announcement did not change the version (its
predecessor was not applied) keeps the previous reference; a change of the shared set, a
first round, or a hub restarted without this state has none, and every factor is then 1
(plain sample weights) until the next announcement.  Under downlink deltas an
announcement carries the change itself (``announce_delta``): it is the reference direction,
even right after a restart.  Pure: an admission step of the intake (hub/aggregator.py),
which persists it under its ``key``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from fedsa_common.wire.tensors import Tensors
from hub.aggregator import Update
from hub.weighting import agreement_factor, reference_direction


@dataclass
class SimilarityWeighting:
    floor: float
    version: int | None = None  # of the last announcement seen
    previous: dict[str, torch.Tensor] | None = None  # its global tensors
    reference: dict[str, torch.Tensor] | None = None  # the last global change
    key: ClassVar[str] = "similarity"

    def announce(self, version: int, global_tensors: Tensors) -> None:
        """Take a round's announced global tensors."""
        current = {n: t.to(torch.float32).clone() for n, t in global_tensors.items()}
        if self.version is None or version != self.version:
            self.reference = reference_direction(self.previous, current)
        elif self.reference is not None and set(self.reference) != set(current):
            self.reference = None
        self.version, self.previous = version, current

    def announce_delta(self, version: int, base_version: int, delta: Tensors | None) -> None:
        """Take a round's announced change ``base_version`` -> ``version`` (downlink deltas;
        None when it did not decode): the new reference direction.  The previous global is
        followed while it is known at ``base_version``."""
        if self.version is not None and version == self.version:  # re-announced, unchanged
            if self.reference is not None and set(self.reference) != set(delta or {}):
                self.reference = None
            return
        step = None if delta is None else {n: t.to(torch.float32).clone()
                                           for n, t in delta.items()}
        if (step is not None and self.previous is not None and self.version == base_version
                and set(self.previous) == set(step)):
            self.previous = {n: self.previous[n] + step[n] for n in step}
        else:
            self.previous = None
        self.version, self.reference = version, step

    def factor(self, delta: Tensors) -> float:
        """The update's weight multiplier in [floor, 1] (1 without a reference)."""
        return agreement_factor(delta, self.reference, self.floor)

    def admit(self, update: Update) -> Update:
        """The update weighted by its sample count times its factor."""
        factor = self.factor(update.delta)
        return replace(update, weight=update.weight * factor, factor=factor)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {"floor": self.floor, "version": self.version,
                "previous": self.previous is not None, "reference": self.reference is not None}
        tensors = {f"similarity/previous/{n}": t for n, t in (self.previous or {}).items()}
        tensors.update({f"similarity/reference/{n}": t
                        for n, t in (self.reference or {}).items()})
        return meta, tensors

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Tensors) -> SimilarityWeighting:
        def part(kind: str) -> dict[str, torch.Tensor] | None:
            if not meta.get(kind):
                return None
            prefix = f"similarity/{kind}/"
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        version = meta.get("version")
        return cls(float(meta["floor"]), None if version is None else int(version),
                   part("previous"), part("reference"))


def similarity_for(previous: SimilarityWeighting | None, weighting: str, floor: float
                   ) -> SimilarityWeighting | None:
    """The weighting state for a newly announced round's policy: kept across rounds while
    the policy stays ``similarity`` with the same floor, dropped otherwise."""
    if weighting != "similarity":
        return None
    if previous is not None and previous.floor == floor:
        return previous
    return SimilarityWeighting(floor)

