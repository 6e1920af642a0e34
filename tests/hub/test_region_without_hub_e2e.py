"""Issue 19, point 2, against a real broker with real processes: ``hub serve`` for the
cloud and for region r1's hub, and ``edge-client join`` for a device of region r2, which
has no hub.  The test plays r1's device itself (presence and a hand-made dense update, no
model).

r2's device comes first, which was enough to start round 1 (min_clients 1) with it alone.
Now the cloud gives r2's hub its grace and announces round 1 to r1's device only, so the
round closes with r1's update instead of running to its deadline waiting for r2's.
``hub status`` names r2 as a region without a hub and lists both devices (``--json``: online,
last selected round, last accepted update), and the r2 device warns that no hub serves its
region."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    Presence,
    RoundSummary,
    Topics,
    UpdateHeader,
    decode_json,
    decode_message,
    encode_json,
    encode_message,
)

pytestmark = pytest.mark.integration

FED = "nohub"
START_S = 1200.0  # a process start under load: importing torch dominates


def config() -> FederationConfig:
    return FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 1},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 2},
        "fedsa_lora": {"compression": {"method": "dense"}},
        "rounds": 1,
        "sampling": {"min_clients": 1, "wait_for_clients_s": 600},
        "round_policy": {"deadline_s": 600, "resend_s": 1},
    })


def devices(url: str) -> dict[str, dict]:
    """``hub status --json``'s device rows, by client."""
    shown = subprocess.run([sys.executable, "-m", "hub", "status", "--federation", FED,
                            "--broker", url, "--timeout", "5", "--json"],
                           capture_output=True, text=True, timeout=START_S)
    assert shown.returncode in (0, 1), shown.stderr
    return {row["client"]: row for row in json.loads(shown.stdout)["devices"]}


def test_a_region_without_a_hub_is_not_selected_and_is_reported(
        tmp_path: Path, broker, start_hubs, wait_for_log) -> None:
    topics = Topics(FED)
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    me = MqttSession(broker.url, client_id="test-r1-device", clean_session=True)
    me.subscribe(topics.announce, lambda t, p: inbox.put((t, p)))
    me.subscribe_raw(topics.summary, lambda t, p: inbox.put((t, p)))
    me.connect()
    cloud, regional = start_hubs(broker.url, config(), region="r1",
                                 cloud_args=("--hub-grace", "2"))
    data = tmp_path / "d2.csv"
    data.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))
    with (tmp_path / "device.log").open("wb") as out:
        device = subprocess.Popen(
            [sys.executable, "-m", "edge_client", "join", "--federation", FED, "--region",
             "r2", "--client-id", "d2", "--data", str(data), "--state-dir",
             str(tmp_path / "d2"), "--broker", broker.url, "--report-every", "1"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_log(tmp_path / "device.log", r"no regional hub serves region r2", device,
                     timeout=START_S)
        me.publish_raw(topics.presence("r1", "d1"), encode_json(
            Presence(client="d1", region="r1", online=True, ts=time.time())), retain=True)

        def next_message(what: str) -> tuple[str, bytes]:
            try:
                return inbox.get(timeout=START_S)
            except queue.Empty:
                raise AssertionError(f"no {what}:\n{(tmp_path / 'cloud.log').read_text()}"
                                     ) from None

        while True:
            topic, payload = next_message("announcement")
            if topic == topics.announce and payload:
                header, env = decode_message(AnnounceHeader, payload, max_bytes=64_000_000)
                if header.status == "running":
                    break
        assert header.selected == {"r1": ["d1"]}  # d2 is online, and not selected
        wait_for_log(tmp_path / "cloud.log",
                     r"round 1: not selecting 1 device of region r2: no regional hub", cloud)

        status = subprocess.run([sys.executable, "-m", "hub", "status", "--federation", FED,
                                 "--broker", broker.url, "--timeout", "5"],
                                capture_output=True, text=True, timeout=START_S)
        assert status.returncode == 1, status.stdout + status.stderr
        assert ("region r2: no regional hub serves it; its 1 online device (d2) cannot be "
                "selected") in status.stdout
        assert "health: DEGRADED: region r2 has no regional hub" in status.stdout
        assert "  r2/d2                  online   last selected round -" in status.stdout
        rows = devices(broker.url)
        assert rows["d1"] == {"client": "d1", "region": "r1", "online": True,
                              "last_selected": 1, "last_accepted": None}
        assert rows["d2"]["online"] is True and rows["d2"]["last_selected"] is None

        shapes = {n: tuple(t.shape) for n, t in env.tensors.items()}
        enc = get_codec("dense").encode({n: torch.full(s, 0.01) for n, s in shapes.items()})
        update = UpdateHeader(federation=FED, round=1, client="d1", region="r1",
                              base_version=header.version, codec="dense",
                              codec_meta=enc.meta, num_samples=10)
        me.publish(topics.update("r1", "d1"), encode_message(update, enc.tensors))
        while True:
            topic, payload = next_message("round summary")
            if topic == topics.summary and payload:
                summary = decode_json(RoundSummary, payload, max_bytes=16_000_000)
                break
        assert summary.selected == 1 and summary.applied == ["d1:1"]
        assert summary.regions_reported == ["r1"]
        for proc in (cloud, regional, device):  # the federation finished: all exit 0
            assert proc.wait(timeout=START_S) == 0
        rows = devices(broker.url)
        assert rows["d1"]["last_accepted"] == 1  # its update went into round 1's step
        assert rows["d2"]["online"] is False  # it said goodbye when the federation ended
    finally:
        me.close()
        if device.poll() is None:
            device.kill()
            device.wait(timeout=30)
