"""Plays a scenario against real processes: broker, cloud hub, regional hubs and device
workers each run as their own OS process, exactly as they would be deployed; the runner only
starts them, watches the broker, and writes the report.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_client.conditions import conditions_to_json
from edge_client.data import load_pool
from fedsa_common.net.broker import BrokerProcess, start_broker
from fedsa_common.process.atomic import read_json, write_json
from fedsa_common.process.managed import ManagedProcess, stop_all
from hub.api import serve_args
from scenarios.adversaries import choose_adversaries, honest_accuracy
from scenarios.config import ScenarioConfig
from scenarios.expect import check_expectations
from scenarios.grammar import Fault, device_conditions
from scenarios.links import link_schedules
from scenarios.metrics_ports import allocate
from scenarios.monitor import Monitor
from scenarios.report import build_report, round_row
from scenarios.report_html import write_report_html
from scenarios.sites import SiteTopology, bridge_report, link_outages, start_sites

log = logging.getLogger("fedsa.scenarios")


@dataclass
class Proc:
    name: str
    process: ManagedProcess  # its log: OUT/logs/NAME.log
    killed: bool = False  # stopped on purpose (a fault, or the final clean-up)


@dataclass
class Cluster:
    """Every process the runner started, by name, so faults can kill and restart them and
    every one of them is stopped on any exit."""

    out: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    broker: BrokerProcess | None = None
    broker_kind: str = "auto"
    sites: SiteTopology | None = None  # scenario.topology.sites: a broker per site
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self, name: str, package: str, args: list[str]) -> Proc:
        """``python -m PACKAGE ARGS`` as process ``name``."""
        return self._add(name, ManagedProcess(package, args, self.out / "logs" / f"{name}.log"))

    def _add(self, name: str, process: ManagedProcess) -> Proc:
        proc = Proc(name, process)
        with self.lock:
            self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        with self.lock:
            proc = self.procs[name]
            proc.killed = True
        proc.process.kill()

    def respawn(self, name: str) -> Proc:
        return self._add(name, self.procs[name].process.restarted())

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].process.send_signal(sig)

    def failed(self) -> list[Proc]:
        with self.lock:
            return [p for p in self.procs.values()
                    if not p.killed and p.process.returncode not in (None, 0)]

    def stop(self, grace_s: float = 10.0) -> None:
        with self.lock:
            procs = list(self.procs.values())
        for p in procs:
            if p.process.returncode is None:
                p.killed = True
        stop_all([p.process for p in procs], grace_s)
        if self.broker is not None:
            self.broker.stop()
        if self.sites is not None:
            self.sites.close()


class FaultInjector(threading.Thread):
    """Plays the scenario's timed faults against the running cluster."""

    def __init__(self, cluster: Cluster, faults: list[Fault], t0: float,
                 round_started: Callable[[int], float | None],
                 echo: Callable[[str], None],
                 partial_acked: Callable[[int, int], float | None] = lambda _r, _n: None
                 ) -> None:
        super().__init__(daemon=True, name="faults")
        self.cluster, self.t0, self.echo = cluster, t0, echo
        self.round_started = round_started
        self.partial_acked = partial_acked  # (round, n) -> when the cloud took the n-th
        self.faults = faults
        self.stopping = threading.Event()
        self.log: list[dict[str, Any]] = []

    def due(self, fault: Fault) -> float | None:
        if fault.at_round is None:
            anchor: float | None = self.t0
        elif fault.after_partials is None:
            anchor = self.round_started(fault.at_round)
        else:
            anchor = self.partial_acked(fault.at_round, fault.after_partials)
        return None if anchor is None else anchor + fault.at_s

    def run(self) -> None:
        # (when, step, fault); "do" times depend on rounds not yet announced, "undo" on "do"
        todo: list[tuple[str, Fault, float | None]] = [("do", f, None) for f in self.faults]
        while todo and not self.stopping.wait(0.1):
            now = time.time()
            for item in list(todo):
                step, fault, when = item
                when = self.due(fault) if step == "do" else when
                if when is None or now < when:
                    continue
                todo.remove(item)
                try:
                    self.apply(step, fault)
                except Exception as err:  # a fault that cannot be played is reported
                    self.echo(f"fault {fault.action} {fault.target} failed: {err}")
                self.log.append({"t": round(now - self.t0, 2), "step": step,
                                 "action": fault.action, "target": fault.target})
                later = fault.undo_after_s
                if step == "do" and later is not None:
                    todo.append(("undo", fault, now + later))

    def apply(self, step: str, fault: Fault) -> None:
        kind, _, name = fault.target.partition(":")
        c = self.cluster
        if fault.action == "partition":
            proc = f"regional-{name}"
            c.signal(proc, signal.SIGSTOP if step == "do" else signal.SIGCONT)
            self.echo(f"fault: region {name} {'cut off' if step == 'do' else 'reconnected'}")
        elif fault.action == "cut_link":
            if c.sites is None:
                raise RuntimeError("the runner did not start site brokers")
            if step == "do":
                c.sites.brokers.cut_link(name)
            else:
                c.sites.brokers.heal_link(name)
            self.echo(f"fault: site {name}'s link {'cut' if step == 'do' else 'healed'}")
        elif kind == "broker":
            if c.broker is None:
                raise RuntimeError("the runner did not start the broker")
            if step == "do":
                c.broker.stop(timeout=0.1)
                self.echo("fault: broker killed")
            else:
                c.broker = start_broker(c.broker_kind, port=c.broker.port,  # type: ignore[arg-type]
                                        log_path=c.out / "logs" / "broker-restarted.log")
                self.echo("fault: broker restarted")
        else:
            proc = "cloud" if kind == "cloud" else f"regional-{name}"
            if step == "do":
                c.kill(proc)
                self.echo(f"fault: {proc} killed")
            else:
                c.respawn(proc)
                self.echo(f"fault: {proc} restarted")


