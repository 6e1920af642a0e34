"""SIGTERM stops ``scenarios run`` like Ctrl-C: every process it started (its broker, the
hubs and the device workers, each in a session of its own so a terminal's Ctrl-C does not
reach them) is stopped with it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"

pytestmark = pytest.mark.integration


def test_sigterm_stops_every_process_of_the_scenario(tmp_path: Path, wait_for_log) -> None:
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scenarios", "run", str(TINY), "--out", str(tmp_path / "o"),
             # two device workers (tiny.yaml hosts its four devices in one): all are stopped
             "--set", "scenario.devices_per_worker=2"],
            stdout=out, stderr=subprocess.STDOUT)
    children: list[psutil.Process] = []
    try:
        wait_for_log(log, r"scenario tiny: 4 devices", proc)  # broker, hubs, workers started
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5  # broker, cloud, 2 regional hubs, 2 workers

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, log.read_text()
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [p.pid for p in alive]
        assert not (tmp_path / "o" / "report.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in children:  # only if the test failed: do not leak them
            if child.is_running():
                child.kill()
