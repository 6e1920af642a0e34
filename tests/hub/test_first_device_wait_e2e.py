"""Issue 19, point 5, against a real broker with the real hubs (``hub serve`` cloud and
regional hub r1, from the ``start_hubs`` fixture): a cloud started well before its devices
still waits ``wait_for_clients_s`` from the first device's presence for ``min_clients``.
The test plays the two devices (their presence only).

Before, the wait counted from the cloud's start: once it had passed, round 1 was announced
the moment the first device came, to that device alone."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest

from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.protocol import AnnounceHeader, Presence, Topics, decode_message, encode_json

pytestmark = pytest.mark.integration

FED = "latecomers"
WAIT_S = 4.0
START_S = 1200.0  # a process start under load: importing torch dominates


def test_round_one_waits_from_the_first_device(tmp_path: Path, broker, start_hubs,
                                               wait_for_log) -> None:
    config = FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 1},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 2},
        "rounds": 1,
        "sampling": {"min_clients": 2, "wait_for_clients_s": WAIT_S},
        "round_policy": {"deadline_s": 600},
    })
    topics = Topics(FED)
    announced: queue.Queue[bytes] = queue.Queue()
    me = MqttSession(broker.url, client_id="test-devices", clean_session=True)
    me.subscribe(topics.announce, lambda _t, p: announced.put(p))
    me.connect()
    try:
        cloud, regional = start_hubs(broker.url, config, region="r1",
                                     cloud_args=("--report-every", "1"))
        wait_for_log(tmp_path / "cloud.log", r"waiting for devices of federation latecomers: "
                                             r"0 of 2 online", cloud, timeout=START_S)
        wait_for_log(tmp_path / "regional.log", r"regional hub r1 serving", regional,
                     timeout=START_S)
        time.sleep(WAIT_S + 1)  # the devices are late: longer than the wait since the start
        for client in ("d1", "d2"):
            me.publish_raw(topics.presence("r1", client), encode_json(
                Presence(client=client, region="r1", online=True, ts=time.time())),
                retain=True)
        while True:
            try:
                payload = announced.get(timeout=START_S)
            except queue.Empty:
                raise AssertionError((tmp_path / "cloud.log").read_text()) from None
            header, _ = decode_message(AnnounceHeader, payload, max_bytes=64_000_000)
            if header.status == "running":
                break
        assert header.selected == {"r1": ["d1", "d2"]}
    finally:
        me.close()
