"""The regional hub: validates its devices' updates, keeps running weighted sums, and
forwards partial aggregates to the cloud at quorum (every selected device that is still
online reported) or at the round deadline; in asynchronous mode or with over-selection it
forwards as updates arrive.

Durability: accepted updates are persisted (intake state written atomically) before they
are acknowledged, and forwarded partials are kept and resent until the cloud acknowledges
them, so a crash of this hub loses no acknowledged update.  Devices resend until they get
an acknowledgement, and duplicates are counted once.
"""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path
from typing import Any

import torch

from fedsa_common.federation.config import TransportSection, announced_config
from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession
from fedsa_common.process.atomic import read_json, read_tensors, write_json, write_tensors
from fedsa_common.wire.downlink import announced_delta
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.liveness import Reminder
from fedsa_common.wire.protocol import (
    Ack,
    AnnounceHeader,
    PartialHeader,
    Presence,
    UpdateHeader,
    announced_shapes,
    check_name,
    decode_json,
    decode_message,
    encode_json,
    encode_message,
)
from hub.aggregator import ImportanceReports
from hub.duplicate_ids import notice
from hub.intake import RegionIntake
from hub.privacy import intake_dp
from hub.process import Event, HubProcess
from hub.secagg_region import RegionSecAgg
from hub.similarity import SimilarityWeighting, similarity_for

log = logging.getLogger("fedsa.hub.regional")

MAX_EARLY = 1024  # updates buffered for a round whose announcement has not arrived yet
COMMIT_INTERVAL_S = 0.02  # longest an accepted update waits for its persist and ack
STATE_JSON = "intake.json"
STATE_TENSORS = "intake.safetensors"


