"""SIGTERM (systemctl stop, docker stop) stops ``hub serve`` like Ctrl-C: a cloud hub that
started its own broker takes that broker down with it instead of leaving it running."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

CONFIG = "federation: {name: sig}\nmodel: {path: tiny-bert, num_labels: 3}\n"


def test_sigterm_stops_the_cloud_hub_and_the_broker_it_started(tmp_path: Path, wait_for_log
                                                               ) -> None:
    (tmp_path / "fed.yaml").write_text(CONFIG)
    log = tmp_path / "cloud.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve", "--role", "cloud", "--federation", "sig",
             "--state-dir", str(tmp_path / "state"), "--config", str(tmp_path / "fed.yaml")],
            stdout=out, stderr=subprocess.STDOUT)
    brokers: list[psutil.Process] = []
    try:
        port = int(wait_for_log(log, r"started \w+ broker at mqtt://127\.0\.0\.1:(\d+)", proc)[1])
        wait_for_log(log, r"connected to mqtt://", proc)  # serving: inside CloudHub.run
        brokers = psutil.Process(proc.pid).children()
        assert len(brokers) == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, log.read_text()  # Ctrl-C's exit status
        assert not brokers[0].is_running(), "the hub's own broker outlived it"
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        assert "Traceback" not in log.read_text()
        assert "lost connection" not in log.read_text()  # disconnected before the broker went
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for broker in brokers:  # only if the test failed: do not leak it into the machine
            if broker.is_running():
                broker.kill()
