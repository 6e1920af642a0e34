"""The leader of a region served by several intake processes (``intake_shards`` > 1).

Why: the intake processes (``hub.intake_worker``) each fold their own devices' updates; the
cloud, the bridge rules and ``hub status`` must still see one region.  The leader is the
regional hub without update subscriptions: it takes its intake processes' partials as the
cloud takes regions' (``hub.cloud_intake.CloudIntake``: merge, count once, refuse by name),
persists them before it acknowledges, and forwards the region's one partial per base
version to the cloud, resent until acknowledged (``RegionalHub``'s outbox).  Partial sums
are sums, so what it forwards is the sum one process would have folded.

Quorum: the region's round closes when every intake process sent its final partial for it
(each closes at its own devices' quorum, presence included, or at the deadline), or as
soon as the union of the accepted ids covers every selected device; the leader's own
deadline comes ``resend_s`` after the round's, so that its processes' deadline partials
reach it first.  After the region's final partial, what its processes still forward (late
updates) goes on to the cloud as further partials, as a single regional hub does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import Ack, PartialHeader, decode_message
from hub.aggregation import RunningSum
from hub.cloud_intake import CloudIntake
from hub.intake import KEEP_EXTRA_ROUNDS
from hub.process import Event
from hub.regional import RegionalHub

log = logging.getLogger("fedsa.hub.leader")

PENDING = "pending/"  # prefix of the merged sums' tensor names in the persisted state


class RegionLeader(RegionalHub):
    def __init__(self, broker_url: str, federation: str, region: str, shards: int,
                 state_dir: Path, payload_limit: int = 1_000_000, *,
                 auth: BrokerAuth | None = None, connect_timeout_s: float = 300.0,
                 report_every_s: float = 30.0, session: MqttSession | None = None) -> None:
        if shards < 2:
            raise ValueError(f"a region leader needs intake_shards > 1, not {shards}")
        # before the restore that the regional hub's constructor runs
        self.shards = shards
        self.pending: dict[int, CloudIntake] = {}  # base version -> merged, not forwarded
        self.taken: set[str] = set()  # ids of the processes' partials merged (and acked)
        self.worker_finals: set[tuple[int, int]] = set()  # (round, shard)
        super().__init__(broker_url, federation, region, state_dir, payload_limit, auth=auth,
                         connect_timeout_s=connect_timeout_s, report_every_s=report_every_s,
                         session=session)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta, tensors = super().to_state()
        pending = {}
        for bv, intake in self.pending.items():
            pending[str(bv)], sums = intake.to_state()
            tensors.update({f"{PENDING}{bv}/{n}": t for n, t in sums.items()})
        meta["leader"] = {"taken": sorted(self.taken), "pending": pending,
                          "finals": sorted(self.worker_finals)}
        return meta, tensors

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().restore(meta, tensors)
        state = meta.get("leader", {})
        self.taken = set(state.get("taken", []))
        self.worker_finals = {(int(r), int(w)) for r, w in state.get("finals", [])}
        for bv, raw in state.get("pending", {}).items():
            prefix = f"{PENDING}{bv}/"
            sums = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            self.pending[int(bv)] = CloudIntake.from_state(raw, sums, b"")

    # ------------------------------------------------------------------ messages
    def subscribe(self) -> None:
        """The region's presence (quorum, duplicate client ids), the announcements, the
        cloud's acknowledgements and the intake processes' partials; no device updates."""
        self.listen("presence", f"{self.topics.base}/presence/{self.region}/+", raw=True)
        self.listen("announce", self.topics.announce)
        self.listen("partial_ack", self.partial_ack_topic, raw=True)
        self.listen("worker_partial", self.topics.intake_partial_filter(self.region))

    def handle(self, event: Event) -> None:
        if event.kind != "worker_partial":
            super().handle(event)
            return
        try:
            self.on_worker_partial(event)
        except WireError as err:
            self.count_reject(err, event.topic)

    def deadline_grace_s(self) -> float:
        return self.intake.policy.resend_s

    def on_announce(self, event: Event) -> None:
        super().on_announce(event)
        oldest = self.intake.round - self.intake.policy.max_staleness - KEEP_EXTRA_ROUNDS
        self.taken = {p for p in self.taken if int(p.split(":")[1]) >= oldest}
        self.worker_finals = {(r, w) for r, w in self.worker_finals if r >= oldest}

    def on_worker_partial(self, event: Event) -> None:
        """Merge one intake process's partial (persisted before its acknowledgement, which
        ``after_batch`` sends); a redelivery is acknowledged again and not merged twice.
        One of a round not announced here yet is left unacknowledged: it is resent."""
        header, env = decode_message(PartialHeader, event.payload, max_bytes=self.max_bytes)
        if header.federation != self.federation:
            raise WireError("wrong_federation", header.federation)
        if (header.region != self.region or header.worker is None
                or header.worker >= self.shards
                or event.topic != self.topics.intake_partial(self.region, header.worker)):
            raise WireError("wrong_topic", event.topic)
        ack_topic = self.topics.intake_ack(self.region, header.worker)
        pid = header.pid
        if pid in self.taken:
            self.acks.append((ack_topic, Ack(kind="partial", id=pid, accepted=True,
                                             reason="duplicate")))
            return
        if header.round > self.intake.round:
            raise WireError("future", f"{pid}: round {self.intake.round} announced here")
        intake = self.pending.get(header.base_version)
        if intake is None:
            intake = CloudIntake(round=self.intake.round, announce_payload=b"", selected={},
                                 started=event.received, total=RunningSum.zeros(
                                     {n: tuple(t.shape) for n, t in env.tensors.items()}))
        # its own round and base version: the leader judges nothing late or stale and
        # discounts nothing (the cloud does, from the round and base version forwarded)
        intake.round = header.round
        try:
            ack = intake.accept(header, env.tensors, version=header.base_version,
                                policy=self.intake.policy, shared_set_changes=False)
        except WireError as err:
            self.acks.append((ack_topic, Ack(kind="partial", id=pid, accepted=False,
                                             reason=err.reason)))
            raise
        self.pending[header.base_version] = intake
        self.taken.add(pid)
        self.intake.mark_accepted(header.accepted)
        if header.final:
            self.worker_finals.add((header.round, header.worker))
        self.counters["updates.accepted"] += header.count
        self.dirty = True
        self.acks.append((ack_topic, ack))
        self.maybe_forward()

    # ------------------------------------------------------------------ forwarding
    def maybe_forward(self) -> None:
        if not self.intake.round:
            return
        streaming = self.intake.policy.over_select > 1 or self.intake.final_sent
        finals = all((self.intake.round, w) in self.worker_finals for w in range(self.shards))
        if not self.intake.final_sent and (finals or not self.intake.waiting):
            self.forward(final=True)
        elif streaming and self.pending:
            self.forward(final=False)

    def flush(self, final: bool) -> list[tuple[PartialHeader, dict[str, torch.Tensor]]]:
        """The merged sums as the region's partials, one per base version (an empty final
        one when nothing is pending), numbered after the region's earlier ones."""
        out = []
        versions = sorted(self.pending)
        if final and not versions:
            versions = [self.intake.version]
        for i, bv in enumerate(versions):
            merged = self.pending.pop(bv, None)
            if merged is None:
                sums = {n: torch.zeros(s) for n, s in self.intake.shapes.items()}
                count, weight, merged = 0, 0.0, CloudIntake(
                    self.intake.round, b"", {}, 0.0, RunningSum.zeros(self.intake.shapes))
            else:
                sums = {n: t.to(torch.float32) for n, t in merged.total.sums.items()}
                count, weight = merged.total.count, merged.total.weight
            importance = merged.importance.to_json() if merged.importance.reports else None
            out.append((PartialHeader(
                federation=self.federation, round=self.intake.round, region=self.region,
                base_version=bv, seq=self.intake.seq,
                final=final and i == len(versions) - 1, count=count, weight=weight,
                accepted=sorted(merged.applied), rejected=dict(merged.rejected),
                duplicates=merged.duplicates, bytes_in=merged.bytes_in,
                importance=importance, dp_unclipped=merged.unclipped or None), sums))
            self.intake.seq += 1
        if final:
            self.intake.final_sent = True
        return out
