"""SIGTERM stops ``edge-client join`` like Ctrl-C: the device leaves cleanly (it publishes
its own offline presence, not the broker's last will) and the process exits instead of
waiting forever on its device thread; and it starts without third-party noise."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from fedsa_common.net.transport import MqttSession

pytestmark = pytest.mark.integration


def test_sigterm_makes_the_device_leave_cleanly(tmp_path: Path, broker, wait_for_log) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))
    log = tmp_path / "device.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_client", "join", "--federation", "sig", "--region",
             "north", "--client-id", "dev-0", "--data", str(data), "--state-dir",
             str(tmp_path / "state"), "--broker", broker.url],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_log(log, r"dev-sig-dev-0 connected to", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "devices leave after their current step" in text
    # the device imported bitsandbytes (through quant) before it connected, which printed
    # its "pip install kernels" hint on every start until the CLI filtered it (issue 19.7)
    assert "pip install kernels" not in text and "Traceback" not in text, text

    got = threading.Event()
    presence: list[dict] = []

    def keep(_topic: str, payload: bytes) -> None:
        presence.append(json.loads(payload))
        got.set()

    with MqttSession(broker.url, client_id=f"t-{uuid.uuid4().hex[:8]}") as spy:
        spy.subscribe_raw("fedsa/sig/presence/north/dev-0", keep)  # retained
        spy.connect()
        assert got.wait(10)
    assert presence[-1]["online"] is False
    assert presence[-1]["ts"] > 0  # said by the device; the will carries no time
