"""The regional hub: validates its devices' updates, keeps one running weighted sum per round
and forwards it to the cloud at quorum (every selected device of the region reported) or at
the round deadline, whichever comes first."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fedsa_common.config import RoundPolicySection, TransportSection
from fedsa_common.errors import WireError
from fedsa_common.protocol import (
    AnnounceHeader,
    UpdateHeader,
    check_name,
    decode_message,
    encode_message,
)
from hub.intake import RoundIntake
from hub.process import Event, HubProcess

log = logging.getLogger("fedsa.hub.regional")

MAX_EARLY = 1024  # updates buffered for a round whose announcement has not arrived yet


class RegionalHub(HubProcess):
    role = "regional"

    def __init__(self, broker_url: str, federation: str, region: str, state_dir: Path,
                 payload_limit: int = 1_000_000) -> None:
        super().__init__(broker_url, federation, check_name("region", region), state_dir,
                         payload_limit)
        self.region = region
        self.intake: RoundIntake | None = None
        self.deadline = float("inf")
        self.early: list[Event] = []
        self.max_bytes = TransportSection().max_message_bytes
        self.finished = False

    def run(self) -> int:
        self.listen("announce", self.topics.announce)
        self.listen("update", self.topics.update_filter(self.region))
        self.session.connect()
        self.publish_status(round=None)
        log.info("regional hub %s serving federation %s", self.region, self.federation)
        while not self.finished:
            event = self.next_event(timeout=min(1.0, self.deadline - time.time()))
            if event is not None:
                self.handle(event)
            if self.intake and not self.intake.closed and time.time() >= self.deadline:
                log.info("round %d deadline reached with %d/%d updates", self.intake.announce.round,
                         len(self.intake.accepted), len(self.intake.expected))
                self.forward()
        self.session.close()
        return 0

    def handle(self, event: Event) -> None:
        try:
            if event.kind == "announce":
                self.on_announce(event)
            else:
                self.on_update(event)
        except WireError as err:
            if event.kind == "update" and self.intake is not None and err.reason != "duplicate":
                self.intake.reject(err.reason)
            self.count_reject(err, event.topic)

    def on_announce(self, event: Event) -> None:
        header, env = decode_message(AnnounceHeader, event.payload, max_bytes=self.max_bytes)
        if header.federation != self.federation:
            raise WireError("wrong_federation", header.federation)
        if header.status == "finished":
            if self.intake and not self.intake.closed:
                self.forward()
            log.info("federation finished at round %d", header.round)
            self.publish_status(round=header.round, finished=True)
            self.finished = True
            return
        if self.intake and header.round <= self.intake.announce.round:
            return  # a retained re-delivery of the round we already serve
        if self.intake and not self.intake.closed:
            self.forward()
        config = header.config
        self.max_bytes = TransportSection(**config.get("transport", {})).max_message_bytes
        policy = RoundPolicySection(**config.get("round_policy", {}))
        shapes = {n: tuple(t.shape) for n, t in env.tensors.items()}
        self.intake = RoundIntake(header, self.region, shapes, policy)
        self.deadline = event.received + header.deadline_s
        log.info("round %d: %d devices selected in %s", header.round, len(self.intake.expected),
                 self.region)
        early, self.early = self.early, []
        for ev in early:
            self.handle(ev)
        self.maybe_forward()

    def on_update(self, event: Event) -> None:
        self.counters["updates.received"] += 1
        header, env = decode_message(UpdateHeader, event.payload, max_bytes=self.max_bytes)
        if self.intake is None or header.round > self.intake.announce.round:
            if len(self.early) < MAX_EARLY:
                self.early.append(event)
                return
            raise WireError("future", f"round {header.round}")
        if not event.topic.endswith(f"/update/{header.client}"):
            raise WireError("wrong_topic", event.topic)
        self.intake.offer(header, env.tensors, len(event.payload))
        self.counters["updates.accepted"] += 1
        log.info("accepted %s (%d/%d)", header.update_id, len(self.intake.accepted),
                 len(self.intake.expected))
        self.maybe_forward()

    def maybe_forward(self) -> None:
        if self.intake and not self.intake.closed and self.intake.complete:
            self.forward()

    def forward(self) -> None:
        assert self.intake is not None
        header, sums = self.intake.partial()
        nbytes = self.session.publish(self.topics.partial(self.region),
                                      encode_message(header, sums))
        self.counters["bytes.forwarded"] += nbytes
        self.counters["partials.sent"] += 1
        self.deadline = float("inf")
        log.info("round %d: forwarded partial of %d updates (%d bytes)", header.round,
                 header.count, nbytes)
        self.publish_status(round=header.round, accepted=header.count)
