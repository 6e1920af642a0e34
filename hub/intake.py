"""A regional hub's intake of device updates across rounds (no I/O).

Updates are validated, then folded into one running weighted sum per base version, so that
late or asynchronous updates can travel to the cloud tagged with how stale they are.  The
whole intake serialises to (JSON, tensors) so the hub can persist it *before* it
acknowledges an update: an acknowledged update survives a crash of the hub.

Every refusal has a named reason so the operator can tell stale devices from
misconfigured or hostile ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsa_common.adaptive_split import ImportanceStats
from fedsa_common.config import RoundPolicySection
from fedsa_common.errors import WireError
from fedsa_common.protocol import AnnounceHeader, PartialHeader, UpdateHeader
from hub.aggregation import RunningSum, l2_norm
from hub.codec_check import announced_codec, check_declared, codec_for
from hub.kept import KeptUpdates
from hub.privacy import IntakeDp, fold
from hub.robust import clip_to_norm
from hub.similarity import SimilarityWeighting

# Rounds of history (selection, accepted ids) kept beyond max_staleness for judging late
# updates and resends.  The intake is persisted before every acknowledgement, so its size
# is paid per batch of updates: 64 rounds of a 1,000-device region were ~1.5 MB of JSON.
KEEP_EXTRA_ROUNDS = 4


@dataclass
class RoundInfo:
    version: int
    selected: list[str]
    codec: str
    codec_params: dict[str, Any] = field(default_factory=dict)  # announced, incl. seed


@dataclass
class RegionIntake:
    region: str
    federation: str
    policy: RoundPolicySection = field(default_factory=RoundPolicySection)
    round: int = 0  # the round currently announced
    version: int = 0
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    rounds: dict[int, RoundInfo] = field(default_factory=dict)
    groups: dict[int, RunningSum] = field(default_factory=dict)  # base version -> sum
    group_ids: dict[int, list[str]] = field(default_factory=dict)
    kept: KeptUpdates = field(default_factory=KeptUpdates)  # robust rules only
    dp: IntakeDp | None = None  # differential privacy: unit weights, central re-clipping
    similarity: SimilarityWeighting | None = None  # weighting: similarity
    last_factor: float = 1.0  # the last accepted update's similarity factor, for the log
    # adaptive split (importance_based): devices' importance reports, per base version
    collect_importance: bool = False
    importance: dict[int, ImportanceStats] = field(default_factory=dict)
    accepted_ids: set[str] = field(default_factory=set)
    # selected devices of the current round not accepted yet: derived from the two above,
    # kept so that checking for quorum costs the devices still missing, not the region
    waiting: set[str] = field(default_factory=set)
    offline: set[str] = field(default_factory=set)  # devices whose last will we saw
    final_sent: bool = False
    seq: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    bytes_in: int = 0

    # ------------------------------------------------------------------ rounds
    def announce(self, header: AnnounceHeader, shapes: Mapping[str, tuple[int, ...]],
                 policy: RoundPolicySection, codec: str) -> bool:
        """Take a new round; returns False for a re-delivery of a known round."""
        if header.round <= self.round and self.rounds:
            return False
        announced, params = announced_codec(header)  # validated before any state changes
        self.round, self.version = header.round, header.version
        self.shapes = dict(shapes)
        self.policy = policy
        self.rounds[header.round] = RoundInfo(
            header.version, list(header.selected.get(self.region, [])), codec,
            params if announced == codec else {})
        # forgotten rounds refuse their updates and resends as stale; when every round was
        # applied (a version per round) they are stale by version anyway
        oldest = header.round - policy.max_staleness - KEEP_EXTRA_ROUNDS
        for old in [r for r in self.rounds if r < oldest]:
            del self.rounds[old]
        self.accepted_ids = {i for i in self.accepted_ids
                             if int(i.rsplit(":", 1)[1]) >= oldest}
        self.final_sent = False
        self.seq = 0
        self.waiting = self._waiting()
        return True

    def _waiting(self) -> set[str]:
        info = self.rounds.get(self.round)
        if info is None:
            return set()
        return {c for c in info.selected if f"{c}:{self.round}" not in self.accepted_ids}

    def mark_accepted(self, uids: Iterable[str]) -> None:
        """Record accepted update ids (every path that accepts one comes through here)."""
        for uid in uids:
            self.accepted_ids.add(uid)
            client, _, rnd = uid.rpartition(":")
            if rnd == str(self.round):
                self.waiting.discard(client)

    @property
    def expected(self) -> list[str]:
        """Selected devices of the current round that have not been seen leaving.

        Only an explicit offline message (a device's last will) removes a device: a hub
        that just restarted has not heard everyone's presence yet and must not conclude
        that silent devices are gone."""
        info = self.rounds.get(self.round)
        if info is None:
            return []
        return [c for c in info.selected if c not in self.offline or f"{c}:{self.round}"
                in self.accepted_ids]

    @property
    def complete(self) -> bool:
        """Every selected device of the round was accepted or was seen leaving."""
        return all(c in self.offline for c in self.waiting)

    # ------------------------------------------------------------------ updates
    def offer(self, header: UpdateHeader, tensors: Mapping[str, torch.Tensor], nbytes: int
              ) -> str:
        """Validate one update and fold it in; returns its id, raises WireError naming why.

        A redelivery of an already accepted (client, round) raises ``duplicate`` and is
        counted once, so QoS 1 redelivery and device resends are harmless.
        """
        uid = header.update_id
        if header.federation != self.federation:
            raise WireError("wrong_federation", header.federation)
        if header.region != self.region:
            raise WireError("wrong_region", header.region)
        if uid in self.accepted_ids:
            self.duplicates += 1
            raise WireError("duplicate", uid)
        if header.round > self.round:
            raise WireError("future", f"round {header.round} > {self.round}")
        info = self.rounds.get(header.round)
        if info is None:
            raise WireError("stale", f"round {header.round} unknown here")
        if header.client not in info.selected:
            raise WireError("not_selected", header.client)
        if header.base_version != info.version:
            raise WireError("wrong_base_version", f"{header.base_version} != {info.version}")
        staleness = self.version - header.base_version
        # after the region's final partial the cloud may still be collecting this round, so
        # the cloud, not the region, decides whether a current-round update is too late
        on_time = header.round == self.round
        if not on_time and self.policy.mode == "sync" and self.policy.late == "drop":
            raise WireError("late", uid)
        if self.policy.aggregation.robust and self.final_sent:  # its cohort has been judged
            raise WireError("late", f"{uid} after the region's robust partial")
        if staleness > self.policy.max_staleness:
            raise WireError("stale", f"{uid} is {staleness} versions old")
        params = check_declared(header, info.codec, info.codec_params)
        if header.num_samples > self.policy.max_samples_per_update:
            raise WireError("too_many_samples", str(header.num_samples))
        codec = codec_for(header.codec, params)
        delta = codec.decode(tensors, header.codec_meta, self.shapes)
        norm = l2_norm(delta)
        if not math.isfinite(norm):
            raise WireError("non_finite", uid)
        if self.policy.max_update_norm is not None and norm > self.policy.max_update_norm:
            raise WireError("norm_bound", f"{norm:.3g} > {self.policy.max_update_norm}")
        if self.policy.aggregation.clip_norm is not None:
            delta = clip_to_norm(delta, self.policy.aggregation.clip_norm)
        group = self.groups.get(header.base_version)
        if group is None:
            group = self.groups[header.base_version] = RunningSum.zeros(self.shapes)
        samples = float(header.num_samples)
        if self.similarity is not None:  # agreement with the last global change
            self.last_factor = self.similarity.factor(delta)
            samples *= self.last_factor
        delta, weight = fold(self.dp, delta, samples)
        group.add(delta, weight)
        if self.collect_importance and header.importance:
            self.importance.setdefault(header.base_version, ImportanceStats()).add_report(
                header.importance)
        if self.policy.aggregation.robust:
            self.kept.keep(header.base_version, delta)
        self.group_ids.setdefault(header.base_version, []).append(uid)
        self.mark_accepted([uid])
        self.bytes_in += nbytes
        return uid

    # ------------------------------------------------------------------ partials
    def flush(self, final: bool) -> list[tuple[PartialHeader, dict[str, torch.Tensor]]]:
        """Everything not yet forwarded, one partial per base version; ``final`` closes the
        region's current round (an empty final partial is sent if nothing is pending)."""
        out = []
        versions = sorted(self.groups)
        if final and not versions:
            versions = [self.version]
        for i, bv in enumerate(versions):
            total = self.groups.pop(bv, None) or RunningSum.zeros(self.shapes)
            ids = self.group_ids.pop(bv, [])
            stats = self.importance.pop(bv, None)
            last = i == len(versions) - 1
            header = PartialHeader(
                federation=self.federation, round=self.round, region=self.region,
                base_version=bv, seq=self.seq, final=final and last, count=total.count,
                weight=total.weight, accepted=sorted(ids),
                rejected=dict(self.rejected) if last else {},
                duplicates=self.duplicates if last else 0,
                bytes_in=self.bytes_in if last else 0,
                importance=stats.to_json() if stats is not None and stats.reports else None,
            )
            self.seq += 1
            robust = self.kept.pop_sums(bv, total.weight, self.policy.aggregation)
            out.append((header, total.as_float32() if robust is None else robust))
        if out:
            self.rejected.clear()
            self.duplicates = 0
            self.bytes_in = 0
        if final:
            self.final_sent = True
        return out

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {
            "round": self.round, "version": self.version, "final_sent": self.final_sent,
            "seq": self.seq, "shapes": {n: list(s) for n, s in self.shapes.items()},
            "rounds": {str(r): [i.version, i.selected, i.codec, i.codec_params]
                       for r, i in self.rounds.items()},
            "groups": {str(bv): [g.weight, g.count, self.group_ids.get(bv, [])]
                       for bv, g in self.groups.items()},
            "accepted_ids": sorted(self.accepted_ids),
            "rejected": dict(self.rejected), "duplicates": self.duplicates,
            "bytes_in": self.bytes_in, "policy": self.policy.model_dump(mode="json"),
            "offline": sorted(self.offline),
        }
        tensors = {f"group/{bv}/{n}": t for bv, g in self.groups.items()
                   for n, t in g.sums.items()}
        meta["kept"], kept_tensors = self.kept.to_state()
        if self.dp is not None:
            meta["dp"] = self.dp.to_json()
        tensors.update(kept_tensors)
        if self.similarity is not None:
            meta["similarity"], similarity_tensors = self.similarity.to_state()
            tensors.update(similarity_tensors)
        if self.collect_importance:
            meta["importance"] = {str(bv): s.to_json() for bv, s in self.importance.items()}
        return meta, tensors

    @classmethod
    def from_state(cls, region: str, federation: str, meta: Mapping[str, Any],
                   tensors: Mapping[str, torch.Tensor]) -> RegionIntake:
        intake = cls(region, federation, RoundPolicySection(**meta["policy"]),
                     int(meta["round"]), int(meta["version"]),
                     {n: tuple(s) for n, s in meta["shapes"].items()})
        intake.rounds = {int(r): RoundInfo(int(row[0]), list(row[1]), str(row[2]),
                                           dict(row[3]) if len(row) > 3 else {})
                         for r, row in meta["rounds"].items()}
        for bv_s, (weight, count, ids) in meta["groups"].items():
            bv = int(bv_s)
            sums = {n: tensors[f"group/{bv}/{n}"].to(torch.float64) for n in intake.shapes}
            intake.groups[bv] = RunningSum(sums, float(weight), int(count))
            intake.group_ids[bv] = list(ids)
        intake.kept = KeptUpdates.from_state(meta.get("kept", {}), tensors, list(intake.shapes))
        intake.dp = IntakeDp.from_json(meta.get("dp"))
        intake.similarity = SimilarityWeighting.from_state(meta.get("similarity"), tensors)
        if "importance" in meta:
            intake.collect_importance = True
            intake.importance = {int(bv): ImportanceStats.from_json(raw)
                                 for bv, raw in meta["importance"].items()}
        intake.accepted_ids = set(meta["accepted_ids"])
        intake.waiting = intake._waiting()
        intake.offline = set(meta.get("offline", []))
        intake.final_sent = bool(meta["final_sent"])
        intake.seq = int(meta["seq"])
        intake.rejected = Counter(meta["rejected"])
        intake.duplicates = int(meta["duplicates"])
        intake.bytes_in = int(meta["bytes_in"])
        return intake
