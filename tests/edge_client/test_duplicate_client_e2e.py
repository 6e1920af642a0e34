"""Issue 19, point 6, across machines (two state directories, so the state-dir lock cannot
see it), against a real broker with real processes: a device joins as ``dup``, then a
second one with the same client id.  They displace each other's MQTT connection, the
regional hub sees the first one's session come back, flags the client id (counted, logged,
in its status and ``hub status``) and tells the newer device, which exits 2 naming
--client-id; the first keeps running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsa_common.config import FederationConfig

pytestmark = pytest.mark.integration

FED = "dupfed"
START_S = 1200.0  # a process start under load: importing torch dominates


def join(broker_url: str, data: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "edge_client", "join", "--federation", FED, "--region",
            "r1", "--client-id", "dup", "--data", str(data), "--state-dir", str(state),
            "--broker", broker_url, "--report-every", "1"]


def test_a_second_device_with_the_same_client_id_is_told_to_leave(
        tmp_path: Path, broker, start_hubs, wait_for_log) -> None:
    # two distinct devices are needed before round 1: none starts, nothing trains
    config = FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 1},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 2},
        "rounds": 1, "sampling": {"min_clients": 2, "wait_for_clients_s": 3600}})
    _cloud, regional = start_hubs(broker.url, config, region="r1")
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))
    with (tmp_path / "first.log").open("wb") as out:
        first = subprocess.Popen(join(broker.url, data, tmp_path / "first"), stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for_log(tmp_path / "first.log", r"still waiting for federation", first,
                     timeout=START_S)
        second = subprocess.run(join(broker.url, data, tmp_path / "second"),
                                capture_output=True, text=True, timeout=START_S)
        assert second.returncode == 2, second.stdout + second.stderr
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("error: client id 'dup' is already in use in region r1 by "
                               "another running device"), second.stderr
        assert "--client-id" in last
        assert first.poll() is None  # the first device keeps its id and runs on
        wait_for_log(tmp_path / "regional.log", r"client id dup runs in two sessions",
                     regional)
        shown = subprocess.run([sys.executable, "-m", "hub", "status", "--federation", FED,
                                "--broker", broker.url, "--timeout", "5", "--json"],
                               capture_output=True, text=True, timeout=START_S)
        body = json.loads(shown.stdout)
        [flagged] = body["duplicate_client_ids"]
        assert flagged["client"] == "dup" and flagged["region"] == "r1"
        assert len(flagged["sessions"]) == 2 and flagged["newer"] in flagged["sessions"]
        counters = body["statuses"]["regional/r1"]["counters"]
        assert counters["duplicate_client_ids"] == 1
        text = subprocess.run([sys.executable, "-m", "hub", "status", "--federation", FED,
                               "--broker", broker.url, "--timeout", "5"],
                              capture_output=True, text=True, timeout=START_S).stdout
        assert "client id r1/dup: two running devices claim it" in text
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(timeout=60)