def log_tail(proc: Proc, lines: int = 15) -> str:
    path = proc.process.log_path
    text = path.read_text(errors="replace") if path is not None else ""
    return "\n".join(text.splitlines()[-lines:])


def count_labels(config: ScenarioConfig) -> int:
    """The data's label count (0 for prompt/response pairs, which have none)."""
    return len(load_pool(config.scenario.device_data(0)).label_names)


def write_worker_specs(config: ScenarioConfig, broker_url: str | Callable[[str], str],
                       out: Path, t0: float,
                       credentials: Callable[[str, str], Path] | None = None) -> list[Path]:
    """One spec file per worker process.  ``broker_url`` may depend on the region (a broker
    per site): then a worker hosts devices of one region only.  ``credentials(region,
    client)`` names each device's credentials file (a provisioned broker)."""
    sc = config.scenario
    devices = sc.topology.devices()
    conditions = device_conditions(devices, sc.availability, sc.stragglers, t0, sc.timeout_s,
                                   sc.seed)
    attacks = choose_adversaries([c for _, c in devices], sc.adversaries, sc.seed)
    links = link_schedules(devices, sc.links, sc.seed)
    per_region = callable(broker_url)
    paths = []
    for w, (start, chunk) in enumerate(_worker_chunks(devices, sc.devices_per_worker,
                                                      per_region)):
        path = out / "workers" / f"worker-{w}.json"
        spec = {
            "broker": broker_url(chunk[0][0]) if callable(broker_url) else broker_url,
            "federation": config.federation.name,
            "threads": sc.threads_per_worker,
            "payload_limit": config.transport.payload_limit,
            "devices": [
                {
                    "client": client,
                    "region": region,
                    "data": sc.device_data(start + i).model_dump(mode="json"),
                    "state_dir": str(out / "state" / "devices" / client),
                    "conditions": conditions_to_json(conditions[client]),
                    "memory_mb": sc.memory_mb,
                    **({"attack": attacks[client].to_json()} if client in attacks else {}),
                    **({"link": links[client].to_json()} if client in links else {}),
                    **({"credentials": str(credentials(region, client))}
                       if credentials is not None else {}),
                }
                for i, (region, client) in enumerate(chunk)
            ],
        }
        if any(client in links for _, client in chunk):  # what they lost, for the report
            spec["link_report"] = str(path.parent / f"links-{w}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec, indent=2))
        paths.append(path)
    return paths


def device_links(out: Path) -> dict[str, dict[str, int]]:
    """Per device with a simulated link, the messages it lost (``published``, ``received``),
    as its worker wrote them on leaving."""
    found: dict[str, dict[str, int]] = {}
    for path in sorted((out / "workers").glob("links-*.json")):
        found.update(read_json(path))
    return found


def _worker_chunks(devices: list[tuple[str, str]], size: int, per_region: bool
                   ) -> list[tuple[int, list[tuple[str, str]]]]:
    """(index of the first device, devices) per worker; ``per_region``: never two regions
    in one worker (their brokers differ)."""
    chunks = []
    start = 0
    while start < len(devices):
        chunk = devices[start : start + size]
        if per_region:
            chunk = [d for d in chunk if d[0] == chunk[0][0]]
        chunks.append((start, chunk))
        start += len(chunk)
    return chunks


def connect_options(sites: SiteTopology | None, broker_url: str
                    ) -> Callable[[str | None], dict[str, Any]]:
    """``hub serve``'s options to reach its broker, for the cloud hub (None) or a region's:
    the one broker's URL, or with sites the hub's provisioned credentials."""
    if sites is None:
        return lambda _region: {"broker": broker_url}
    return lambda region: {"credentials": sites.hub_credentials(region)}


def print_progress(monitor: Monitor, total: int, echo: Callable[[str], None]
                   ) -> Callable[[int], None]:
    def done(rnd: int) -> None:
        with monitor.lock:
            row = round_row(monitor.obs, rnd)
        value = row["accuracy"] if row["accuracy"] is not None else row["accuracy_latest"]
        acc = "n/a" if value is None else f"{value:.3f}"
        eps = f", epsilon {row['dp_epsilon']:.3g}" if "dp_epsilon" in row else ""
        score = (f"accuracy {acc}" if row.get("loss") is None  # a causal model's: exact match
                 else f"held-out loss {row['loss']:.3f}, exact match {acc}")
        echo(f"round {rnd}/{total}: {score}, {row['accepted']}/{row['participants']} "
             f"updates, {row['bytes_up']:,} bytes up, {row['duration_s'] or 0:.1f}s{eps}")

    return done


def run_scenario(config: ScenarioConfig, out: Path, broker_url: str | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one scenario to completion and return (and write) its report."""
    sc = config.scenario
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    started = t0 = time.time()
    num_labels = count_labels(config)
    fed_config = config.federation_config(num_labels)
    config_path = out / "federation.yaml"
    config_path.write_text(yaml.safe_dump(fed_config.model_dump(mode="json"), sort_keys=False))
    cluster = Cluster(out)
    fed = fed_config.federation.name
    monitor: Monitor | None = None
    faults: FaultInjector | None = None
    try:
        if sc.topology.sites:
            if broker_url is not None:
                raise ValueError("scenario.topology.sites: the runner starts the site brokers "
                                 "itself; run it without a broker URL")
            cluster.sites = start_sites(fed, sc.topology, out / "brokers")
            broker_url = cluster.sites.cloud_url
            echo(f"started a Mosquitto per site ({', '.join(sc.topology.regions)}) bridged "
                 f"to the cloud's at {broker_url}")
            monitor = cluster.sites.monitor()
        else:
            if broker_url is None:
                if sc.broker.startswith("mqtt://"):
                    broker_url = sc.broker
                else:
                    cluster.broker_kind = sc.broker
                    cluster.broker = start_broker(sc.broker,  # type: ignore[arg-type]
                                                  log_path=out / "logs" / "broker.log")
                    broker_url = cluster.broker.url
                    echo(f"started {cluster.broker.kind} broker at {broker_url}")
            monitor = Monitor(broker_url, fed)
        reach = connect_options(cluster.sites, broker_url)
        monitor.on_round_done = print_progress(monitor, fed_config.rounds, echo)
        monitor.start()
        state = out / "state"
        limit = fed_config.transport.payload_limit
        ports = allocate(["cloud", *(f"regional-{r}" for r in sc.topology.regions)], out)
        cluster.spawn("cloud", "hub", serve_args(
            "cloud", fed, state / "cloud", **reach(None), config=config_path,
            payload_limit=limit, metrics_port=ports["cloud"],
            # every region's hub is started below: under load one may take long to come up,
            # and its devices must not be skipped meanwhile
            hub_grace=sc.timeout_s))
        for region in sc.topology.regions:
            name = f"regional-{region}"
            cluster.spawn(name, "hub", serve_args(
                "regional", fed, state / name, region=region, **reach(region),
                payload_limit=limit, metrics_port=ports[name],
                # the configuration's intake processes for the region (None: one process)
                intake_shards=fed_config.shards_of(region) if fed_config.shards_of(region) > 1
                else None))
        t0 = time.time()
        specs = write_worker_specs(config, broker_url, out, t0) if cluster.sites is None \
            else write_worker_specs(config, cluster.sites.brokers.url, out, t0,
                                    credentials=cluster.sites.device_credentials)
        for path in specs:
            cluster.spawn(path.stem, "edge_client", ["worker", "--spec", str(path)])
        echo(f"scenario {sc.name}: {sc.topology.num_devices} devices in "
             f"{len(sc.topology.regions)} regions, {fed_config.rounds} rounds of "
             f"{fed_config.fedsa_lora.algorithm} ({fed_config.round_policy.mode})")
        if sc.faults:
            faults = FaultInjector(cluster, sc.faults, t0, monitor.round_started, echo,
                                   monitor.partial_acked)
            faults.start()
        deadline = started + sc.timeout_s
        while True:
            cloud = cluster.procs["cloud"]
            if cloud.process.returncode is not None and not cloud.killed:
                break
            bad = cluster.failed()
            if bad:
                raise RuntimeError(f"process {bad[0].name} exited with "
                                   f"{bad[0].process.returncode}:\n{log_tail(bad[0])}")
            if time.time() > deadline:
                raise TimeoutError(f"scenario did not finish within {sc.timeout_s:.0f}s")
            time.sleep(0.5)
        if cloud.process.returncode != 0:
            raise RuntimeError(f"cloud hub exited with {cloud.process.returncode}:\n"
                               f"{log_tail(cloud)}")
        if faults is not None:
            faults.stopping.set()
        for p in list(cluster.procs.values()):  # the rest exit on the final announcement
            try:
                p.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.info("%s still running after the federation finished; stopping it", p.name)
        time.sleep(0.5)  # let the last metrics reach the monitor
    finally:
        if faults is not None:
            faults.stopping.set()
        if monitor is not None:
            monitor.stop()
        cluster.stop()
    with monitor.lock:
        report = build_report(monitor.obs, scenario=sc.name,
                              algorithm=fed_config.fedsa_lora.algorithm,
                              wall_s=time.time() - started, t0=t0,
                              target_accuracy=sc.expect.target_accuracy,
                              mode=fed_config.round_policy.mode,
                              extra={"devices": sc.topology.num_devices,
                                     "regions": list(sc.topology.regions),
                                     "mode": fed_config.round_policy.mode,
                                     "config_hash": fed_config.digest()})
    if faults is not None:
        report["faults"] = faults.log
    if cluster.sites is not None:
        report["bridges"] = bridge_report(cluster.sites)
        if faults is not None:
            with monitor.lock:
                report["links"] = link_outages(monitor.obs, faults.log, sc.topology, t0)
    if sc.links.used:
        report["device_links"] = device_links(out)
    if sc.adversaries.used:
        attacks = choose_adversaries([c for _, c in sc.topology.devices()], sc.adversaries,
                                     sc.seed)
        report["adversaries"] = {c: a.to_json() for c, a in attacks.items()}
        report["final"]["honest_accuracy"] = honest_accuracy(report, set(attacks))
    failed = [p.name for p in cluster.failed()]
    if failed:
        report["final"]["failed_processes"] = failed
    report["expectations"] = check_expectations(report, sc.expect)
    write_json(out / "report.json", report)
    write_report_html(report, out)
    return report
