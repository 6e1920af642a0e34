"""Which regions the cloud may select devices from, and when round 1 may start (pure), and
the cloud hub acting on its events (built, never connected)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import Presence, Topics, encode_json
from hub.checkpoint import CloudState
from hub.cloud import CloudHub
from hub.process import Event
from hub.region_hubs import RegionHubs, may_start, selectable


def test_a_region_never_seen_is_pending_within_the_grace_then_absent() -> None:
    hubs = RegionHubs(grace_s=10.0)
    hubs.on_device("r2", now=100.0)
    hubs.on_device("r2", now=105.0)  # the grace counts from the first device
    assert hubs.pending({"r2"}, now=109.0) == {"r2"} and hubs.absent({"r2"}, 109.0) == set()
    assert hubs.pending({"r2"}, now=110.0) == set() and hubs.absent({"r2"}, 110.0) == {"r2"}


def test_a_hub_that_stopped_is_absent_at_once_and_one_that_serves_never() -> None:
    hubs = RegionHubs(grace_s=10.0)
    assert hubs.on_status("r1", True)
    assert not hubs.on_status("r1", True)  # no change
    hubs.on_device("r1", now=0.0)
    assert hubs.absent({"r1"}, now=1e9) == set() and hubs.pending({"r1"}, 0.0) == set()
    assert hubs.on_status("r1", False)
    assert hubs.absent({"r1"}, now=0.0) == {"r1"}


def test_selectable_keeps_devices_of_served_regions() -> None:
    online = {"a": "r1", "b": "r2", "c": "r1"}
    assert selectable(online, {"r2"}) == {"a": "r1", "c": "r1"}
    assert selectable(online, set()) == online


@pytest.mark.parametrize(("ready", "need", "pending", "since", "now", "start"), [
    (2, 2, 0, 0.0, 1.0, True),  # enough devices, every region settled
    (2, 2, 1, 0.0, 1.0, False),  # a region's hub is still awaited
    (1, 2, 0, 0.0, 1.0, False),  # too few, still waiting
    (1, 2, 0, 0.0, 60.0, True),  # too few, waited long enough
    (0, 2, 0, 0.0, 60.0, False),  # nobody to select
    (2, 2, 1, 0.0, 60.0, True),  # waited long enough for the awaited hub too
    (1, 2, 0, None, 60.0, False),  # the wait has not begun
])
def test_may_start(ready: int, need: int, pending: int, since: float | None, now: float,
                   start: bool) -> None:
    assert may_start(ready=ready, need=need, pending=pending, waited_since=since, now=now,
                     wait_s=60.0) is start


def test_cloud_does_not_select_devices_of_a_region_without_a_hub(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cloud = CloudHub("mqtt://127.0.0.1:1", FederationConfig(), tmp_path, hub_grace_s=0.0)
    topics = Topics(cloud.federation)
    state = CloudState(0, 0, {}, "")  # presence and hub status never touch it
    cloud.handle_event(Event("hub_status", topics.status("regional", "r1"),
                             json.dumps({"online": True}).encode(), 0.0), state)
    for client, region in (("d1", "r1"), ("d2", "r2")):
        cloud.handle_event(Event("presence", topics.presence(region, client), encode_json(
            Presence(client=client, region=region, online=True)), 0.0), state)
    assert cloud.selectable() == {"d1": "r1"}
    with caplog.at_level(logging.WARNING, logger="fedsa.hub.cloud"):
        cloud.note_unserved(1)
    assert "round 1: not selecting 1 device of region r2: no regional hub serves it" \
        in caplog.text
    assert cloud.counters["selection.no_regional_hub"] == 1
    assert cloud.sample(1, cloud.selectable()) == {"r1": ["d1"]}
    # r1's hub dies: its will says offline, and nothing is selectable any more
    cloud.handle_event(Event("hub_status", topics.status("regional", "r1"),
                             json.dumps({"online": False}).encode(), 0.0), state)
    assert cloud.selectable() == {}
    # a status that is not JSON is counted, not believed
    cloud.handle_event(Event("hub_status", topics.status("regional", "r1"), b"{", 0.0), state)
    assert cloud.counters["rejected.bad_status"] == 1
