"""Secure aggregation inside a regional hub: drives one ``SecAggServer`` per round over MQTT.

With ``fedsa_lora.privacy.secure_aggregation`` enabled, a round in this region runs the
four stages of ``fedsa_common.secagg.protocol``: keys and shares are exchanged right after
the announcement, devices train, send their masked vectors as ordinary updates (codec
``secagg``, acknowledged like any update) and answer the unmasking request.  The hub then
knows only the sum of the survivors' weighted values and their total weight, which it puts
into the intake as the round's running sum, so the partial forwarded to the cloud looks
exactly like one built from plain updates (the cloud needs no change).

Each stage closes once every participant that is still online answered, or at its
deadline (``STAGE_FRACTIONS`` of the round's deadline).  Hub messages a device has not
answered yet are resent every ``resend_s``; devices answer resends idempotently.  Fewer
than the threshold at any stage fails the region's round: nothing is forwarded for it
except the empty final partial at the round's deadline, and the hub keeps serving.

Nothing is persisted: a regional hub restarted during a secure round fails that round
(masked updates that reach the restarted hub are refused as a codec mismatch).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fedsa_common.config import FederationConfig
from fedsa_common.errors import WireError
from fedsa_common.protocol import AnnounceHeader, Topics, UpdateHeader
from fedsa_common.secagg import wire
from fedsa_common.secagg.config_check import enabled, secagg_params
from fedsa_common.secagg.errors import SecAggError
from fedsa_common.secagg.messages import AdvertiseKeys, ShareKeys, UnmaskResponse
from fedsa_common.secagg.params import STAGE_FRACTIONS, RoundContext
from fedsa_common.secagg.protocol import AggregateResult, SecAggServer
from fedsa_common.secagg.vector import scatter, vector_length
from fedsa_common.transport import MqttSession
from hub.aggregation import RunningSum
from hub.intake import RegionIntake
from hub.process import Event

log = logging.getLogger("fedsa.hub.secagg")

_ANSWERS = {"share_keys": "roster", "unmask_response": "unmask_request"}  # up -> down stage


@dataclass
class SecureRound:
    """One region's secure round: the protocol server plus what the transport needs."""

    server: SecAggServer
    version: int
    selected: list[str]
    shapes: dict[str, tuple[int, ...]]
    codec: str
    codec_params: dict[str, Any]
    started: float
    deadline_s: float
    resend_s: float
    pending: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # device -> message
    next_resend: float = 0.0

    @property
    def round(self) -> int:
        return self.server.ctx.round

    def stage_deadline(self) -> float:
        return self.started + STAGE_FRACTIONS.get(self.server.stage, 1.0) * self.deadline_s

    def waiting(self, offline: set[str]) -> list[str]:
        """Participants of the current stage that have not answered and are not gone."""
        s = self.server
        if s.stage == "keys":
            todo = [c for c in self.selected if c not in s.keys]
        elif s.stage == "shares":
            todo = [c for c in s.roster.members if c not in s.shares]  # type: ignore[union-attr]
        elif s.stage == "inputs":
            todo = [c for c in s.members if c not in s.inputs]
        elif s.stage == "unmask":
            todo = [c for c in s.request.survivors  # type: ignore[union-attr]
                    if c not in s.answers]
        else:
            todo = []
        return [c for c in todo if c not in offline]


class RegionHost(Protocol):
    """What the driver uses of its regional hub (``hub.regional.RegionalHub``).

    Declared here, structurally, so that the hub can import this module to build its driver
    without this module importing the hub: the two would import each other."""

    federation: str
    region: str
    topics: Topics
    session: MqttSession
    counters: Counter[str]
    intake: RegionIntake
    max_bytes: int
    dirty: bool

    def count_reject(self, err: WireError, what: str) -> None: ...

    def forward(self, final: bool) -> None: ...


