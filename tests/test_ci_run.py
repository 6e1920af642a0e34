"""``.ci/run`` stops with a clear error when Mosquitto can neither be found nor installed:
the broker-level tests would otherwise be skipped and CI would pass without them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


def test_ci_fails_when_mosquitto_cannot_be_installed(tmp_path):
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    (repo / ".ci").mkdir(parents=True)
    bin_dir.mkdir()
    script = (REPO / ".ci" / "run").read_text()
    # this machine has /usr/sbin/mosquitto: point the script at a path that does not exist
    script = script.replace("/usr/sbin/mosquitto", str(tmp_path / "no-mosquitto"))
    (repo / ".ci" / "run").write_text(script)
    marker = tmp_path / "tests-started"
    fake_tool(bin_dir, "apt-get", "exit 100")  # no network, no root: installing fails
    fake_tool(bin_dir, "chromium", "exit 0")
    fake_tool(bin_dir, "python3", f"touch {marker}; exit 0")  # what would start the tests
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    assert "mosquitto" not in os.listdir(bin_dir)
    done = subprocess.run(["bash", str(repo / ".ci" / "run")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Mosquitto is not installed" in done.stderr
    assert not marker.exists()  # stopped before installing or running anything else
