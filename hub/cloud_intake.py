"""The cloud hub's intake of regional partials for the round in flight (pure, no I/O).

Why apart from the hub: the cloud's rules for a partial are the counterpart of a region's
for an update (``hub/intake.py``) and as pure: which partials count once, which are
refused by name (future, forged counts and weights, shapes, non-finite sums), and which
are acknowledged but dropped by the round policy (late, stale); a partial built on an
older global version is weighted by FedBuff's ``1/sqrt(1+staleness)``.  Accepted
partials are merged into one running sum (``hub.aggregation.RunningSum``: the regional
aggregates, ``hub/aggregator.py``, are sums, so the merge is the cloud's aggregation).
Under a robust rule (median, trimmed mean) the intake also keeps each partial's estimate
(``sums / weight``) with its update count, and the round's update is their robust
combination (``mean``, ``hub.robust.combine_estimates``), not the weighted mean: a mean of
regional estimates follows any region its attackers control, weighted by whatever that
region forwards.  ``CloudHub.on_partial`` only decodes, hands the partial to ``accept`` and
queues the acknowledgement it returns (a negative one when ``accept`` refuses); the hub
persists the intake (``to_state``) before it sends that acknowledgement, so a restarted
cloud continues the same round.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsa_common.federation.adaptive_split import ImportanceStats
from fedsa_common.federation.config import AggregationSection, RoundPolicySection
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import Ack, PartialHeader
from hub.aggregation import RunningSum
from hub.robust import combine_estimates

DROPPED = ("late", "stale")  # acknowledged, counted, not merged
KEPT = "kept/"  # the prefix of the kept estimates' tensor names in the persisted state


@dataclass
class Estimate:
    """One regional partial's estimate of the mean update, kept under a robust rule."""

    pid: str
    count: int  # the updates it stands for: its weight in the cloud's combination
    values: dict[str, torch.Tensor]  # float32


def staleness_weight(staleness: int) -> float:
    """FedBuff's discount for an update built on a global version ``staleness`` steps old."""
    return 1.0 / math.sqrt(1.0 + staleness)


