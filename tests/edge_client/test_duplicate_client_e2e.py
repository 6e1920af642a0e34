"""Issue 19, point 6, across machines (two state directories, so the state-dir lock cannot
see it), against a real broker with real processes: a device joins as ``dup``, then a
second one with the same client id.  They displace each other's MQTT connection, a hub sees
the first one's session come back, flags the client id (counted, logged, in its status and
``hub status``) and tells the newer device, which exits 2 naming --client-id; the first
keeps running.  In one region its regional hub does it; with the copies in two regions,
the cloud (the only hub that sees both)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsa_common.federation.config import FederationConfig

pytestmark = pytest.mark.integration

FED = "dupfed"
START_S = 1200.0  # a process start under load: importing torch dominates


def join(broker_url: str, data: Path, state: Path, region: str = "r1") -> list[str]:
    return [sys.executable, "-m", "edge_client", "join", "--federation", FED, "--region",
            region, "--client-id", "dup", "--data", str(data), "--state-dir", str(state),
            "--broker", broker_url, "--report-every", "1"]


def hub_status(broker_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub", "status", "--federation", FED,
                           "--broker", broker_url, "--timeout", "5", *extra],
                          capture_output=True, text=True, timeout=START_S)


@pytest.mark.parametrize(("second_region", "flagging_hub"),
                         [("r1", "regional"), ("r2", "cloud")])
def test_a_second_device_with_the_same_client_id_is_told_to_leave(
        tmp_path: Path, broker, start_hubs, wait_for_log, second_region: str,
        flagging_hub: str) -> None:
    # two distinct devices are needed before round 1: none starts, nothing trains
    config = FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 1},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 2},
        "rounds": 1, "sampling": {"min_clients": 2, "wait_for_clients_s": 3600}})
    cloud, regional = start_hubs(broker.url, config, region="r1")
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))
    with (tmp_path / "first.log").open("wb") as out:
        first = subprocess.Popen(join(broker.url, data, tmp_path / "first"), stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for_log(tmp_path / "first.log", r"still waiting for federation", first,
                     timeout=START_S)
        second = subprocess.Popen(join(broker.url, data, tmp_path / "second", second_region),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        until = time.monotonic() + START_S
        while second.poll() is None and time.monotonic() < until:
            for hub, log in ((cloud, "cloud.log"), (regional, "regional.log")):
                assert hub.poll() is None, (tmp_path / log).read_text()  # a hub crashed
            time.sleep(0.5)
        if second.poll() is None:
            second.kill()
        out, err = second.communicate(timeout=60)
        second_stderr = err
        assert second.returncode == 2, out + err
        last = second_stderr.strip().splitlines()[-1]
        assert last.startswith("error: client id 'dup' is already in use in region r1 by "
                               "another running device"), second_stderr
        assert "--client-id" in last
        assert first.poll() is None  # the first device keeps its id and runs on
        log = "regional.log" if flagging_hub == "regional" else "cloud.log"
        wait_for_log(tmp_path / log, r"client id dup runs in two sessions", regional)
        body = json.loads(hub_status(broker.url, "--json").stdout)
        [flagged] = body["duplicate_client_ids"]
        where = "r1" if second_region == "r1" else "r1,r2"
        assert flagged["client"] == "dup" and flagged["region"] == where
        assert len(flagged["sessions"]) == 2 and flagged["newer"] in flagged["sessions"]
        key = "regional/r1" if flagging_hub == "regional" else "cloud/cloud"
        assert body["statuses"][key]["counters"]["duplicate_client_ids"] == 1
        text = hub_status(broker.url).stdout
        assert f"client id {where}/dup: two running devices claim it" in text
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(timeout=60)
