"""A recording stand-in for ``MqttSession``, for tests of what a hub or device publishes.

Devices and hubs take their session as a constructor argument (``session=``); passing this
one instead of overwriting methods of a real, never connected session keeps a test on the
object's own code path and shows everything it sent, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Handler = Callable[[str, bytes], None]


class RecordingSession:
    """Records publishes (``published``: chunked ``publish``; ``raw``: ``publish_raw``;
    ``sent``: both, in order) and subscriptions; connects to nothing."""

    broker_url = "mqtt://recording"

    def __init__(self, payload_limit: int = 1_000_000) -> None:
        self.payload_limit = payload_limit  # what the owner sizes its messages to
        self.published: list[tuple[str, bytes]] = []
        self.raw: list[tuple[str, bytes]] = []
        self.sent: list[tuple[str, bytes]] = []
        self.subscribed: dict[str, Handler] = {}
        self.unsubscribed: list[str] = []
        self.state = "new"  # then connected, closed or dropped

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                timeout: float = 30.0) -> int:
        self.published.append((topic, payload))
        self.sent.append((topic, payload))
        return len(payload)

    def publish_raw(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                    timeout: float = 30.0) -> int:
        self.raw.append((topic, payload))
        self.sent.append((topic, payload))
        return len(payload)

    def publish_raw_many(self, messages: Sequence[tuple[str, bytes]], *, qos: int = 1,
                         retain: bool = False, timeout: float = 30.0) -> int:
        return sum(self.publish_raw(t, p, qos=qos, retain=retain) for t, p in messages)

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1,
                  timeout: float = 30.0) -> None:
        self.subscribed[topic_filter] = handler

    subscribe_raw = subscribe

    def unsubscribe(self, topic_filter: str, handler: Handler | None = None, *,
                    timeout: float = 30.0) -> bool:
        self.unsubscribed.append(topic_filter)
        return self.subscribed.pop(topic_filter, None) is not None

    def connect(self, timeout: float = 30.0, *, report_every_s: float | None = None) -> None:
        self.state = "connected"

    def close(self) -> None:
        self.state = "closed"

    def drop(self) -> None:
        self.state = "dropped"
