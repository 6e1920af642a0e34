"""``hub serve`` never waits in silence (issue 19, point 3), through the real command:

* a broker that refuses connections (an unused port) or whose certificate does not verify
  (a real Mosquitto from ``hub provision`` with a CA that did not sign it) gives periodic
  "still waiting for broker HOST:PORT (reason)" lines, then, at ``--connect-timeout``, one
  line naming the broker and exit 2;
* a regional hub of a federation whose cloud never announces says "still waiting for
  federation NAME"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsa_common.net.broker import free_port
from hub.provision_tls import new_ca

pytestmark = pytest.mark.integration

START_S = 1200.0  # a process start under load: importing torch dominates


def serve_regional(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", "serve", "--role", "regional", "--region", "north",
         "--federation", "fed", "--state-dir", str(tmp_path / "regional"),
         "--connect-timeout", "3", "--report-every", "1", *args],
        capture_output=True, text=True, timeout=START_S)


def test_an_unused_port_is_reported_while_waiting_then_exits_2(tmp_path: Path) -> None:
    port = free_port()
    done = serve_regional(tmp_path, "--broker", f"mqtt://127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr
    assert (f"still waiting for broker 127.0.0.1:{port} (connection refused: nothing listens "
            f"on 127.0.0.1:{port}?)") in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not connect to MQTT broker "
                           f"mqtt://127.0.0.1:{port} as 'regional-fed-north' within 3.0s")
    assert "Traceback" not in done.stderr


def test_a_broker_certificate_from_another_ca_is_reported(tmp_path: Path,
                                                          provisioned_broker) -> None:
    broker = provisioned_broker("fed", {"north": ["dev-0"]})
    stranger = tmp_path / "stranger-ca.pem"  # a CA that did not sign the broker's certificate
    stranger.write_bytes(new_ca("fed").cert_pem)
    done = serve_regional(tmp_path, "--broker", f"mqtts://localhost:{broker.port}",
                          "--tls-ca", str(stranger))
    assert done.returncode == 2, done.stderr
    assert (f"still waiting for broker localhost:{broker.port} (TLS handshake failed: the "
            "broker's certificate did not verify") in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"error: could not connect to MQTT broker mqtts://localhost:{broker.port}")


def test_a_federation_nobody_announces_is_reported(tmp_path: Path, broker,
                                                   wait_for_log) -> None:
    log = tmp_path / "regional.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve", "--role", "regional", "--region", "north",
             "--federation", "ghost", "--state-dir", str(tmp_path / "regional"),
             "--broker", broker.url, "--report-every", "1"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_log(log, r"still waiting for federation ghost on mqtt://127\.0\.0\.1:\d+: no "
                          r"round announcement yet", proc, timeout=START_S)
    finally:
        proc.kill()
        proc.wait(timeout=30)