class RegionSecAgg:
    """The hub's secure-aggregation driver; inert for rounds without secure aggregation."""

    def __init__(self, hub: RegionHost) -> None:
        self.hub = hub
        self.active: SecureRound | None = None
        self.completed = 0  # last round unmasked here: its late answers are expected
        self.secure_rounds: set[int] = set()  # rounds announced with secure aggregation

    # ------------------------------------------------------------------ hooks
    def announce(self, header: AnnounceHeader, config: FederationConfig,
                 shapes: Mapping[str, tuple[int, ...]], received: float) -> None:
        """A new round: start a secure round if the configuration asks for one."""
        self.active = None
        if not enabled(config):
            return
        self.secure_rounds = {r for r in self.secure_rounds if r > header.round - 64}
        self.secure_rounds.add(header.round)
        comp = config.fedsa_lora.compression
        params = comp.round_codec_params(config.federation.seed, header.round)
        ctx = RoundContext(self.hub.federation, header.round, self.hub.region,
                           vector_length(shapes, comp.codec, params), secagg_params(config))
        self.active = SecureRound(
            SecAggServer(ctx), header.version, list(header.selected.get(self.hub.region, [])),
            dict(shapes), comp.codec, params, received, header.deadline_s,
            config.round_policy.resend_s)
        self.hub.counters["secagg.rounds"] += 1
        log.info("round %d: secure aggregation over %d values, %d devices selected",
                 header.round, ctx.length, len(self.active.selected))

    def handles(self, header: UpdateHeader) -> bool:
        """Whether an update belongs to a secure round (else the intake's): a plain update
        is never folded into a round announced with secure aggregation, even one that
        failed or closed."""
        return header.round in self.secure_rounds

    def on_message(self, event: Event) -> None:
        """A device's keys, shares or unmasking answer."""
        header, msg = wire.decode(event.payload, self.hub.max_bytes)
        hub, r = self.hub, self.active
        if header.federation != hub.federation or header.region != hub.region:
            raise WireError("wrong_region", f"{header.federation}/{header.region}")
        if event.topic != hub.topics.secagg_up(hub.region, header.client):
            raise WireError("wrong_topic", event.topic)
        if header.stage not in wire.UP_STAGES:
            raise WireError("bad_header", f"stage {header.stage} is not sent by devices")
        if r is None or header.round != r.round:
            if header.round == self.completed and header.stage == "unmask_response":
                hub.counters["secagg.late_answers"] += 1  # the sum needed only t answers
                return
            raise WireError("stale", f"secagg message for round {header.round}")
        if header.client not in r.selected:
            raise WireError("not_selected", header.client)
        if isinstance(msg, AdvertiseKeys):
            r.server.add_keys(msg)
        elif isinstance(msg, ShareKeys):
            r.server.add_shares(msg)
        elif isinstance(msg, UnmaskResponse):
            r.server.add_unmask(msg)
        if r.pending.get(header.client, ("",))[0] == _ANSWERS.get(header.stage):
            r.pending.pop(header.client)  # answered: stop resending it
        self.tick()

    def offer(self, header: UpdateHeader, tensors: Mapping[str, torch.Tensor]) -> str:
        """A masked vector sent as an update; returns its id like ``RegionIntake.offer``."""
        r = self.active
        uid = header.update_id
        if uid in self.hub.intake.accepted_ids:  # a resend after its round was unmasked
            self.hub.intake.duplicates += 1
            raise WireError("duplicate", uid)
        if r is None or header.round != r.round:
            raise WireError("late", f"{uid}: its secure round is closed")
        if header.federation != self.hub.federation:
            raise WireError("wrong_federation", header.federation)
        if header.region != self.hub.region:
            raise WireError("wrong_region", header.region)
        if header.client not in r.selected:
            raise WireError("not_selected", header.client)
        if header.base_version != r.version:
            raise WireError("wrong_base_version", f"{header.base_version} != {r.version}")
        msg = wire.masked_input(header, tensors, r.server.ctx.words)
        if not r.server.add_input(msg):
            self.hub.intake.duplicates += 1
            raise WireError("duplicate", uid)
        r.pending.pop(header.client, None)
        self.hub.counters["secagg.inputs"] += 1
        return uid

    def tick(self) -> None:
        """Close every stage that is complete or past its deadline, resend what devices
        have not answered, and hand a finished sum to the intake."""
        r = self.active
        hub = self.hub
        if r is None:
            return
        if hub.intake.round != r.round or hub.intake.final_sent:
            self._drop(r, "the region's round closed first")
            return
        now = time.time()
        offline = hub.intake.offline
        while r.server.stage not in ("done", "failed"):
            stage = r.server.stage
            ready = stage == "unmask" and r.server.can_finish
            if not ready and r.waiting(offline) and now < r.stage_deadline():
                break
            try:
                self._advance(r)
            except SecAggError as err:
                hub.counters["secagg.failed"] += 1
                hub.count_reject(err, f"secure round {r.round} at stage {stage}")
                self._drop(r, str(err))
                hub.forward(final=True)  # an empty final partial: the cloud need not wait
                return
        if r.pending and now >= r.next_resend:
            for client, (stage, payload) in list(r.pending.items()):
                if client not in offline:
                    self._send(client, stage, payload)
            r.next_resend = now + r.resend_s

    # ------------------------------------------------------------------ internals
    def _advance(self, r: SecureRound) -> None:
        s = r.server
        if s.stage == "keys":
            roster = s.close_keys()
            log.info("round %d: roster of %d, threshold %d", r.round, len(roster.keys),
                     roster.threshold)
            self._post(r, {c: ("roster", roster) for c in roster.members})
        elif s.stage == "shares":
            deliveries = s.close_shares()
            log.info("round %d: %d devices shared their keys", r.round, len(deliveries))
            self._post(r, {c: ("share_delivery", d) for c, d in deliveries.items()})
        elif s.stage == "inputs":
            request = s.close_inputs()
            log.info("round %d: %d masked inputs, %d dropped after sharing", r.round,
                     len(request.survivors), len(request.dropped))
            self._post(r, {c: ("unmask_request", request) for c in request.survivors})
        elif s.stage == "unmask":
            self._deliver(r, s.finish())

    def _post(self, r: SecureRound, messages: Mapping[str, tuple[str, Any]]) -> None:
        r.pending = {}
        for client, (stage, msg) in messages.items():
            payload = wire.encode(self.hub.federation, r.round, self.hub.region, client, stage,
                                  msg)
            r.pending[client] = (stage, payload)
            self._send(client, stage, payload)
        r.next_resend = time.time() + r.resend_s

    def _send(self, client: str, stage: str, payload: bytes) -> None:
        try:
            self.hub.session.publish(self.hub.topics.secagg_down(self.hub.region, client),
                                     payload, timeout=10)
            self.hub.counters[f"secagg.sent.{stage}"] += 1
        except (TimeoutError, ConnectionError) as err:
            log.warning("secagg %s to %s not sent yet: %s", stage, client, err)

    def _deliver(self, r: SecureRound, result: AggregateResult) -> None:
        """Put the unmasked sum into the intake as the round's running sum and forward it."""
        hub, intake = self.hub, self.hub.intake
        sums = scatter(result.sums, r.shapes, r.codec, r.codec_params)
        ids = [f"{c}:{r.round}" for c in result.survivors]
        intake.groups[r.version] = RunningSum(sums, float(result.weight), result.count)
        intake.group_ids[r.version] = ids
        intake.mark_accepted(ids)
        hub.counters["secagg.completed"] += 1
        hub.counters["secagg.dropped"] += len(result.dropped)
        log.info("round %d: unmasked the sum of %d updates (weight %d); %d dropped", r.round,
                 result.count, result.weight, len(result.dropped))
        self.active = None
        self.completed = r.round
        hub.dirty = True
        hub.forward(final=True)

    def _drop(self, r: SecureRound, why: str) -> None:
        log.warning("round %d: secure aggregation abandoned: %s", r.round, why)
        r.server.fail()
        self.active = None
