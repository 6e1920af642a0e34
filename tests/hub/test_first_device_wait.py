"""``min_clients`` counts from the first device's presence, not from the cloud's start
(pure decision, and the cloud hub's bookkeeping: built, never connected)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import Presence, Topics, encode_json
from hub.checkpoint import CloudState
from hub.cloud import CloudHub
from hub.process import Event
from hub.region_hubs import may_start


def test_a_cloud_started_long_before_its_devices_still_waits_for_them() -> None:
    # the cloud started at t=0 with wait_for_clients_s 60; the first device came at t=420
    first_device_at = 420.0
    assert not may_start(ready=1, need=4, pending=0, waited_since=first_device_at, now=421.0,
                         wait_s=60.0)
    assert may_start(ready=1, need=4, pending=0, waited_since=first_device_at, now=480.0,
                     wait_s=60.0)
    assert may_start(ready=4, need=4, pending=0, waited_since=first_device_at, now=421.0,
                     wait_s=60.0)


def test_the_wait_starts_with_the_first_online_presence(tmp_path: Path) -> None:
    cloud = CloudHub("mqtt://127.0.0.1:1", FederationConfig(), tmp_path)
    topics = Topics(cloud.federation)
    state = CloudState(0, 0, {}, "")  # presence never touches it
    assert cloud.first_device_at is None

    def presence(client: str, online: bool) -> None:
        cloud.handle_event(Event("presence", topics.presence("r1", client), encode_json(
            Presence(client=client, region="r1", online=online)), 0.0), state)

    presence("d0", False)  # a goodbye starts nothing
    assert cloud.first_device_at is None
    before = time.time()
    presence("d1", True)
    first = cloud.first_device_at
    assert first is not None and first >= before
    presence("d2", True)
    assert cloud.first_device_at == first  # the first one's time stays
    cloud.handle_event(Event("hub_status", topics.status("regional", "r1"),
                             json.dumps({"online": True}).encode(), 0.0), state)
    assert cloud.selectable() == {"d1": "r1", "d2": "r1"}
