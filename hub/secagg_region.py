"""Secure aggregation inside a regional hub: drives one ``SecAggServer`` per round over MQTT.

With ``fedsa_lora.privacy.secure_aggregation`` enabled, a round in this region runs the
four stages of ``fedsa_common.privacy.secagg.protocol``: keys and shares are exchanged right after
the announcement, devices train, send their masked vectors as ordinary updates (codec
``secagg``, acknowledged like any update) and answer the unmasking request.  The hub then
knows only the sum of the survivors' weighted values and their total weight.  The round's
aggregator in the intake is a ``SecureSum`` (hub/aggregator.py) around the protocol
server, whose result is that sum, so the partial forwarded to the cloud looks exactly like
one built from plain updates (the cloud needs no change).  This driver only moves the
protocol's messages: it is given what it uses of the hub (session, topics, counters) when
built and the intake when an update arrives or a stage may close, and tells the hub by
``tick``'s return value that the region's round is over.

Stages: keys, shares, the share check (each member names the dealers whose shares it
cannot use; a dealer too few holders can use is left out, named and counted under
``secagg.excluded.secagg_bad_dealing``), masked inputs, the consistency check (survivors
sign the survivor set) and unmasking. Each stage closes once every participant that is still online
answered, or at its deadline (``STAGE_FRACTIONS`` of the round's deadline). Hub messages a
device has not answered yet are resent every ``resend_s`` (on the monotonic clock); devices
answer resends idempotently. Fewer than the threshold at any stage fails the region's round:
nothing is forwarded for it except the empty final partial at the round's deadline, and the
hub keeps serving.

Nothing is persisted: a regional hub restarted during a secure round fails that round
(masked updates that reach the restarted hub are refused as a codec mismatch).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.transport import MqttSession
from fedsa_common.privacy.secagg import wire
from fedsa_common.privacy.secagg.config_check import enabled, secagg_params
from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.messages import (
    AdvertiseKeys,
    ShareCheck,
    ShareKeys,
    SurvivorSignature,
    UnmaskResponse,
)
from fedsa_common.privacy.secagg.params import STAGE_FRACTIONS, VSS_MAX_ROSTER, RoundContext
from fedsa_common.privacy.secagg.protocol import AggregateResult, SecAggServer
from fedsa_common.privacy.secagg.vector import vector_length
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, Topics, UpdateHeader
from hub.aggregator import SecureSum, Update
from hub.intake import RegionIntake
from hub.process import Event

log = logging.getLogger("fedsa.hub.secagg")

_ANSWERS = {"share_keys": "roster", "share_check": "share_delivery",
            "survivor_signature": "survivors", "unmask_response": "unmask_request"}
#: (up -> down stage; a masked input, which answers the masking set, comes as an update)
#: How a dealer left out at the share check is counted (``secagg.excluded.<this>``).
BAD_DEALING = "secagg_bad_dealing"
#: Refusals of a participant's own message that leave it out of the rest of the round (it
#: answers resends with the same message): a bad signature or certificate, a share that
#: does not match its dealer's commitment, a malformed message, or a second, different
#: message for a step it took.  Counted once per device and round under
#: ``secagg.excluded.<reason>`` (hub/metrics.py exposes them by reason).
EXCLUDING = frozenset({"secagg_unauthenticated", "secagg_bad_share", "secagg_bad_message",
                       "secagg_conflict"})


@dataclass
class SecureRound:
    """One region's secure round: its aggregator (around the protocol server) plus what the
    transport needs."""

    sum: SecureSum
    version: int
    selected: list[str]
    started: float
    deadline_s: float
    resend_s: float
    pending: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # device -> message
    # when unanswered messages go out again: on the monotonic clock, so a step of the wall
    # clock neither resends everything at once nor stops resending (stage deadlines stay
    # on the wall clock: they are counted from the announcement's arrival time)
    next_resend: float = 0.0
    excluded: dict[str, str] = field(default_factory=dict)  # device -> reason (EXCLUDING)

    @property
    def server(self) -> SecAggServer:
        return self.sum.server

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
        elif s.stage == "checks":
            todo = [c for c in s.delivered if c not in s.checks]
        elif s.stage == "inputs":
            todo = [c for c in s.members if c not in s.inputs]
        elif s.stage == "consistency":
            todo = [c for c in s.survivor_set.survivors  # type: ignore[union-attr]
                    if c not in s.signatures]
        elif s.stage == "unmask":
            todo = [c for c in s.request.signatures  # type: ignore[union-attr]
                    if c not in s.answers]
        else:
            todo = []
        # an excluded device resends the message that was refused: never worth waiting for
        return [c for c in todo if c not in offline and c not in self.excluded]


@dataclass(frozen=True)
class Closed:
    """A secure round that ended: unmasked (``error`` None) or failed at a stage.  Either
    way the hub forwards the region's final partial now, so the cloud need not wait."""

    round: int
    error: SecAggError | None = None
    what: str = ""


