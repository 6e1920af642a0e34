"""A device's side of secure aggregation over MQTT (the protocol is in fedsa_common.privacy.secagg).

With ``fedsa_lora.privacy.secure_aggregation`` enabled, a selected device, before it
trains: advertises fresh keys, waits for the hub's roster, sends its encrypted shares and
waits for the shares the others sent it, says which dealers' shares it cannot use (its
share check) and waits for the hub's masking set (``begin``).  After training it masks its flat
update vector (dense or the round's random-k values, in fixed point, weighted by its
sample count) and that masked vector replaces the codec's output in the ordinary update
message (``masked_update``), which is persisted, sent and resent like any update.  Hub
messages that arrive later (an unmasking request, resends) are answered from the run loop
(``poll``).

Against a malicious hub the device needs its provisioned signing identity (``hub
provision`` puts it in the device's credentials file): it signs its keys and survivor set
and refuses any roster entry not certified for its client id, so a hub cannot slip it keys
of its own, and any roster member that the round's announcement did not select for the
region, so a hub cannot add provisioned accomplices nobody selected.  A device without an
identity refuses every secure round (logged as an error, counted under
``secagg.no_identity``) unless it was started with the explicit ``allow_unauthenticated``
opt-in, which only defends against a semi-honest hub.

A dealer's shares that do not decrypt or do not match its commitments are refused and
reported in the device's share check (logged, counted under ``secagg.rejected_dealer``);
the device goes on without them.  If any step fails (timeout, too few devices, a
signature that does not authenticate, our own share altered, being left out of the
masking set, a request the protocol refuses) the device sits the round out, reveals
nothing more, and counts the reason in ``counters``; the region's sum then goes on
without it.  The round's secrets live only in memory: a device that restarts during a
round cannot help unmask, which the threshold tolerates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.transport import MqttSession
from fedsa_common.privacy.dp import clip_update
from fedsa_common.privacy.secagg import wire
from fedsa_common.privacy.secagg.config_check import enabled, secagg_params
from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.identity import DeviceIdentity
from fedsa_common.privacy.secagg.messages import (
    MaskingSet,
    Roster,
    ShareDelivery,
    SurvivorSet,
    UnmaskRequest,
)
from fedsa_common.privacy.secagg.params import STAGE_FRACTIONS, RoundContext
from fedsa_common.privacy.secagg.protocol import SecAggClient
from fedsa_common.privacy.secagg.vector import gather, residual, vector_length
from fedsa_common.wire.codecs.common import EncodedDelta, accumulate
from fedsa_common.wire.envelope import Envelope
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, Topics, UpdateHeader

log = logging.getLogger("fedsa.device.secagg")

KEEP_ROUNDS = 4  # rounds whose secrets are kept to answer a late unmasking request
WAIT_SLACK = 0.1  # of the deadline: how much longer than the hub's stage a device waits
MAX_MESSAGE_BYTES = 16_000_000


@dataclass
class DeviceRound:
    ctx: RoundContext
    client: SecAggClient
    version: int
    shapes: dict[str, tuple[int, ...]]
    codec: str
    codec_params: dict[str, Any]
    started: float
    deadline_s: float
    weight_one: bool  # differential privacy: unit weights
    clip_norm: float | None  # central differential privacy: clip what is masked

    def stage_deadline(self, stage: str) -> float:
        return self.started + (STAGE_FRACTIONS[stage] + WAIT_SLACK) * self.deadline_s


class DeviceSecAgg:
    """One per device session; subscribes to the device's ``secagg/down`` topic."""

    def __init__(self, session: MqttSession, topics: Topics, client: str, region: str,
                 federation: str, gone: threading.Event, identity: DeviceIdentity | None = None,
                 allow_unauthenticated: bool = False) -> None:
        if identity is not None and (identity.federation, identity.region, identity.client
                                     ) != (federation, region, client):
            raise ValueError(f"the secagg identity is {identity.federation}/{identity.region}/"
                             f"{identity.client}, not {federation}/{region}/{client}")
        self.identity = identity
        self.allow_unauthenticated = allow_unauthenticated
        self.counters: Counter[str] = Counter()  # why rounds were sat out
        self.session = session
        self.topics = topics
        self.client = client
        self.region = region
        self.federation = federation
        self.gone = gone
        self.inbox: queue.Queue[bytes] = queue.Queue()
        self.rounds: dict[int, DeviceRound] = {}
        self.current: DeviceRound | None = None
        session.subscribe(topics.secagg_down(region, client), self._on_message)

    def _on_message(self, _topic: str, payload: bytes) -> None:  # network thread
        if payload:
            self.inbox.put(payload)

    # ------------------------------------------------------------------ before training
    def begin(self, header: AnnounceHeader, config: FederationConfig, env: Envelope) -> bool:
        """True when the round may go ahead (at once without secure aggregation); False
        when this device must sit it out."""
        self.current = None
        if not enabled(config):
            return True
        if self.identity is None and not self.allow_unauthenticated:
            self.counters["secagg.no_identity"] += 1
            log.error("%s: round %d uses secure aggregation but this device has no signing "
                      "identity (a credentials file from `hub provision`): sitting it out. "
                      "Only a semi-honest hub is defended against without one; opt in "
                      "explicitly to run unauthenticated", self.client, header.round)
            return False
        comp = config.fedsa_lora.compression
        params = comp.round_codec_params(config.federation.seed, header.round)
        shapes = {n: tuple(t.shape) for n, t in env.tensors.items()}
        ctx = RoundContext(self.federation, header.round, self.region,
                           vector_length(shapes, comp.codec, params), secagg_params(config))
        dp = config.fedsa_lora.privacy.differential_privacy
        client = SecAggClient(ctx, self.client, identity=self.identity,
                              selected=header.selected.get(self.region, []))
        r = DeviceRound(ctx, client, header.version, shapes, comp.codec, params, time.time(),
                        header.deadline_s, dp.enable,
                        dp.clip_norm if dp.enable and dp.mode == "central" else None)
        self.rounds[header.round] = r
        for old in sorted(self.rounds)[:-KEEP_ROUNDS]:
            del self.rounds[old]
        try:
            self._send(r, "advertise", r.client.advertise())
            roster = self._wait(r, "roster", "keys")
            if roster is None:
                return False
            self._send(r, "share_keys", r.client.share_keys(roster))
            delivery = self._wait(r, "share_delivery", "shares")
            if delivery is None:
                return False
            check = r.client.receive_shares(delivery)
            self._report_rejected(r)
            self._send(r, "share_check", check)
            masking = self._wait(r, "masking_set", "checks")
            if masking is None:
                return False
            r.client.mask_with(masking)
        except (SecAggError, TimeoutError, ConnectionError) as err:
            self.counters[f"secagg.{getattr(err, 'reason', type(err).__name__)}"] += 1
            log.warning("%s: round %d without secure aggregation: %s", self.client,
                        header.round, err)
            return False
        log.info("%s: round %d keys and shares exchanged (%d members)", self.client,
                 header.round, len(r.client.members))
        self.current = r
        return True

    # ------------------------------------------------------------------ after training
    def masked_update(self, update: UpdateHeader, encoded: EncodedDelta,
                      delta: Mapping[str, torch.Tensor],
                      prior: Mapping[str, torch.Tensor] | None
                      ) -> tuple[UpdateHeader, EncodedDelta]:
        """Replace the codec's update by the masked vector when this round is secure."""
        r = self.current
        if r is None or r.ctx.round != update.round:
            return update, encoded
        acc = accumulate(delta, prior)
        masked = acc if r.clip_norm is None else clip_update(acc, r.clip_norm)[0]
        values = gather(masked, r.shapes, r.codec, r.codec_params)
        weight = 1 if r.weight_one else update.num_samples
        msg = r.client.masked_input(values, weight)
        assert r.client.sent_values is not None
        new_residual = residual(acc, r.client.sent_values, r.shapes, r.codec, r.codec_params)
        header = update.model_copy(update={
            "codec": wire.SECAGG_CODEC, "codec_params": {}, "codec_meta": {},
            "num_samples": 1, "train_loss": None, "train_s": None})
        return header, EncodedDelta(wire.masked_tensors(msg), {}, new_residual)

    # ------------------------------------------------------------------ later messages
    def poll(self) -> None:
        """Answer whatever the hub sent meanwhile (unmasking requests, resends)."""
        while True:
            try:
                payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(payload, want=None)

    # ------------------------------------------------------------------ internals
    def _report_rejected(self, r: DeviceRound) -> None:
        """Log and count each dealer whose shares we could not use (we go on without
        them; the hub leaves a dealer out that too few holders can use)."""
        for dealer, why in sorted(r.client.rejected.items()):
            self.counters["secagg.rejected_dealer"] += 1
            log.warning("%s: round %d: shares of %s refused: %s", self.client, r.ctx.round,
                        dealer, why)

    def _send(self, r: DeviceRound, stage: str, msg: Any) -> None:
        payload = wire.encode(self.federation, r.ctx.round, self.region, self.client, stage,
                              msg)
        self.session.publish(self.topics.secagg_up(self.region, self.client), payload,
                             timeout=10)

    def _wait(self, r: DeviceRound, stage: str, hub_stage: str) -> Any:
        """The hub's ``stage`` message for round ``r``, answering others meanwhile; None
        once the hub's stage deadline (plus slack) passed or the device went away."""
        until = r.stage_deadline(hub_stage)
        while not self.gone.is_set():
            left = until - time.time()
            if left <= 0:
                log.warning("%s: no %s for round %d in time", self.client, stage, r.ctx.round)
                return None
            try:
                payload = self.inbox.get(timeout=min(0.5, left))
            except queue.Empty:
                continue
            got = self._handle(payload, want=(r.ctx.round, stage))
            if got is not None:
                return got
        return None

    def _handle(self, payload: bytes, want: tuple[int, str] | None) -> Any:
        """Decode one hub message; return it if it is ``want``, else answer it here."""
        try:
            header, msg = wire.decode(payload, MAX_MESSAGE_BYTES)
            if (header.federation, header.region, header.client) != (
                    self.federation, self.region, self.client):
                raise WireError("wrong_client", f"{header.region}/{header.client}")
            if want == (header.round, header.stage):
                return msg
            r = self.rounds.get(header.round)
            if r is None:
                return None
            if isinstance(msg, Roster) and r.client.roster is not None:
                self._send(r, "share_keys", r.client.share_keys(msg))  # our answer was lost
            elif isinstance(msg, ShareDelivery) and r.client.stage != "shares":
                self._send(r, "share_check", r.client.receive_shares(msg))  # ours was lost
            elif isinstance(msg, MaskingSet) and r.client.members:
                r.client.mask_with(msg)  # a resend: checked, nothing new
            elif isinstance(msg, SurvivorSet):
                self._send(r, "survivor_signature", r.client.sign_survivors(msg))
            elif isinstance(msg, UnmaskRequest):
                self._send(r, "unmask_response", r.client.unmask(msg))
                log.info("%s: answered the unmasking request of round %d", self.client,
                         header.round)
        except (WireError, TimeoutError, ConnectionError) as err:
            self.counters[f"secagg.{getattr(err, 'reason', type(err).__name__)}"] += 1
            log.warning("%s: secagg message not handled: %s", self.client, err)
        return None