class RegionalHub(HubProcess):
    role = "regional"
    shards = 1  # intake processes serving the region (hub/region_leader.py when more)

    def __init__(self, broker_url: str, federation: str, region: str, state_dir: Path,
                 payload_limit: int = 1_000_000, *, auth: BrokerAuth | None = None,
                 connect_timeout_s: float = 300.0, report_every_s: float = 30.0,
                 session: MqttSession | None = None,
                 secagg_authority: bytes | None = None, name: str | None = None) -> None:
        """``secagg_authority``: the secure-aggregation authority's public key, with which
        this hub checks device certificates itself (hub/secagg_region.py); ``name``: the
        process's name (its client id and status), the region's unless given."""
        super().__init__(broker_url, federation, name or check_name("region", region), state_dir,
                         payload_limit, auth=auth, connect_timeout_s=connect_timeout_s,
                         report_every_s=report_every_s, session=session)
        self.region = region
        self.intake = RegionIntake(region, federation)
        self.outbox: dict[str, tuple[PartialHeader, dict[str, torch.Tensor]]] = {}
        self.load()
        self.deadline = float("inf")
        # updates of a round not announced yet, kept decoded (header and body) for it
        self.early: list[tuple[Event, UpdateHeader, dict[str, torch.Tensor]]] = []
        self.max_bytes = TransportSection().max_message_bytes
        self.finished = False
        self.acks: list[tuple[str, Ack]] = []  # sent once the state is persisted
        self.accepted_log: list[str] = []  # this batch's accepted updates, logged with it
        self.dirty = False
        self.next_resend = 0.0
        # secure aggregation rounds (inert without them)
        self.secagg = RegionSecAgg(self.session, self.topics, federation, region, self.counters,
                                   secagg_authority)

    @property
    def partial_topic(self) -> str:
        """Where this hub's partials go (an intake process's: to its region's leader)."""
        return self.topics.partial(self.region)

    @property
    def partial_ack_topic(self) -> str:
        return self.topics.partial_ack(self.region)

    # ------------------------------------------------------------------ persistence
    def load(self) -> None:
        """Restore the intake and the unacknowledged partials written by ``persist``."""
        path = self.state_dir / STATE_JSON
        if not path.exists():
            return
        self.restore(read_json(path), read_tensors(self.state_dir / STATE_TENSORS))
        log.info("restored intake of round %d with %d accepted ids and %d unacknowledged "
                 "partials", self.intake.round, len(self.intake.accepted_ids), len(self.outbox))

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Take the state ``to_state`` wrote."""
        self.intake = RegionIntake.from_state(self.region, self.federation, meta["intake"],
                                              tensors)
        for pid, raw in meta.get("outbox", {}).items():
            prefix = f"outbox/{pid}/"
            sums = {k[len(prefix):]: v.to(torch.float32) for k, v in tensors.items()
                    if k.startswith(prefix)}
            self.outbox[pid] = (PartialHeader.model_validate(raw), sums)

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON, tensors): the intake and the partials not acknowledged yet."""
        meta, tensors = self.intake.to_state()
        outbox = {}
        for pid, (header, sums) in self.outbox.items():
            outbox[pid] = header.model_dump(mode="json")
            tensors.update({f"outbox/{pid}/{n}": t for n, t in sums.items()})
        return {"intake": meta, "outbox": outbox}, tensors

    def persist(self) -> None:
        meta, tensors = self.to_state()
        write_tensors(self.state_dir / STATE_TENSORS, tensors)
        write_json(self.state_dir / STATE_JSON, meta)
        self.dirty = False

    # ------------------------------------------------------------------ main loop
    def subscribe(self) -> None:
        """What this hub reads: the region's devices (presence, updates, secure
        aggregation), the announcements and the cloud's acknowledgements."""
        self.listen("presence", f"{self.topics.base}/presence/{self.region}/+", raw=True)
        self.listen("announce", self.topics.announce)
        self.listen("update", self.topics.update_filter(self.region))
        self.listen("partial_ack", self.partial_ack_topic, raw=True)
        self.listen("secagg", self.topics.secagg_up_filter(self.region))

    def run(self) -> int:
        self.subscribe()
        self.connect()
        self.publish_status(round=self.intake.round or None)
        log.info("regional hub %s serving federation %s", self.region, self.federation)
        reminder = Reminder(self.report_every_s, time.monotonic())
        while not self.finished:
            if not self.intake.round and reminder.due(time.monotonic()):
                log.warning("still waiting for federation %s on %s: no round announcement "
                            "yet (its cloud hub announces round 1 once min_clients devices "
                            "are online; `hub status --federation %s` shows what the broker "
                            "holds)", self.federation, self.session.broker_url,
                            self.federation)
            event = self.next_event(timeout=min(1.0, self.deadline - time.time()))
            batch_started = time.time()
            while event is not None:  # drain, then persist once and acknowledge the batch
                self.handle(event)
                event = self.next_in_batch(batch_started)
            self.secure_tick()  # close secure-aggregation stages that are done or due
            self.after_batch()
            if (self.intake.round and not self.intake.final_sent
                    and time.time() >= self.deadline):
                log.info("round %d deadline reached with %d expected", self.intake.round,
                         len(self.intake.expected))
                self.forward(final=True)
                self.after_batch()
            if time.monotonic() >= self.next_resend:
                self.resend()
        self.session.close(unsubscribe=True)  # keeps the "finished" status (no will)
        return 0

    def next_in_batch(self, batch_started: float) -> Event | None:
        """The next queued event; while updates wait for their acknowledgement, also one
        that arrives within ``COMMIT_INTERVAL_S`` of the batch's start.

        Group commit: updates of a burst share one persist (two fsyncs) instead of paying
        one each, and no acknowledgement waits longer than the interval for it."""
        if not self.events.empty():
            return self.next_event(0.0)
        wait = batch_started + COMMIT_INTERVAL_S - time.time()
        if not self.acks or wait <= 0:
            return None
        try:
            return self.events.get(timeout=wait)
        except queue.Empty:
            return None

    def log_accepted(self) -> None:
        """One line for the updates accepted since the last (a line per update cost about a
        tenth of a hub's ingest); each with its similarity factor when the round has one."""
        if self.accepted_log:
            log.info("accepted %d update%s: %s", len(self.accepted_log),
                     "" if len(self.accepted_log) == 1 else "s", ", ".join(self.accepted_log))
            self.accepted_log = []

    def after_batch(self) -> None:
        self.log_accepted()
        if self.dirty:
            self.persist()
        acks, self.acks = self.acks, []
        if acks:
            self.session.publish_raw_many([(topic, encode_json(ack)) for topic, ack in acks])

    def handle(self, event: Event) -> None:
        try:
            if event.kind == "announce":
                self.on_announce(event)
            elif event.kind == "update":
                self.on_update(event)
            elif event.kind == "presence":
                self.on_presence(event)
            elif event.kind == "secagg":
                self.secagg.on_message(event, self.max_bytes)
                self.secure_tick()
            elif event.kind == "partial_ack":
                self.on_partial_ack(event)
            elif event.kind == "connected":
                # after a broker restart its retained copy may be gone, and the cloud and
                # devices read it to know that this region is served
                self.publish_status(round=self.intake.round or None)
        except WireError as err:
            if event.kind == "update":
                self.refused_update(err, event)
            else:
                self.count_reject(err, event.topic)

    def refused_update(self, err: WireError, event: Event) -> None:
        """Count (in the intake too, so the partial reports it) and log a refused update."""
        if err.reason != "duplicate":
            self.intake.rejected[err.reason] += 1
            self.dirty = True
        self.count_reject(err, event.topic)

    def on_presence(self, event: Event) -> None:
        if not event.payload:
            return
        p = decode_json(Presence, event.payload)
        if p.region != self.region or event.topic != self.topics.presence(p.region, p.client):
            raise WireError("wrong_topic", event.topic)
        if p.online:
            self.intake.offline.discard(p.client)
            self.check_duplicate(p)
        elif self.duplicates.is_current(p.client, p.session):
            self.intake.offline.add(p.client)
            self.maybe_forward()
        # else: the will of a connection that another copy of the client id displaced

    def check_duplicate(self, p: Presence) -> None:
        """Flag a client id that two running devices claim (counted, logged, in the status)
        and tell the newer device to leave, each time its session comes back: it receives
        the notice only while it holds the connection."""
        dup = self.flag_duplicate(p)
        if dup is not None:
            self.acks.append((self.topics.ack(self.region, p.client), notice(dup)))

    def on_announce(self, event: Event) -> None:
        header, env = decode_message(AnnounceHeader, event.payload, max_bytes=self.max_bytes)
        if header.federation != self.federation:
            raise WireError("wrong_federation", header.federation)
        if header.status == "finished":
            if self.intake.round and not self.intake.final_sent:
                self.forward(final=True)
            log.info("federation finished at round %d", header.round)
            self.publish_status(round=header.round, finished=True)
            self.finished = True
            return
        if header.round <= self.intake.round:
            return  # a retained re-delivery of a round we already serve
        config = announced_config(header)  # before anything closes: a bad one changes nothing
        if config.shards_of(self.region) != self.shards:
            # its devices publish where no process of this hub listens: say so, loudly
            self.counters["config.intake_shards_mismatch"] += 1
            log.error("round %d announces intake_shards %d for region %s, but this hub runs "
                      "%d intake process(es) (`hub serve --intake-shards`): its devices' "
                      "updates do not reach it", header.round, config.shards_of(self.region),
                      self.region, self.shards)
        # from the body, or from the header for a downlink delta
        shapes = announced_shapes(header, env.tensors, config.transport.max_message_bytes)
        if self.intake.round and not self.intake.final_sent:
            self.forward(final=True)
        self.max_bytes = config.transport.max_message_bytes
        agg = config.round_policy.aggregation
        sim = similarity_for(self.intake.step(SimilarityWeighting), agg.weighting,
                             agg.similarity_floor)
        reports = (ImportanceReports() if config.fedsa_lora.adaptive_split.importance_based
                   else None)
        secure = self.secagg.announce(header, config, shapes, event.received)
        self.intake.announce(header, shapes, config.round_policy,
                             config.fedsa_lora.compression.codec,
                             steps=[sim, intake_dp(config, header.dp_clip_norm), reports],
                             aggregator=secure, only=self.serves)
        if sim is not None and header.is_delta:  # downlink deltas: the change itself
            sim.announce_delta(header.version, header.delta_from or 0,
                               self.decoded_delta(header, env.tensors))
        elif sim is not None:
            sim.announce(header.version, env.tensors)
        if sim is not None and sim.reference is None:
            log.info("round %d: no reference direction yet (first round, new shared set "
                     "or restart): similarity factors are 1", header.round)
        self.dirty = True
        self.deadline = event.received + header.deadline_s + self.deadline_grace_s()
        self.round_started(header.round, event.received)
        log.info("round %d: %d devices selected in %s", header.round,
                 len(self.intake.rounds[header.round].selected), self.region)
        early, self.early = self.early, []
        for ev, update, tensors in early:
            try:
                if len(ev.payload) > self.max_bytes:  # the round's limit, as a re-decode would
                    raise WireError("too_large", f"{len(ev.payload)} bytes > limit "
                                                 f"{self.max_bytes}")
                self.take_update(ev, update, tensors)
            except WireError as err:
                self.refused_update(err, ev)
        self.maybe_forward()

    def serves(self, client: str) -> bool:
        """Whether this process takes ``client``'s updates (an intake process: its shard's)."""
        return True

    def deadline_grace_s(self) -> float:
        """How long after the round's deadline this hub still waits (its leader: for its
        intake processes' final partials, sent at that same deadline)."""
        return 0.0

    def decoded_delta(self, header: AnnounceHeader, tensors: dict[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor] | None:
        """An announcement's downlink delta, decoded (None, counted, when it does not)."""
        try:
            return announced_delta(header, tensors)
        except WireError as err:
            self.counters["downlink.bad_delta"] += 1
            log.warning("round %d: announced delta not decoded (%s): no reference direction",
                        header.round, err)
            return None

    def on_update(self, event: Event) -> None:
        self.counters["updates.received"] += 1
        header, env = decode_message(UpdateHeader, event.payload, max_bytes=self.max_bytes)
        if not self.update_topic_ok(event.topic, header.client):
            raise WireError("wrong_topic", event.topic)
        self.take_update(event, header, env.tensors)

    def update_topic_ok(self, topic: str, client: str) -> bool:
        """Whether ``client``'s update came on its own topic."""
        return topic.endswith(f"/update/{client}")

    def take_update(self, event: Event, header: UpdateHeader,
                    tensors: dict[str, torch.Tensor]) -> None:
        """Accept a decoded update (or keep it for its round's announcement), queueing its
        acknowledgement; raises WireError naming why it was refused."""
        if header.round > self.intake.round:
            if len(self.early) < MAX_EARLY:
                self.early.append((event, header, tensors))
                return
            raise WireError("future", f"round {header.round}")
        ack_topic = self.topics.ack(self.region, header.client)
        secure = self.secagg.handles(header)
        try:
            uid = (self.secagg.accept(header, tensors, self.intake) if secure
                   else self.intake.accept(header, tensors, len(event.payload)))
        except WireError as err:
            self.acks.append((ack_topic, Ack(kind="update", id=header.update_id,
                                             accepted=err.reason == "duplicate",
                                             reason=err.reason)))
            raise
        self.dirty = True
        self.acks.append((ack_topic, Ack(kind="update", id=uid, accepted=True)))
        self.counters["updates.accepted"] += 1
        if self.intake.step(SimilarityWeighting) is not None and not secure:
            self.accepted_log.append(f"{uid} (similarity factor {self.intake.last_factor:.3f})")
        else:
            self.accepted_log.append(uid)
        log.debug("accepted %s", uid)
        self.maybe_forward()

    def secure_tick(self) -> None:
        """Let the secure round (if any) close its stages; when it ended, unmasked or
        failed, forward the region's final partial (an empty one after a failure)."""
        closed = self.secagg.tick(self.intake)
        if closed is None:
            return
        if closed.error is not None:
            self.count_reject(closed.error, closed.what)
        self.dirty = True
        self.forward(final=True)

    def maybe_forward(self) -> None:
        if not self.intake.round:
            return
        streaming = (self.intake.policy.mode == "async" or self.intake.policy.over_select > 1
                     or self.intake.final_sent)
        if not self.intake.final_sent and self.intake.complete:
            self.forward(final=True)
        elif streaming and self.intake.groups:
            self.forward(final=False)

    def forward(self, final: bool) -> None:
        self.log_accepted()  # before the partial that carries them
        for header, sums in self.flush(final):
            pid = header.pid
            if not all(bool(torch.isfinite(t).all()) for t in sums.values()):
                header, sums = self.emptied(pid, header, sums)
            self.outbox[pid] = (header, sums)
            log.info("round %d: partial %s of %d updates (base version %d, rule %s)%s",
                     header.round, pid, header.count, header.base_version,
                     self.intake.policy.aggregation.rule, " final" if header.final else "")
        if final:
            self.deadline = float("inf")
            self.round_done(self.intake.round)
            self.publish_status(round=self.intake.round)
        self.persist()  # before anything leaves, so a crash cannot forget a sent partial
        self.resend(force=True)

    def flush(self, final: bool) -> list[tuple[PartialHeader, dict[str, torch.Tensor]]]:
        """The partials to forward now (the intake's running sums)."""
        return self.intake.flush(final)

    def emptied(self, pid: str, header: PartialHeader, sums: dict[str, torch.Tensor]
                ) -> tuple[PartialHeader, dict[str, torch.Tensor]]:
        """A non-finite partial as an empty one, so the cloud still learns the region's
        round closed (it refuses non-finite sums).  The aggregators refuse any update that
        could overflow their float32 result, so this is a last check before sending: its
        updates are lost, and logged and counted as such."""
        log.error("round %d: partial %s is not finite; forwarding it empty, losing its %d "
                  "updates: %s", header.round, pid, header.count, ", ".join(header.accepted))
        self.counters["partials.non_finite"] += 1
        self.counters["updates.lost"] += header.count
        empty = header.model_copy(update={"count": 0, "weight": 0.0, "accepted": [],
                                          "importance": None, "dp_unclipped": None})
        return empty, {n: torch.zeros_like(t) for n, t in sums.items()}

    def resend(self, force: bool = False) -> None:
        """(Re)send every partial the cloud has not acknowledged yet (an interval: on the
        monotonic clock, which a wall-clock step cannot move)."""
        now = time.monotonic()
        if not force and now < self.next_resend:
            return
        for header, sums in list(self.outbox.values()):
            try:
                nbytes = self.session.publish(self.partial_topic,
                                              encode_message(header, sums), timeout=10)
                self.counters["bytes.forwarded"] += nbytes
                self.counters["partials.sent"] += 1
            except (TimeoutError, ConnectionError) as err:
                log.warning("partial not sent yet: %s", err)
                break
        self.next_resend = now + self.intake.policy.resend_s

    def on_partial_ack(self, event: Event) -> None:
        """The cloud persisted a partial, or refused it (``accepted`` false, with its
        reason): either way it leaves the outbox and is not resent.  A refused partial's
        updates were acknowledged to their devices but are lost for the round: logged with
        their ids and counted (``partials.refused``, ``updates.lost``)."""
        if not event.payload:
            return
        ack = decode_json(Ack, event.payload)
        sent = self.outbox.pop(ack.id, None)
        if sent is not None:
            self.dirty = True
            if not ack.accepted:
                header = sent[0]
                self.counters["partials.refused"] += 1
                self.counters["updates.lost"] += header.count
                log.error("cloud refused partial %s (%s); not resending it; its %d updates "
                          "are lost: %s", ack.id, ack.reason, header.count,
                          ", ".join(header.accepted))
