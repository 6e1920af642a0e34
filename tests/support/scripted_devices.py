"""Devices a hub end-to-end test plays itself over a real broker: one MQTT session that says
devices are online, publishes hand-made dense updates and records everything it receives,
so the test waits for the message it expects (an announcement, an acknowledgement, a round
summary) while the hub processes under test must keep running.

Why shared: the e2e tests of the partial refusals, of a region served by several intake
processes and of a region without a hub each built the same session, receive loop,
announcement match and update envelope by hand.
"""

from __future__ import annotations

import queue
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch

from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.envelope import Envelope
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    Presence,
    Topics,
    UpdateHeader,
    decode_message,
    encode_json,
    encode_message,
)

T = TypeVar("T")
Match = Callable[[str, bytes], T | None]


class ScriptedDevices:
    """``framed``: topics read as chunked messages (the announcement); ``raw``: the rest
    (acknowledgements, summaries, statuses; MQTT filters allowed)."""

    def __init__(self, broker_url: str, federation: str, *, framed: Iterable[str] = (),
                 raw: Iterable[str] = (), client_id: str = "test-devices") -> None:
        self.topics = Topics(federation)
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.received: list[tuple[str, bytes]] = []
        self.hubs: Sequence[subprocess.Popen[bytes]] = ()  # must run while waiting
        self.session = MqttSession(broker_url, client_id=client_id, clean_session=True)
        for topic in framed:
            self.session.subscribe(topic, self._put)
        for topic in raw:
            self.session.subscribe_raw(topic, self._put)
        self.session.connect()

    def _put(self, topic: str, payload: bytes) -> None:
        self.inbox.put((topic, payload))

    def close(self) -> None:
        self.session.close()

    def mark(self) -> int:
        """Where what arrives from now on starts (``wait_for(after=...)``)."""
        return len(self.received)

    def wait_for(self, what: str, match: Match[T], timeout: float = 180.0,
                 after: int = 0) -> T:
        """The first message received since ``after`` (so far, or within ``timeout``) that
        ``match`` turns into something other than None; fails at once if a hub exited."""
        until = time.monotonic() + timeout
        checked = after
        while True:
            for topic, payload in self.received[checked:]:
                found = match(topic, payload)
                if found is not None:
                    return found
            checked = max(checked, len(self.received))
            if time.monotonic() > until:
                raise AssertionError(f"no {what} within {timeout:g}s")
            try:
                self.received.append(self.inbox.get(timeout=1.0))
            except queue.Empty:
                assert all(p.poll() is None for p in self.hubs), "a hub exited early"

    def running_announcement(self, timeout: float = 180.0) -> tuple[AnnounceHeader, Envelope]:
        """The first announcement of a running round: its header and global tensors."""

        def running(topic: str, payload: bytes) -> tuple[AnnounceHeader, Envelope] | None:
            if topic != self.topics.announce or not payload:
                return None
            header, env = decode_message(AnnounceHeader, payload, max_bytes=64_000_000)
            return (header, env) if header.status == "running" else None

        return self.wait_for("announcement", running, timeout)

    def presence(self, region: str, client: str, online: bool = True) -> None:
        """Say (retained, as a device does) that ``client`` is online or left."""
        self.session.publish_raw(self.topics.presence(region, client), encode_json(
            Presence(client=client, region=region, online=online, ts=time.time())),
            retain=True)


def dense_update(announce: AnnounceHeader, region: str, client: str,
                 delta: dict[str, torch.Tensor], num_samples: int, **fields: Any
                 ) -> tuple[UpdateHeader, dict[str, torch.Tensor], bytes]:
    """``client``'s update of ``announce``'s round with the dense codec: its header, its
    tensors and the envelope a device publishes."""
    enc = get_codec("dense").encode(delta)
    header = UpdateHeader(federation=announce.federation, round=announce.round,
                          client=client, region=region, base_version=announce.version,
                          codec="dense", codec_meta=enc.meta, num_samples=num_samples,
                          **fields)
    return header, enc.tensors, encode_message(header, enc.tensors)
