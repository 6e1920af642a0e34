"""What both hub roles share: an MQTT session whose callbacks only enqueue, one thread that
does the work, counters of every refusal by reason, and a retained status message.

Handlers never run model math on paho's network thread, so a slow decode cannot stall
keep-alives or acknowledgements.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsa_common.federation.config import TransportSection
from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession, Will
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import Presence, Topics
from hub.duplicate_ids import Duplicate, DuplicateWatch

log = logging.getLogger("fedsa.hub")


@dataclass(frozen=True)
class Event:
    kind: str
    topic: str
    payload: bytes
    received: float


class HubProcess:
    role: str = "hub"

    def __init__(
        self,
        broker_url: str,
        federation: str,
        name: str,
        state_dir: Path,
        payload_limit: int = 1_000_000,
        max_message_bytes: int = TransportSection().max_message_bytes,
        *,
        auth: BrokerAuth | None = None,
        connect_timeout_s: float = 300.0,
        report_every_s: float = 30.0,
        session: MqttSession | None = None,
    ) -> None:
        """``session``: the hub's MQTT session, built here when not given (e.g. a test's
        recording fake, which then needs neither the hub's will nor its connect callback)."""
        self.topics = Topics(federation)
        # how long to wait for the broker, and how often to say what the hub still waits
        # for (the broker, the federation's announcement, its devices)
        self.connect_timeout_s = connect_timeout_s
        self.report_every_s = report_every_s
        self.federation = federation
        self.name = name
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.events: queue.Queue[Event] = queue.Queue()
        self.counters: Counter[str] = Counter()
        # read by hub.metrics; set through round_started/round_done
        self.current_round = 0
        self.round_durations: list[float] = []
        # client ids that two running devices claim (hub/duplicate_ids.py), in the status
        self.duplicates = DuplicateWatch()
        self._status_fields: dict[str, Any] = {}  # the last status's, to publish it again
        self._round_started_at: float | None = None
        self._status_topic = self.status_topic()
        self.session = session if session is not None else MqttSession(
            broker_url,
            client_id=f"{self.role}-{federation}-{name}",
            payload_limit=payload_limit,
            max_message_bytes=max_message_bytes,
            will=Will(self._status_topic, json.dumps({"online": False}).encode()),
            on_reject=self._on_frame_reject,
            on_connect=lambda: self.events.put(Event("connected", "", b"", time.time())),
            auth=auth,
        )

    def status_topic(self) -> str:
        """Where this hub's retained status (and its will) goes."""
        return self.topics.status(self.role, self.name)

    def connect(self) -> None:
        """Connect, saying every ``report_every_s`` why the broker is not reached yet;
        ``BrokerUnreachable`` after ``connect_timeout_s``."""
        self.session.connect(timeout=self.connect_timeout_s,
                             report_every_s=self.report_every_s)

    def round_started(self, rnd: int, at: float | None = None) -> None:
        """Monitoring hook: round ``rnd`` began here (announced, or its announcement came)."""
        self.current_round = rnd
        self._round_started_at = time.time() if at is None else at

    def round_done(self, rnd: int, accepted: int | None = None) -> None:
        """Monitoring hook: this hub finished its part of round ``rnd``.

        ``accepted`` is for a hub that does not count accepted updates as they arrive (the
        cloud learns them per round from the partials).
        """
        self.current_round = max(self.current_round, rnd)
        if self._round_started_at is not None:
            self.round_durations.append(time.time() - self._round_started_at)
            self._round_started_at = None
        self.counters["rounds.completed"] += 1
        if accepted:
            self.counters["updates.accepted"] += accepted

    def _on_frame_reject(self, topic: str, err: WireError) -> None:
        self.count_reject(err, topic)

    def count_reject(self, err: WireError, what: str) -> None:
        self.counters[f"rejected.{err.reason}"] += 1
        log.warning("rejected %s: %s", what, err)

    def listen(self, kind: str, topic_filter: str, *, raw: bool = False) -> None:
        def handler(topic: str, payload: bytes) -> None:
            self.events.put(Event(kind, topic, payload, time.time()))

        if raw:
            self.session.subscribe_raw(topic_filter, handler)
        else:
            self.session.subscribe(topic_filter, handler)

    def next_event(self, timeout: float) -> Event | None:
        try:
            return self.events.get(timeout=max(0.01, timeout))
        except queue.Empty:
            return None

    def flag_duplicate(self, presence: Presence) -> Duplicate | None:
        """Check an online presence for a client id that two running devices claim; the
        first time a pair is seen, count it, log it and say it in the status at once."""
        dup = self.duplicates.online(presence.client, presence.session, presence.since,
                                     presence.region)
        if dup is not None and dup.first:
            self.counters["duplicate_client_ids"] += 1
            log.warning("client id %s runs in two sessions (%s in %s, started first, and %s "
                        "in %s): telling the newer one to leave", dup.client, dup.older,
                        dup.older_region, dup.newer, dup.newer_region)
            self.publish_status(**self._status_fields)
        return dup

    def status_extra(self) -> dict[str, Any]:
        """What a role adds to every status it publishes (the cloud: its device table)."""
        return {}

    def publish_status(self, **fields: Any) -> None:
        self._status_fields = fields
        body = {"online": True, "role": self.role, "name": self.name, "ts": time.time()}
        body.update(fields)
        body.update(self.status_extra())
        body.update(self.duplicates.status_fields())
        body["counters"] = dict(self.counters)
        self.session.publish_raw(self._status_topic, json.dumps(body).encode(), retain=True)
