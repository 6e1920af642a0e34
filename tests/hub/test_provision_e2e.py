"""A whole federation over a provisioned broker: real Mosquitto with the TLS/password/ACL
configuration from ``hub provision``, and as OS processes a cloud hub, two regional hubs
(``hub serve --credentials``) and two device workers hosting four devices, each device with
its own credentials (tiny random BERT, ``scenarios/tiny.yaml`` cut to one round).

If any ACL rule were missing for a topic the protocol uses, the broker would drop those
messages and the round would not complete with every update. Marked slow: about 100 s on a
busy 2-core machine, mostly seven Python processes importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hub.checkpoint import load_checkpoint
from scenarios.config import load_scenario
from scenarios.runner import count_labels, write_worker_specs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"


def test_federation_completes_over_tls_with_per_device_credentials(provisioned_broker, tmp_path):
    config = load_scenario(TINY, ["scenario.devices_per_worker=2"])  # two device workers
    fed_config = config.federation_config(count_labels(config))
    fed_config = fed_config.model_copy(update={"rounds": 1})
    fed = fed_config.federation.name
    regions: dict[str, list[str]] = {}
    for region, client in config.scenario.topology.devices():
        regions.setdefault(region, []).append(client)
    broker = provisioned_broker(fed, regions)

    config_path = tmp_path / "federation.yaml"
    config_path.write_text(yaml.safe_dump(fed_config.model_dump(mode="json"), sort_keys=False))
    (tmp_path / "logs").mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, args: list[str]) -> None:
        log = open(tmp_path / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - child owns it
        procs[name] = subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                                       stderr=subprocess.STDOUT)
        log.close()

    state = tmp_path / "state"
    try:
        spawn("cloud", ["hub", "serve", "--role", "cloud", "--federation", fed,
                        "--state-dir", str(state / "cloud"), "--config", str(config_path),
                        "--broker", broker.url,
                        "--credentials", str(broker.creds_path("hub-cloud"))])
        for region in regions:
            spawn(f"regional-{region}", [
                "hub", "serve", "--role", "regional", "--region", region, "--federation", fed,
                "--state-dir", str(state / f"regional-{region}"), "--broker", broker.url,
                "--credentials", str(broker.creds_path(f"hub-regional-{region}"))])
        for path in write_worker_specs(config, broker.url, tmp_path, time.time()):
            spec = json.loads(path.read_text())
            for device in spec["devices"]:
                device["credentials"] = str(broker.creds_path(device["client"]))
            path.write_text(json.dumps(spec))
            spawn(path.stem, ["edge_client", "worker", "--spec", str(path)])

        cloud = procs["cloud"]
        deadline = time.monotonic() + config.scenario.timeout_s
        while cloud.poll() is None:
            failed = {n: p.returncode for n, p in procs.items() if p.poll() not in (None, 0)}
            assert not failed, _logs(tmp_path, failed)
            assert time.monotonic() < deadline, _logs(tmp_path, {"cloud": None})
            time.sleep(0.5)
        assert cloud.returncode == 0, _logs(tmp_path, {"cloud": cloud.returncode})
        for name, proc in procs.items():  # the rest exit on the final announcement
            assert proc.wait(timeout=60) == 0, _logs(tmp_path, {name: proc.returncode})
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    history = load_checkpoint(state / "cloud").history
    assert len(history) == 1
    summary = history[0]
    clients = sorted(c for cs in regions.values() for c in cs)
    assert sorted(uid.split(":")[0] for uid in summary["applied"]) == clients
    assert summary["applied_step"] and summary["regions_reported"] == sorted(regions)
    assert not summary.get("rejected")


def _logs(out: Path, which: dict[str, int | None]) -> str:
    parts = []
    for name, code in which.items():
        text = (out / "logs" / f"{name}.log").read_text(errors="replace")
        parts.append(f"{name} exited {code}:\n" + "\n".join(text.splitlines()[-20:]))
    return "\n".join(parts)
