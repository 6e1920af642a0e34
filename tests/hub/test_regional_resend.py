"""The regional hub's resend intervals run on the monotonic clock: a step of the wall clock
neither resends every unacknowledged partial at once nor stops the secure-aggregation
driver's resends to devices."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import hub.regional as regional
from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import AnnounceHeader, Topics
from hub.intake import RegionIntake
from hub.regional import RegionalHub
from hub.secagg_region import RegionSecAgg
from tests.support.sessions import RecordingSession


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


def test_secure_aggregation_resends_survive_a_wall_clock_step_back(monkeypatch):
    """The secure-aggregation driver resends what a device has not answered every
    ``resend_s`` of monotonic time: a wall clock set back an hour (stage deadlines stay
    ahead) does not stop the resends for that hour."""
    config = FederationConfig.model_validate({
        "federation": {"name": "f"},
        "fedsa_lora": {"compression": {"method": "randk", "ratio": 0.5},
                       "privacy": {"secure_aggregation": {"enable": True}}},
        "round_policy": {"resend_s": 2.0}})
    session = RecordingSession()
    driver = RegionSecAgg(session, Topics("f"), "f", "eu",  # type: ignore[arg-type]
                          Counter())
    header = AnnounceHeader(federation="f", round=1, version=0, status="running",
                            selected={"eu": ["d1", "d2", "d3", "d4"]},
                            config=config.model_dump(mode="json"), config_hash="h",
                            deadline_s=600.0, issued_at=time.time(), shared=["a"])
    assert driver.announce(header, config, {"a": (4, 8)}, time.time()) is not None
    assert driver.active is not None
    driver.active.pending = {"d1": ("roster", b"roster for d1")}  # not answered yet
    intake = RegionIntake("eu", "f", round=1)
    driver.tick(intake)
    assert driver.counters["secagg.sent.roster"] == 1
    wall, mono = time.time, time.monotonic
    monkeypatch.setattr(time, "time", lambda: wall() - 3600.0)
    monkeypatch.setattr(time, "monotonic", lambda: mono() + 2.5)  # resend_s later
    driver.tick(intake)
    assert driver.counters["secagg.sent.roster"] == 2
    driver.tick(intake)  # and not again until another resend_s passed
    assert driver.counters["secagg.sent.roster"] == 2
    assert driver.active is not None and driver.active.server.stage == "keys"
