"""A passive subscriber that records what crossed the broker during a scenario.

It sees exactly what a hub operator would: announcements, partial-aggregate headers, device
metrics, presence.  The report is built from these observations, not from the processes'
own claims about themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    Ack,
    AnnounceHeader,
    Metrics,
    PartialHeader,
    Presence,
    RoundSummary,
    Topics,
    decode_json,
    decode_message,
)

log = logging.getLogger("fedsa.monitor")


@dataclass
class Observations:
    announces: dict[int, AnnounceHeader] = field(default_factory=dict)
    finished: AnnounceHeader | None = None
    partials: dict[int, list[PartialHeader]] = field(default_factory=lambda: defaultdict(list))
    metrics: dict[int, dict[str, Metrics]] = field(default_factory=lambda: defaultdict(dict))
    summaries: dict[int, RoundSummary] = field(default_factory=dict)
    announced_at: dict[int, float] = field(default_factory=dict)  # local receive times
    acked: dict[str, float] = field(default_factory=dict)  # update ids a hub acknowledged
    # partial ids (region:round:seq) the cloud acknowledged as taken, when first seen
    partials_acked: dict[str, float] = field(default_factory=dict)
    presence: list[tuple[float, str, bool]] = field(default_factory=list)


class Monitor:
    """Observes one broker, or a site topology: the cloud broker (``broker_url``) for the
    round's announcements, partials and summaries, each site broker (``site_urls``, region
    -> URL) for its devices' metrics, acks and presence, which never cross a bridge.  Each
    topic is read at one broker only, so nothing bridged is counted twice."""

    def __init__(self, broker_url: str, federation: str,
                 on_round_done: Callable[[int], None] | None = None, *,
                 auth: BrokerAuth | None = None, site_urls: dict[str, str] | None = None
                 ) -> None:
        self.topics = Topics(federation)
        self.obs = Observations()
        self.lock = threading.Lock()
        self.on_round_done = on_round_done
        self.session = self._session(broker_url, f"monitor-{federation}", auth)
        self.session.subscribe(self.topics.announce, self._announce)
        self.session.subscribe(self.topics.partial_filter, self._partial)
        self.session.subscribe_raw(self.topics.summary, self._summary)
        self.sessions = [self.session]
        devices_at = [self._session(url, f"monitor-{federation}-{region}", auth)
                      for region, url in (site_urls or {}).items()]
        self.sessions += devices_at
        for session in devices_at or [self.session]:
            session.subscribe_raw(self.topics.metrics_filter, self._metrics)
            session.subscribe_raw(f"{self.topics.base}/ack/+/+", self._ack)
            session.subscribe_raw(self.topics.presence_filter, self._presence)

    @staticmethod
    def _session(url: str, client_id: str, auth: BrokerAuth | None) -> MqttSession:
        return MqttSession(url, client_id=client_id, clean_session=True, auth=auth,
                           payload_limit=1_000_000, max_message_bytes=64_000_000)

    def start(self) -> None:
        for session in self.sessions:
            session.connect()

    def stop(self) -> None:
        for session in self.sessions:
            session.close()

    def _announce(self, _topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            header, _ = decode_message(AnnounceHeader, payload, max_bytes=64_000_000)
        except WireError as err:
            log.warning("monitor: bad announcement: %s", err)
            return
        done: int | None = None
        with self.lock:
            if header.status == "finished":
                if self.obs.finished is None:
                    self.obs.finished = header
                    done = header.round
            elif header.round not in self.obs.announces:
                self.obs.announces[header.round] = header
                self.obs.announced_at[header.round] = time.time()
                done = header.round - 1 if header.round > 1 else None
        if done and self.on_round_done:
            self.on_round_done(done)

    def _partial(self, _topic: str, payload: bytes) -> None:
        try:
            header, _ = decode_message(PartialHeader, payload, max_bytes=64_000_000)
        except WireError as err:
            log.warning("monitor: bad partial: %s", err)
            return
        with self.lock:
            self.obs.partials[header.round].append(header)

    def _metrics(self, _topic: str, payload: bytes) -> None:
        try:
            m = decode_json(Metrics, payload)
        except WireError as err:
            log.warning("monitor: bad metrics: %s", err)
            return
        with self.lock:
            self.obs.metrics[m.round][m.client] = m

    def _summary(self, _topic: str, payload: bytes) -> None:
        try:
            summary = decode_json(RoundSummary, payload, max_bytes=16_000_000)
        except WireError as err:
            log.warning("monitor: bad summary: %s", err)
            return
        with self.lock:
            self.obs.summaries[summary.round] = summary

    def _ack(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            ack = decode_json(Ack, payload)
        except WireError:
            return
        if "/ack/cloud/" in topic:
            if ack.kind == "partial" and ack.accepted and ack.reason is None:
                with self.lock:
                    self.obs.partials_acked.setdefault(ack.id, time.time())
            return
        if ack.kind == "update" and ack.accepted:
            with self.lock:
                self.obs.acked.setdefault(ack.id, time.time())

    def _presence(self, _topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            p = decode_json(Presence, payload)
        except WireError:
            return
        with self.lock:
            self.obs.presence.append((time.time(), p.client, p.online))

    def round_started(self, rnd: int) -> float | None:
        with self.lock:
            return self.obs.announced_at.get(rnd)

    def partial_acked(self, rnd: int, n: int) -> float | None:
        """When the cloud acknowledged (as taken) the ``n``-th partial of round ``rnd``;
        None before it did."""
        with self.lock:
            times = sorted(t for pid, t in self.obs.partials_acked.items()
                           if pid.split(":")[1:2] == [str(rnd)])
        return times[n - 1] if len(times) >= n else None