class RegionSecAgg:
    """The hub's secure-aggregation driver; inert for rounds without secure aggregation."""

    def __init__(self, session: MqttSession, topics: Topics, federation: str, region: str,
                 counters: Counter[str], authority: bytes | None = None) -> None:
        """``authority``: the provisioning authority's public key (``hub provision`` puts
        it in the regional hub's credentials); with it a device whose certificate or
        signature does not verify is left out of the roster (``SecAggServer``)."""
        self.session = session
        self.authority = authority
        self.told_no_authority = False
        self.topics = topics
        self.federation = federation
        self.region = region
        self.counters = counters  # the hub's metrics
        self.active: SecureRound | None = None
        self.completed = 0  # last round unmasked here: its late answers are expected
        self.secure_rounds: set[int] = set()  # rounds announced with secure aggregation

    # ------------------------------------------------------------------ hooks
    def announce(self, header: AnnounceHeader, config: FederationConfig,
                 shapes: Mapping[str, tuple[int, ...]], received: float) -> SecureSum | None:
        """A new round: start a secure round if the configuration asks for one; returns its
        aggregator for the intake (None for a plain round)."""
        self.active = None
        if not enabled(config):
            return None
        self.secure_rounds = {r for r in self.secure_rounds if r > header.round - 64}
        self.secure_rounds.add(header.round)
        comp = config.fedsa_lora.compression
        params = comp.round_codec_params(config.federation.seed, header.round)
        ctx = RoundContext(self.federation, header.round, self.region,
                           vector_length(shapes, comp.codec, params), secagg_params(config))
        if self.authority is None and not self.told_no_authority:
            self.told_no_authority = True
            log.warning("secure aggregation without the authority's public key (a regional "
                        "hub credentials file from `hub provision`, or --secagg-authority): "
                        "device certificates are checked by the devices only, so one device "
                        "with a bad certificate fails the region's round")
        self.active = SecureRound(
            SecureSum(SecAggServer(ctx, self.authority), shapes, comp.codec, params),
            header.version,
            list(header.selected.get(self.region, [])), received, header.deadline_s,
            config.round_policy.resend_s)
        self.counters["secagg.rounds"] += 1
        log.info("round %d: secure aggregation over %d values, %d devices selected",
                 header.round, ctx.length, len(self.active.selected))
        return self.active.sum

    def handles(self, header: UpdateHeader) -> bool:
        """Whether an update belongs to a secure round (else the intake's): a plain update
        is never folded into a round announced with secure aggregation, even one that
        failed or closed."""
        return header.round in self.secure_rounds

    def on_message(self, event: Event, max_bytes: int) -> None:
        """A device's keys, shares or unmasking answer."""
        header, msg = wire.decode(event.payload, max_bytes)
        r = self.active
        if header.federation != self.federation or header.region != self.region:
            raise WireError("wrong_region", f"{header.federation}/{header.region}")
        if event.topic != self.topics.secagg_up(self.region, header.client):
            raise WireError("wrong_topic", event.topic)
        if header.stage not in wire.UP_STAGES:
            raise WireError("bad_header", f"stage {header.stage} is not sent by devices")
        if r is None or header.round != r.round:
            if header.round == self.completed and header.stage == "unmask_response":
                self.counters["secagg.late_answers"] += 1  # the sum needed only t answers
                return
            raise WireError("stale", f"secagg message for round {header.round}")
        if header.client not in r.selected:
            raise WireError("not_selected", header.client)
        with self._excluding(r, header.client):
            if isinstance(msg, AdvertiseKeys):
                r.server.add_keys(msg)
            elif isinstance(msg, ShareKeys):
                r.server.add_shares(msg)
            elif isinstance(msg, ShareCheck):
                r.server.add_check(msg)
            elif isinstance(msg, SurvivorSignature):
                r.server.add_signature(msg)
            elif isinstance(msg, UnmaskResponse):
                r.server.add_unmask(msg)
        if r.pending.get(header.client, ("",))[0] == _ANSWERS.get(header.stage):
            r.pending.pop(header.client)  # answered: stop resending it

    def accept(self, header: UpdateHeader, tensors: Mapping[str, torch.Tensor],
               intake: RegionIntake) -> str:
        """A masked vector sent as an update, checked against its secure round and accepted
        into the round's aggregator through ``intake``; returns its id like
        ``RegionIntake.accept``."""
        r = self.active
        uid = header.update_id
        intake.check_new(uid)  # a resend after its round was unmasked
        if r is None or header.round != r.round:
            raise WireError("late", f"{uid}: its secure round is closed")
        if header.federation != self.federation:
            raise WireError("wrong_federation", header.federation)
        if header.region != self.region:
            raise WireError("wrong_region", header.region)
        if header.client not in r.selected:
            raise WireError("not_selected", header.client)
        if header.base_version != r.version:
            raise WireError("wrong_base_version", f"{header.base_version} != {r.version}")
        with self._excluding(r, header.client):
            msg = wire.masked_input(header, tensors, r.server.ctx.words)
            intake.accept_into(r.sum, Update(header, {"y": msg.y}, float(header.num_samples)))
        r.pending.pop(header.client, None)
        self.counters["secagg.inputs"] += 1
        return uid

    def tick(self, intake: RegionIntake) -> Closed | None:
        """Close every stage that is complete or past its deadline and resend what devices
        have not answered; returns the round when it ended (unmasked: the intake's
        ``SecureSum`` now holds the sum; or failed)."""
        r = self.active
        if r is None:
            return None
        if intake.round != r.round or intake.final_sent:
            self._drop(r, "the region's round closed first")
            return None
        now = time.time()
        closed = None
        while r.server.stage not in ("done", "failed"):
            stage = r.server.stage
            ready = stage == "unmask" and r.server.can_finish
            if not ready and r.waiting(intake.offline) and now < r.stage_deadline():
                break
            try:
                closed = self._advance(r, intake)
            except SecAggError as err:
                self.counters["secagg.failed"] += 1
                self.counters[f"secagg.failed.{err.reason}"] += 1
                self._drop(r, str(err))
                return Closed(r.round, err, f"secure round {r.round} at stage {stage}")
        if r.pending and time.monotonic() >= r.next_resend:
            for client, (stage, payload) in list(r.pending.items()):
                if client not in intake.offline:
                    self._send(client, stage, payload)
            r.next_resend = time.monotonic() + r.resend_s
        return closed

    # ------------------------------------------------------------------ internals
    @contextmanager
    def _excluding(self, r: SecureRound, client: str) -> Iterator[None]:
        """Count a refusal that leaves ``client`` out of round ``r`` (once per device and
        round, however often it resends), then let the error go on to the hub's handler."""
        try:
            yield
        except SecAggError as err:
            if err.reason in EXCLUDING and client not in r.excluded:
                r.excluded[client] = err.reason
                self.counters[f"secagg.excluded.{err.reason}"] += 1
                log.warning("round %d: %s left out of the secure round at stage %s: %s",
                            r.round, client, r.server.stage, err)
            raise

    def _advance(self, r: SecureRound, intake: RegionIntake) -> Closed | None:
        s = r.server
        if s.stage == "keys":
            roster = s.close_keys()
            log.info("round %d: roster of %d, threshold %d", r.round, len(roster.keys),
                     roster.threshold)
            if s.ctx.params.verifiable_shares and not s.verifiable:
                self.counters["secagg.without_vss"] += 1
                log.warning("round %d: roster of %d is above %d: this round shares without "
                            "verifiable secret sharing (configured on); a dealer's "
                            "inconsistent shares fail the round instead of leaving it out "
                            "(docs/security.md)", r.round, len(roster.keys), VSS_MAX_ROSTER)
            self._post(r, {c: ("roster", roster) for c in roster.members})
        elif s.stage == "shares":
            deliveries = s.close_shares()
            log.info("round %d: %d devices shared their keys", r.round, len(deliveries))
            self._post(r, {c: ("share_delivery", d) for c, d in deliveries.items()})
        elif s.stage == "checks":
            masking = s.close_checks()
            self._name_cheaters(r)
            log.info("round %d: %d devices mask with each other", r.round, len(s.members))
            self._post(r, {c: ("masking_set", m) for c, m in masking.items()})
        elif s.stage == "inputs":
            told = s.close_inputs()
            log.info("round %d: %d masked inputs, %d dropped after sharing", r.round,
                     len(told.survivors), len(told.dropped))
            self._post(r, {c: ("survivors", told) for c in told.survivors})
        elif s.stage == "consistency":
            request = s.close_consistency()
            log.info("round %d: %d survivors signed the survivor set", r.round,
                     len(request.signatures))
            self._post(r, {c: ("unmask_request", request) for c in request.signatures})
        elif s.stage == "unmask":
            return self._deliver(r, r.sum.finish(), intake)
        return None

    def _post(self, r: SecureRound, messages: Mapping[str, tuple[str, Any]]) -> None:
        r.pending = {}
        for client, (stage, msg) in messages.items():
            payload = wire.encode(self.federation, r.round, self.region, client, stage, msg)
            r.pending[client] = (stage, payload)
            self._send(client, stage, payload)
        r.next_resend = time.monotonic() + r.resend_s

    def _send(self, client: str, stage: str, payload: bytes) -> None:
        try:
            self.session.publish(self.topics.secagg_down(self.region, client), payload,
                                 timeout=10)
            self.counters[f"secagg.sent.{stage}"] += 1
        except (TimeoutError, ConnectionError) as err:
            log.warning("secagg %s to %s not sent yet: %s", stage, client, err)

    def _name_cheaters(self, r: SecureRound) -> None:
        """Log and count each dealer left out at the share check because too few holders
        could use its shares (once per device and round, like the other exclusions)."""
        for dealer, refusals in sorted(r.server.cheaters.items()):
            if refusals == 0 or dealer in r.excluded:
                continue  # left out only because its holders were gone: not a cheater
            r.excluded[dealer] = BAD_DEALING
            self.counters[f"secagg.excluded.{BAD_DEALING}"] += 1
            log.warning("round %d: %s left out of the secure round at stage checks: %s: "
                        "%d of %d holders could not use its shares", r.round, dealer,
                        BAD_DEALING, refusals, len(r.server.checks))

    def _deliver(self, r: SecureRound, result: AggregateResult, intake: RegionIntake
                 ) -> Closed:
        """The sum is unmasked (the round's ``SecureSum`` holds it): its survivors are
        accepted, and the region's round is over."""
        intake.mark_accepted(f"{c}:{r.round}" for c in result.survivors)
        self.counters["secagg.completed"] += 1
        self.counters["secagg.dropped"] += len(result.dropped)
        log.info("round %d: unmasked the sum of %d updates (weight %d); %d dropped", r.round,
                 result.count, result.weight, len(result.dropped))
        self.active = None
        self.completed = r.round
        return Closed(r.round)

    def _drop(self, r: SecureRound, why: str) -> None:
        log.warning("round %d: secure aggregation abandoned: %s", r.round, why)
        r.server.fail()
        self.active = None
