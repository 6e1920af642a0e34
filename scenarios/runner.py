"""Plays a scenario against real processes: broker, cloud hub, regional hubs and device
workers each run as their own OS process, exactly as they would be deployed; the runner only
starts them, watches the broker, and writes the report.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from edge_client.data import load_pool
from fedsa_common.atomic import write_json
from fedsa_common.broker import BrokerProcess, start_broker
from scenarios.config import ScenarioConfig
from scenarios.monitor import Monitor
from scenarios.report import build_report, round_row

log = logging.getLogger("fedsa.scenarios")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass
class Cluster:
    """Every process the runner started, so that all of them are stopped on any exit."""

    out: Path
    procs: list[Proc] = field(default_factory=list)
    broker: BrokerProcess | None = None

    def spawn(self, name: str, args: list[str]) -> Proc:
        log_file = open(self.out / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop
        popen = subprocess.Popen([sys.executable, "-m", *args], stdout=log_file,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log_file)
        self.procs.append(proc)
        return proc

    def failed(self) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() not in (None, 0)]

    def stop(self, grace_s: float = 10.0) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        until = time.time() + grace_s
        for p in self.procs:
            try:
                p.popen.wait(timeout=max(0.1, until - time.time()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            p.log.close()
        if self.broker is not None:
            self.broker.stop()


def log_tail(proc: Proc, lines: int = 15) -> str:
    text = (proc.log.name and Path(proc.log.name).read_text(errors="replace")) or ""
    return "\n".join(text.splitlines()[-lines:])


def count_labels(config: ScenarioConfig) -> int:
    return len(load_pool(config.scenario.device_data(0)).label_names)


def write_worker_specs(config: ScenarioConfig, broker_url: str, out: Path) -> list[Path]:
    sc = config.scenario
    devices = sc.topology.devices()
    paths = []
    for w, start in enumerate(range(0, len(devices), sc.devices_per_worker)):
        chunk = devices[start : start + sc.devices_per_worker]
        spec = {
            "broker": broker_url,
            "federation": config.federation.name,
            "threads": sc.threads_per_worker,
            "payload_limit": config.transport.payload_limit,
            "devices": [
                {
                    "client": client,
                    "region": region,
                    "data": sc.device_data(start + i).model_dump(mode="json"),
                    "state_dir": str(out / "state" / "devices" / client),
                }
                for i, (region, client) in enumerate(chunk)
            ],
        }
        path = out / "workers" / f"worker-{w}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec, indent=2))
        paths.append(path)
    return paths


def print_progress(monitor: Monitor, total: int, echo: Callable[[str], None]
                   ) -> Callable[[int], None]:
    def done(rnd: int) -> None:
        with monitor.lock:
            row = round_row(monitor.obs, rnd)
        acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        echo(f"round {rnd}/{total}: accuracy {acc}, {row['accepted']}/{row['participants']} "
             f"updates, {row['bytes_up']:,} bytes up, {row['duration_s'] or 0:.1f}s")

    return done


def run_scenario(config: ScenarioConfig, out: Path, broker_url: str | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one scenario to completion and return (and write) its report."""
    sc = config.scenario
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    started = time.time()
    num_labels = count_labels(config)
    fed_config = config.federation_config(num_labels)
    config_path = out / "federation.yaml"
    config_path.write_text(yaml.safe_dump(fed_config.model_dump(mode="json"), sort_keys=False))
    cluster = Cluster(out)
    fed = fed_config.federation.name
    monitor: Monitor | None = None
    try:
        if broker_url is None:
            kind = sc.broker if not sc.broker.startswith("mqtt://") else None
            if kind is None:
                broker_url = sc.broker
            else:
                cluster.broker = start_broker(kind, log_path=out / "logs" / "broker.log")  # type: ignore[arg-type]
                broker_url = cluster.broker.url
                echo(f"started {cluster.broker.kind} broker at {broker_url}")
        monitor = Monitor(broker_url, fed)
        monitor.on_round_done = print_progress(monitor, fed_config.rounds, echo)
        monitor.start()
        state = out / "state"
        cloud = cluster.spawn("cloud", [
            "hub", "serve", "--role", "cloud", "--broker", broker_url, "--federation", fed,
            "--state-dir", str(state / "cloud"), "--config", str(config_path),
            "--payload-limit", str(fed_config.transport.payload_limit)])
        for region in sc.topology.regions:
            cluster.spawn(f"regional-{region}", [
                "hub", "serve", "--role", "regional", "--region", region, "--broker", broker_url,
                "--federation", fed, "--state-dir", str(state / f"regional-{region}"),
                "--payload-limit", str(fed_config.transport.payload_limit)])
        for path in write_worker_specs(config, broker_url, out):
            cluster.spawn(path.stem, ["edge_client", "worker", "--spec", str(path)])
        echo(f"scenario {sc.name}: {sc.topology.num_devices} devices in "
             f"{len(sc.topology.regions)} regions, {fed_config.rounds} rounds of "
             f"{fed_config.fedsa_lora.algorithm}")
        deadline = started + sc.timeout_s
        while cloud.popen.poll() is None:
            bad = cluster.failed()
            if bad:
                raise RuntimeError(f"process {bad[0].name} exited with {bad[0].popen.returncode}:"
                                   f"\n{log_tail(bad[0])}")
            if time.time() > deadline:
                raise TimeoutError(f"scenario did not finish within {sc.timeout_s:.0f}s")
            time.sleep(0.5)
        if cloud.popen.returncode != 0:
            raise RuntimeError(f"cloud hub exited with {cloud.popen.returncode}:\n"
                               f"{log_tail(cloud)}")
        for p in cluster.procs:  # devices and regional hubs exit on the final announcement
            try:
                p.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log.warning("%s did not exit after the federation finished", p.name)
        time.sleep(0.5)  # let the last metrics reach the monitor
    finally:
        if monitor is not None:
            monitor.stop()
        cluster.stop()
    with monitor.lock:
        report = build_report(monitor.obs, scenario=sc.name,
                              algorithm=fed_config.fedsa_lora.algorithm,
                              wall_s=time.time() - started,
                              extra={"devices": sc.topology.num_devices,
                                     "regions": list(sc.topology.regions),
                                     "config_hash": fed_config.digest()})
    failed = [p.name for p in cluster.failed()]
    if failed:
        report["final"]["failed_processes"] = failed
    write_json(out / "report.json", report)
    return report
