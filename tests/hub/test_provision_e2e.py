"""Whole federations over a provisioned broker: real Mosquitto with the TLS/password/ACL
configuration from ``hub provision``, and as OS processes a cloud hub, the regional hubs
(``hub serve --credentials``) and device workers, each device with its own credentials
(tiny random BERT, ``scenarios/tiny.yaml`` cut to one round).

If any ACL rule were missing for a topic the protocol uses, the broker would drop those
messages and the round would not complete with every update.

* In the default suite: one region of five devices under secure aggregation (its own
  topics, and updates, acks, presence, metrics, partials like any round), one of them
  holding a certificate of another authority (a credentials file kept from an earlier
  provisioning).  The regional hub reads the authority's public key from its provisioned
  credentials, leaves that device out of the roster, and the round completes with the
  other four (issue 15: before, every member refused the roster and the region lost it).
* Marked slow (about 100 s on a busy 2-core machine, mostly seven Python processes
  importing torch): two regions, two device workers, plain aggregation.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fedsa_common.net.broker_auth import load_credentials
from fedsa_common.privacy.secagg.identity import Authority
from hub.checkpoint import load_checkpoint
from scenarios.config import ScenarioConfig, load_scenario
from scenarios.runner import count_labels, write_worker_specs

pytestmark = pytest.mark.integration

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"


def run_federation(config: ScenarioConfig, broker, tmp_path: Path,
                   credentials: Callable[[str], Path]) -> dict:
    """Play ``config``'s federation, one round, over the provisioned ``broker``: the hubs
    with their provisioned credentials, each device with ``credentials(client)``; returns
    the cloud's summary of the round."""
    fed_config = config.federation_config(count_labels(config))
    fed_config = fed_config.model_copy(update={"rounds": 1})
    fed = fed_config.federation.name
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
        for region in config.scenario.topology.regions:
            spawn(f"regional-{region}", [
                "hub", "serve", "--role", "regional", "--region", region, "--federation", fed,
                "--state-dir", str(state / f"regional-{region}"), "--broker", broker.url,
                "--credentials", str(broker.creds_path(f"hub-regional-{region}"))])
        for path in write_worker_specs(config, broker.url, tmp_path, time.time()):
            spec = json.loads(path.read_text())
            for device in spec["devices"]:
                device["credentials"] = str(credentials(device["client"]))
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
            assert proc.wait(timeout=120) == 0, _logs(tmp_path, {name: proc.returncode})
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    history = load_checkpoint(state / "cloud").history
    assert len(history) == 1
    return history[0]


def regions_of(config: ScenarioConfig) -> dict[str, list[str]]:
    regions: dict[str, list[str]] = {}
    for region, client in config.scenario.topology.devices():
        regions.setdefault(region, []).append(client)
    return regions


def test_secure_round_over_tls_leaves_out_a_device_certified_by_another_authority(
        provisioned_broker, tmp_path):
    config = load_scenario(TINY, [
        "scenario.topology.regions={north: 5}", "scenario.devices_per_worker=5",
        "fedsa_lora.privacy.secure_aggregation.enable=true",
        "fedsa_lora.compression={method: randk, ratio: 0.5}"])
    regions = regions_of(config)
    broker = provisioned_broker(config.federation.name, regions)
    stale = "north-2"
    kept = load_credentials(broker.creds_path(stale))
    old = Authority.generate().issue(config.federation.name, "north", stale)
    b64 = base64.b64encode
    stale_path = tmp_path / "stale-credentials.json"
    stale_path.write_text(kept.model_copy(update={"secagg": kept.secagg.model_copy(update={
        "signing_key": b64(old.private_bytes).decode(),
        "certificate": b64(old.certificate).decode(),
        "authority": b64(old.authority).decode()})}).model_dump_json())
    stale_path.chmod(0o600)
    assert load_credentials(stale_path).secagg_identity() is not None  # consistent in itself

    summary = run_federation(config, broker, tmp_path,
                             lambda c: stale_path if c == stale else broker.creds_path(c))
    honest = sorted(c for c in regions["north"] if c != stale)
    assert sorted(uid.split(":")[0] for uid in summary["applied"]) == honest
    assert summary["applied_step"] and summary["regions_reported"] == ["north"]
    regional = (tmp_path / "logs" / "regional-north.log").read_text()
    assert f"{stale} left out of the secure round at stage keys" in regional
    assert "unmasked the sum of 4 updates" in regional
    assert "without the authority's public key" not in regional  # read from --credentials


@pytest.mark.slow
def test_federation_completes_over_tls_with_per_device_credentials(provisioned_broker, tmp_path):
    config = load_scenario(TINY, ["scenario.devices_per_worker=2"])  # two device workers
    regions = regions_of(config)
    broker = provisioned_broker(config.federation.name, regions)
    summary = run_federation(config, broker, tmp_path, broker.creds_path)
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
