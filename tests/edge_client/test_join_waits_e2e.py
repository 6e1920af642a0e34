"""``edge-client join`` never waits in silence (issue 19, point 3), through the real
command: an unreachable broker gives "still waiting for broker HOST:PORT (reason)" lines
and, at ``--connect-timeout``, one line naming the broker and exit 2; a federation nobody
announces (a real broker, no cloud) gives "still waiting for federation NAME" lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsa_common.net.broker import free_port

pytestmark = pytest.mark.integration

START_S = 1200.0  # a process start under load: importing torch dominates


def join_args(tmp_path: Path, broker_url: str, federation: str = "fed") -> list[str]:
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))
    return [sys.executable, "-m", "edge_client", "join", "--federation", federation,
            "--region", "north", "--client-id", "dev-0", "--data", str(data),
            "--state-dir", str(tmp_path / "state"), "--broker", broker_url,
            "--report-every", "1"]


def test_an_unreachable_broker_is_reported_while_waiting_then_exits_2(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run([*join_args(tmp_path, f"mqtt://127.0.0.1:{port}"),
                           "--connect-timeout", "3"],
                          capture_output=True, text=True, timeout=START_S)
    assert done.returncode == 2, done.stderr
    assert f"still waiting for broker 127.0.0.1:{port} (connection refused" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not connect to MQTT broker "
                           f"mqtt://127.0.0.1:{port} as 'dev-fed-dev-0' within 3.0s")
    assert "Traceback" not in done.stderr


def test_a_federation_nobody_announces_is_reported(tmp_path: Path, broker,
                                                   wait_for_log) -> None:
    log = tmp_path / "device.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(join_args(tmp_path, broker.url, "ghost"), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_log(log, r"dev-0: still waiting for federation ghost on "
                          r"mqtt://127\.0\.0\.1:\d+: no round announcement yet", proc,
                     timeout=START_S)
    finally:
        proc.kill()
        proc.wait(timeout=30)
