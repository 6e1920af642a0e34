"""Bytes crossing each site's bridge per round, for N and 2N devices per region.

Not part of the test suite (it measures; tests/hub/test_sites_e2e.py runs the same harness
shrunk and asserts).  From the repository root, with the project's environment active and
Mosquitto installed:

    python -m benchmarks.bridge_bytes                    # 2 regions, 2 and 4 devices each
    python -m benchmarks.bridge_bytes --devices 3 --rounds 3

The deployment is the one ``hub provision --site`` writes, run on this machine
(``hub.site_brokers``): a cloud Mosquitto and one per region, each bridged to the cloud's
over TLS with its bridge account; the cloud hub on the cloud broker; each region's hub and
devices (``scenarios/tiny.yaml``'s tiny BERT, real training) on their site's broker.

An observer on the cloud broker sees every message that reached it; ``hub.bridge_traffic``
attributes them to bridges and rounds (the same count ``scenarios run`` reports for a
scenario with ``topology.sites``).  Payload bytes only (MQTT and TLS framing excluded).
Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from fedsa_common.net.broker import free_port
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.protocol import Topics
from hub.bridge_traffic import Recorder, crossing_per_round
from hub.checkpoint import load_checkpoint
from hub.site_brokers import SiteBrokers, start_site_brokers
from scenarios.config import load_scenario
from scenarios.runner import count_labels, write_worker_specs

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "tiny.yaml"
# topics of the protocol that must never reach the cloud broker in a multi-site deployment
SITE_ONLY = ("/update/", "/secagg/", "/metrics/")


def run_federation(out: Path, per_region: int, rounds: int,
                   regions: tuple[str, ...] = ("north", "south"),
                   devices_per_worker: int = 4, timeout_s: float = 3600.0,
                   echo: Any = print) -> dict[str, Any]:
    """One federation over bridged site brokers; returns the cloud's history, what the
    observers saw at the cloud and at each site, and the bytes per bridge and round.
    ``timeout_s`` bounds the whole run (on a busy 2-core machine five processes importing
    torch take minutes before the first round)."""
    config = load_scenario(TINY, [
        f"scenario.topology.regions={json.dumps({r: per_region for r in regions})}",
        f"scenario.devices_per_worker={devices_per_worker}", f"rounds={rounds}",
        f"scenario.timeout_s={timeout_s}",
        # a round waits for every device (sync mode closes it as soon as all reported), so
        # the bytes of every run count the same devices however busy the machine is
        f"round_policy.deadline_s={timeout_s / 2}"])
    fed_config = config.federation_config(count_labels(config))
    fed = fed_config.federation.name
    devices: dict[str, list[str]] = {}
    for region, client in config.scenario.topology.devices():
        devices.setdefault(region, []).append(client)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    config_path = out / "federation.yaml"
    config_path.write_text(yaml.safe_dump(fed_config.model_dump(mode="json"), sort_keys=False))
    ports = {name: free_port() for name in ("cloud", *regions)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    recorders = {name: Recorder() for name in ("cloud", *regions)}
    sessions: list[MqttSession] = []
    with start_site_brokers(fed, devices, out / "brokers", ports) as brokers:
        try:
            for name, rec in recorders.items():
                where = None if name == "cloud" else name
                s = MqttSession(brokers.url(where), f"observer-{uuid.uuid4().hex[:8]}",
                                clean_session=True, auth=brokers.observer_auth())
                s.subscribe_raw(Topics(fed).all, rec)
                s.connect(timeout=30)
                sessions.append(s)
            _spawn_all(brokers, fed, config, config_path, out, procs)
            _wait(procs, out, config.scenario.timeout_s, echo)
        finally:
            for s in sessions:
                s.close()
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    cloud_seen = recorders["cloud"].messages()
    state = load_checkpoint(out / "state" / "cloud")
    return {
        "federation": fed, "devices_per_region": per_region, "rounds": rounds,
        "history": state.history if state is not None else [],
        "cloud_topics": sorted({t for _, t, _ in cloud_seen}),
        "site_topics": {r: sorted({t for _, t, _ in recorders[r].messages()})
                        for r in regions},
        "leaked": sorted({t for _, t, _ in cloud_seen if any(p in t for p in SITE_ONLY)}),
        "bridges": crossing_per_round(fed, list(regions), cloud_seen),
    }


def _spawn_all(brokers: SiteBrokers, fed: str, config: Any, config_path: Path, out: Path,
               procs: dict[str, subprocess.Popen[bytes]]) -> None:
    def spawn(name: str, args: list[str]) -> None:
        with open(out / "logs" / f"{name}.log", "wb") as log:  # the child keeps its own fd
            procs[name] = subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                                           stderr=subprocess.STDOUT)

    state = out / "state"
    limit = str(config.transport.payload_limit)
    spawn("cloud", ["hub", "serve", "--role", "cloud", "--federation", fed, "--state-dir",
                    str(state / "cloud"), "--config", str(config_path), "--payload-limit",
                    limit, "--credentials", str(brokers.creds_path("hub-cloud"))])
    for region in brokers.spec.sites:
        spawn(f"regional-{region}", [
            "hub", "serve", "--role", "regional", "--region", region, "--federation", fed,
            "--state-dir", str(state / f"regional-{region}"), "--payload-limit", limit,
            "--credentials", str(brokers.creds_path(f"hub-regional-{region}", region))])
    for path in write_worker_specs(config, brokers.url, out, time.time(),
                                   credentials=lambda r, c: brokers.creds_path(c, r)):
        spawn(path.stem, ["edge_client", "worker", "--spec", str(path)])


def _wait(procs: dict[str, subprocess.Popen[bytes]], out: Path, timeout_s: float,
          echo: Any) -> None:
    """Until the cloud hub exits (the federation finished) and the rest followed it."""
    deadline = time.monotonic() + timeout_s
    cloud = procs["cloud"]
    while cloud.poll() is None:
        failed = {n: p.returncode for n, p in procs.items() if p.poll() not in (None, 0)}
        if failed or time.monotonic() > deadline:
            raise RuntimeError(f"federation did not finish ({failed or 'timeout'}):\n"
                               + _tails(out, failed or {"cloud": None}))
        time.sleep(0.5)
    if cloud.returncode != 0:
        raise RuntimeError(_tails(out, {"cloud": cloud.returncode}))
    for name, proc in procs.items():  # the rest exit on the final announcement
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(_tails(out, {name: proc.returncode}))
    echo(f"federation finished in {out}")


def _tails(out: Path, which: dict[str, int | None]) -> str:
    parts = []
    for name, code in which.items():
        text = (out / "logs" / f"{name}.log").read_text(errors="replace")
        parts.append(f"{name} exited {code}:\n" + "\n".join(text.splitlines()[-20:]))
    return "\n".join(parts)


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per (devices per region, region, round)."""
    rows = ["| devices/region | region | round | up bytes (msgs) | down bytes (msgs) |",
            "|---:|---|---|---:|---:|"]
    for res in results:
        for region, per_round in res["bridges"].items():
            for rnd, b in sorted(per_round.items(), key=lambda kv: (kv[0] != "join", kv[0])):
                rows.append(f"| {res['devices_per_region']} | {region} | {rnd} | "
                            f"{b.get('up', 0):,} ({b.get('up_msgs', 0)}) | "
                            f"{b.get('down', 0):,} ({b.get('down_msgs', 0)}) |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="N: devices per region")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="bridge-bytes-"))
    results = []
    for n in (args.devices, 2 * args.devices):
        res = run_federation(base / f"n{n}", n, args.rounds)
        if res["leaked"]:
            raise SystemExit(f"site-only topics reached the cloud broker: {res['leaked']}")
        results.append(res)
    (base / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\n(raw: {base / 'results.json'})")


if __name__ == "__main__":
    main()