@dataclass
class CloudIntake:
    """Everything about the round in flight that must survive a restart of the cloud hub:
    its announcement and the partials taken in so far."""

    round: int
    announce_payload: bytes
    selected: dict[str, list[str]]
    started: float
    total: RunningSum
    seen: set[str] = field(default_factory=set)
    applied: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    finals: set[str] = field(default_factory=set)
    bytes_in: int = 0
    importance: ImportanceStats = field(default_factory=ImportanceStats)  # importance_based
    estimates: list[Estimate] = field(default_factory=list)  # robust rules only
    # adaptive clipping: the merged updates that were within the round's clip norm (a
    # partial that does not say counts as all clipped)
    unclipped: int = 0

    def accept(self, header: PartialHeader, tensors: Mapping[str, torch.Tensor], *,
               version: int, policy: RoundPolicySection, shared_set_changes: bool) -> Ack:
        """Take one decoded partial of this federation: merge it, or record it as dropped
        (``Ack.reason`` late or stale), or count a redelivery (reason ``duplicate``);
        returns its acknowledgement, raises ``WireError`` naming why it is refused.

        ``version``: the global version now; ``shared_set_changes``: whether the shared set
        may differ between rounds (then a partial of an earlier round may carry that
        round's set, and is dropped as late whatever its shapes)."""
        pid = header.pid  # region:round:seq (an intake process's: region/worker:round:seq)
        if pid in self.seen:
            self.duplicates += 1
            return Ack(kind="partial", id=pid, accepted=True, reason="duplicate")
        if header.round > self.round:
            raise WireError("future", f"round {header.round}")
        if header.count != len(header.accepted):
            raise WireError("bad_header", "count does not match accepted list")
        # no regional hub weighs an update above max_samples_per_update; a larger (finite)
        # weight could only overflow the round's total to inf and zero the mean
        if header.weight > header.count * policy.max_samples_per_update:
            raise WireError("bad_header", f"weight {header.weight:.3g} > {header.count} "
                                          "updates x max_samples_per_update")
        staleness = version - header.base_version
        if staleness < 0:
            raise WireError("wrong_base_version", str(header.base_version))
        if header.importance is not None and header.importance.reports > header.count:
            raise WireError("bad_header", "more importance reports than updates")
        shapes = {n: tuple(t.shape) for n, t in self.total.sums.items()}  # the round's shared
        moved = shared_set_changes and header.round < self.round
        if {n: tuple(t.shape) for n, t in tensors.items()} != shapes and not moved:
            raise WireError("shape_mismatch", header.region)
        sums = {n: t.to(torch.float32) for n, t in tensors.items()}
        if not all(bool(torch.isfinite(t).all()) for t in sums.values()):
            raise WireError("non_finite", header.region)
        on_time = header.round == self.round and staleness == 0
        reason = None
        if not on_time and policy.mode == "sync" and policy.late == "drop":
            reason = "late"
        elif staleness > policy.max_staleness:
            reason = "stale"
        estimate = None
        if reason is None and header.count and policy.aggregation.robust:
            estimate = self.estimate_of(pid, header, sums)  # may refuse: before any change
        self.seen.add(pid)
        if header.round == self.round and header.final:
            self.finals.add(header.source)
        for r, n in header.rejected.items():
            self.rejected[r] += n
        self.duplicates += header.duplicates
        self.bytes_in += header.bytes_in
        if reason is not None:
            for uid in header.accepted:
                self.dropped[uid] = reason
        elif header.count:
            w = staleness_weight(staleness)
            self.total.merge({n: s * w for n, s in sums.items()}, header.weight * w,
                             header.count)
            self.applied.extend(header.accepted)
            self.unclipped += header.dp_unclipped or 0
            if estimate is not None:
                self.estimates.append(estimate)
            if header.importance is not None:
                self.importance.merge(ImportanceStats.from_json(header.importance.model_dump()))
        return Ack(kind="partial", id=pid, accepted=True, reason=reason)

    @staticmethod
    def estimate_of(pid: str, header: PartialHeader, sums: Mapping[str, torch.Tensor]
                    ) -> Estimate:
        """A partial's estimate of the mean update (``sums / weight``; refused when it has
        updates but no weight, or its estimate is not finite)."""
        if not header.weight > 0:
            raise WireError("bad_header", f"{header.count} updates of weight 0")
        values = {n: (t.to(torch.float64) / header.weight).to(torch.float32)
                  for n, t in sums.items()}
        if not all(bool(torch.isfinite(t).all()) for t in values.values()):
            raise WireError("non_finite", f"{header.region}: estimate")
        return Estimate(pid, header.count, values)

    def mean(self, aggregation: AggregationSection) -> dict[str, torch.Tensor] | None:
        """The round's update under a robust rule: the regional estimates combined by that
        rule, each counted once per update (``combine_estimates``, which says what this
        guarantees); None under the mean, whose update is the running sum's mean."""
        if not aggregation.robust:
            return None
        if not self.estimates:
            return {n: torch.zeros_like(t, dtype=torch.float32)
                    for n, t in self.total.sums.items()}
        return combine_estimates([e.values for e in self.estimates],
                                 [e.count for e in self.estimates], aggregation.rule,
                                 aggregation.trim_fraction)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON, the running sum's tensors); the announcement is stored beside them."""
        meta = {
            "round": self.round, "selected": self.selected, "started": self.started,
            "weight": self.total.weight, "count": self.total.count,
            "seen": sorted(self.seen), "applied": self.applied, "dropped": self.dropped,
            "rejected": dict(self.rejected), "duplicates": self.duplicates,
            "finals": sorted(self.finals), "bytes_in": self.bytes_in,
            **({"importance": self.importance.to_json()} if self.importance.reports else {}),
            **({"estimates": [[e.pid, e.count] for e in self.estimates]}
               if self.estimates else {}),
            **({"unclipped": self.unclipped} if self.unclipped else {}),
        }
        tensors = dict(self.total.sums)
        for i, e in enumerate(self.estimates):
            tensors.update({f"{KEPT}{i}/{n}": t for n, t in e.values.items()})
        return meta, tensors

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                   announce_payload: bytes) -> CloudIntake:
        sums = {n: t.to(torch.float64) for n, t in tensors.items() if not n.startswith(KEPT)}
        estimates = [Estimate(str(pid), int(count),
                              {n: tensors[f"{KEPT}{i}/{n}"].to(torch.float32) for n in sums})
                     for i, (pid, count) in enumerate(meta.get("estimates", []))]
        return cls(
            round=int(meta["round"]), announce_payload=announce_payload,
            selected=meta["selected"], started=float(meta["started"]),
            total=RunningSum(sums, float(meta["weight"]), int(meta["count"])),
            seen=set(meta["seen"]), applied=list(meta["applied"]),
            dropped=dict(meta["dropped"]), rejected=Counter(meta["rejected"]),
            duplicates=int(meta["duplicates"]), finals=set(meta["finals"]),
            bytes_in=int(meta["bytes_in"]),
            importance=ImportanceStats.from_json(meta.get("importance", {})),
            estimates=estimates, unclipped=int(meta.get("unclipped", 0)),
        )
