"""The regional hub's partial resend interval runs on the monotonic clock, so a step of the
wall clock does not resend every unacknowledged partial at once."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import hub.regional as regional
from fedsa_common.protocol import Topics
from hub.regional import RegionalHub


def test_a_wall_clock_step_forward_does_not_resend_partials(monkeypatch):
    hub = RegionalHub.__new__(RegionalHub)  # only what resend() reads: timer logic
    sent: list[str] = []
    hub.session = SimpleNamespace(
        publish=lambda topic, payload, timeout=None: sent.append(topic) or len(payload))
    hub.topics, hub.region = Topics("f"), "eu"
    hub.counters = Counter()
    hub.intake = SimpleNamespace(policy=SimpleNamespace(resend_s=10.0))
    hub.outbox = {"eu:1:0": (object(), {})}
    hub.next_resend = 0.0
    monkeypatch.setattr(regional, "encode_message", lambda header, sums: b"partial")
    hub.resend()
    assert len(sent) == 1
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 3600.0)
    hub.resend()
    assert len(sent) == 1
    hub.resend(force=True)  # sending a new partial still sends at once
    assert len(sent) == 2
