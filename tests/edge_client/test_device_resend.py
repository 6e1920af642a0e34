"""A device's resend timer measures intervals on the monotonic clock: a step of the wall
clock (NTP, a suspended laptop's clock being set) neither fires resends early nor delays
them."""

from __future__ import annotations

import time
from types import SimpleNamespace

from edge_client.device import Device
from fedsa_common.protocol import Topics


class CountingSession:
    def __init__(self) -> None:
        self.published: list[str] = []

    def publish(self, topic: str, payload: bytes, timeout: float | None = None) -> int:
        self.published.append(topic)
        return len(payload)


def pending_device() -> tuple[Device, CountingSession]:
    """Only the fields resend_pending reads: timer logic, no broker or model needed."""
    dev = Device.__new__(Device)
    session = CountingSession()
    dev.spec = SimpleNamespace(client="d1", region="eu")
    dev.topics = Topics("f")
    dev.session = session
    dev.pending, dev.pending_round = b"update", 1
    dev.backoff, dev.next_resend = 5.0, 0.0  # due now
    return dev, session


def test_a_wall_clock_step_forward_does_not_fire_a_resend(monkeypatch):
    dev, session = pending_device()
    dev.resend_pending()
    assert len(session.published) == 1  # due: sent, next one in about 10 s
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 3600.0)  # the clock jumps an hour
    dev.resend_pending()
    assert len(session.published) == 1
