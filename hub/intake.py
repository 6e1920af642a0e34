"""A regional hub's intake of device updates across rounds (no I/O).

Updates are validated and decoded, pass the round's admission steps, and are accepted by
one aggregator per base version (hub/aggregator.py), so that late or asynchronous updates
can travel to the cloud tagged with how stale they are.  Which steps and which aggregator
a round has (norm bound, clipping, similarity weighting, DP, importance reports; mean,
robust rule, secure aggregation) is the round's configuration: the intake runs them
without knowing which features are on.  The whole intake serialises to (JSON, tensors)
so the hub can persist it *before* it acknowledges an update: an acknowledged update
survives a crash of the hub.

Every refusal has a named reason so the operator can tell stale devices from
misconfigured or hostile ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from fedsa_common.federation.config import RoundPolicySection
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, PartialHeader, UpdateHeader
from hub.aggregation import l2_norm
from hub.aggregator import (
    AdmissionStep,
    Aggregator,
    ImportanceReports,
    RuleAggregator,
    StatefulStep,
    StepKind,
    Update,
    aggregator_class,
    policy_steps,
)
from hub.codec_check import announced_codec, check_declared, codec_for
from hub.privacy import IntakeDp
from hub.similarity import SimilarityWeighting

# Rounds of history (selection, accepted ids) kept beyond max_staleness for judging late
# updates and resends.  The intake is persisted before every acknowledgement, so its size
# is paid per batch of updates: 64 rounds of a 1,000-device region were ~1.5 MB of JSON.
KEEP_EXTRA_ROUNDS = 4

# The configured admission steps, in the order they run (after the policy's own), by the key
# each persists under: a restored intake rebuilds them in this order from the keys present.
STEPS: dict[str, StepKind] = {
    SimilarityWeighting.key: SimilarityWeighting,  # weights by samples x agreement
    IntakeDp.key: IntakeDp,  # then DP's unit weight (and central clip) replaces the weight
    ImportanceReports.key: ImportanceReports,
}
S = TypeVar("S")


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
    steps: list[StatefulStep] = field(default_factory=list)  # configured, after the policy's
    groups: dict[int, Aggregator] = field(default_factory=dict)  # base version -> aggregator
    last_factor: float = 1.0  # the last accepted update's weighting factor, for the log
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
                 policy: RoundPolicySection, codec: str,
                 steps: Sequence[StatefulStep | None] = (),
                 aggregator: Aggregator | None = None,
                 only: Callable[[str], bool] | None = None) -> bool:
        """Take a new round; returns False for a re-delivery of a known round.

        ``steps``: the configured admission steps of the round (None for a feature that is
        off), run after the policy's own; ``aggregator``: the round's aggregator when it is
        not the policy's rule (secure aggregation's ``SecureSum``); ``only``: which of the
        region's selected devices this intake serves (an intake process: its shard's)."""
        if header.round <= self.round and self.rounds:
            return False
        announced, params = announced_codec(header)  # validated before any state changes
        self.round, self.version = header.round, header.version
        self.shapes = dict(shapes)
        self.policy = policy
        self.rounds[header.round] = RoundInfo(
            header.version, [c for c in header.selected.get(self.region, [])
                             if only is None or only(c)], codec,
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
        order = list(STEPS)
        self.steps = sorted((s for s in steps if s is not None), key=lambda s: order.index(s.key))
        if aggregator is not None:
            self.groups[header.version] = aggregator
        return True

    def step(self, kind: type[S]) -> S | None:
        """The round's configured step of class ``kind`` (None when the round has none)."""
        return next((s for s in self.steps if isinstance(s, kind)), None)

    @property
    def admission(self) -> list[AdmissionStep]:
        """Every admission step, in the order they run: the policy's, then the configured."""
        return [*policy_steps(self.policy), *self.steps]

    @property
    def group_class(self) -> RuleAggregator:
        """The aggregator class of the policy's rule (``hub.aggregator.RULES``)."""
        return aggregator_class(self.policy.aggregation.rule)

    def new_group(self) -> Aggregator:
        """An empty aggregator of the policy's rule for a base version's updates."""
        return self.group_class(self.shapes, self.policy.aggregation)

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
    def accept(self, header: UpdateHeader, tensors: Mapping[str, torch.Tensor], nbytes: int
               ) -> str:
        """Validate one update, admit it and accept it into its base version's aggregator;
        returns its id, raises WireError naming why not.

        A redelivery of an already accepted (client, round) raises ``duplicate`` and is
        counted once, so QoS 1 redelivery and device resends are harmless.
        """
        uid = header.update_id
        if header.federation != self.federation:
            raise WireError("wrong_federation", header.federation)
        if header.region != self.region:
            raise WireError("wrong_region", header.region)
        self.check_new(uid)
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
        if self.final_sent and not self.group_class.after_final:  # its cohort has been judged
            raise WireError("late", f"{uid} after the region's robust partial")
        if staleness > self.policy.max_staleness:
            raise WireError("stale", f"{uid} is {staleness} versions old")
        params = check_declared(header, info.codec, info.codec_params)
        if header.num_samples > self.policy.max_samples_per_update:
            raise WireError("too_many_samples", str(header.num_samples))
        codec = codec_for(header.codec, params)
        delta = codec.decode(tensors, header.codec_meta, self.shapes)
        if not math.isfinite(l2_norm(delta)):
            raise WireError("non_finite", uid)
        update = Update(header, delta, float(header.num_samples))
        for step in self.admission:
            update = step.admit(update)
        group = self.groups.get(header.base_version)
        if group is None:
            group = self.groups[header.base_version] = self.new_group()
        self.accept_into(group, update)
        self.last_factor = update.factor
        self.mark_accepted([uid])
        self.bytes_in += nbytes
        return uid

    def check_new(self, uid: str) -> None:
        """Refuse (and count) a redelivery of an update this region already accepted."""
        if uid in self.accepted_ids:
            self.duplicates += 1
            raise WireError("duplicate", uid)

    def accept_into(self, group: Aggregator, update: Update) -> None:
        """Accept an admitted update into ``group``, counting a duplicate it refuses (secure
        aggregation reads and checks its masked updates itself, then comes through here)."""
        try:
            group.accept(update)
        except WireError as err:
            if err.reason == "duplicate":
                self.duplicates += 1
            raise

    # ------------------------------------------------------------------ partials
    def flush(self, final: bool) -> list[tuple[PartialHeader, dict[str, torch.Tensor]]]:
        """Everything not yet forwarded, one partial per base version; ``final`` closes the
        region's current round (an empty final partial is sent if nothing is pending)."""
        out = []
        versions = sorted(self.groups)
        if final and not versions:
            versions = [self.version]
        for i, bv in enumerate(versions):
            group = self.groups.pop(bv, None) or self.new_group()
            result = group.result()
            last = i == len(versions) - 1
            header = PartialHeader(
                federation=self.federation, round=self.round, region=self.region,
                base_version=bv, seq=self.seq, final=final and last, count=result.count,
                weight=result.weight, accepted=sorted(result.ids),
                rejected=dict(self.rejected) if last else {},
                duplicates=self.duplicates if last else 0,
                bytes_in=self.bytes_in if last else 0, importance=result.importance,
                dp_unclipped=result.unclipped,
            )
            self.seq += 1
            out.append((header, result.sums))
        if out:
            self.rejected.clear()
            self.duplicates = 0
            self.bytes_in = 0
        if final:
            self.final_sent = True
        return out

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON, tensors).  Configured steps write under their keys; every group writes its
        sections under its base version ("groups" and "kept" are always present: the
        layout hubs wrote before the aggregator interface, which they can still read)."""
        meta: dict[str, Any] = {
            "round": self.round, "version": self.version, "final_sent": self.final_sent,
            "seq": self.seq, "shapes": {n: list(s) for n, s in self.shapes.items()},
            "rounds": {str(r): [i.version, i.selected, i.codec, i.codec_params]
                       for r, i in self.rounds.items()},
            "accepted_ids": sorted(self.accepted_ids),
            "rejected": dict(self.rejected), "duplicates": self.duplicates,
            "bytes_in": self.bytes_in, "policy": self.policy.model_dump(mode="json"),
            "offline": sorted(self.offline), "groups": {}, "kept": {},
        }
        tensors: dict[str, torch.Tensor] = {}
        for step in self.steps:
            meta[step.key], step_tensors = step.to_state()
            tensors.update(step_tensors)
        for bv, group in self.groups.items():
            sections, group_tensors = group.to_state(str(bv))
            for section, value in sections.items():
                meta.setdefault(section, {})[str(bv)] = value
            tensors.update(group_tensors)
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
        intake.steps = [kind.from_state(meta[key], tensors) for key, kind in STEPS.items()
                        if key in meta]
        restore = intake.group_class.from_state
        intake.groups = {int(tag): restore(tag, meta, tensors, intake.shapes,
                                           intake.policy.aggregation)
                         for tag in meta["groups"]}
        intake.accepted_ids = set(meta["accepted_ids"])
        intake.waiting = intake._waiting()
        intake.offline = set(meta.get("offline", []))
        intake.final_sent = bool(meta["final_sent"])
        intake.seq = int(meta["seq"])
        intake.rejected = Counter(meta["rejected"])
        intake.duplicates = int(meta["duplicates"])
        intake.bytes_in = int(meta["bytes_in"])
        return intake
