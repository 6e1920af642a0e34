"""Round time for many devices through regional hubs, with light devices; prints a Markdown
table.

Not part of the test suite (it measures; tests/edge_client/test_light_e2e.py runs the same
harness shrunk and asserts).  From the repository root, with the project's environment
active and Mosquitto installed:

    python -m benchmarks.scale_rounds                       # 100, 1,000, 10,000 devices
    python -m benchmarks.scale_rounds --devices 100 1000 --regions 10 --rounds 3

Every point is a fresh federation on this machine: one Mosquitto (its queue for a client
sized as ``hub provision`` sizes it: 8 messages per device of the largest region, and
at least one per device of the federation for the cloud's retained presences), the cloud
hub and one regional hub per region (``hub serve``, real processes), and the devices as
light devices (``edge-client load``, edge_client/light.py: each its own MQTT session,
presence and acknowledgements, real encoded updates of synthesised deltas of the model's
shared tensors, no training; one network thread per load process serves all its sessions)
spread over load processes of at most ``--per-process`` devices.  This process raises its
file-descriptor limit for the broker's connections first (Mosquitto inherits it).  Every
device is selected every round (``min_clients`` = all of them, so round 1 starts once all
are online).

Per point: the round time (the cloud's own ``duration_s``: from its announcement to the
round's close after the last region's partial), the updates applied per round, what the
cloud took in per round (partial messages seen on the broker, and the CPU seconds of the
cloud process between its round summaries) and of a regional hub (CPU seconds per round,
the busiest), the CPU seconds per round of all regional hubs, all load processes and the
broker together (where a round's time goes), and the wall time from starting the processes
to round 1's announcement (process starts and every device joining).  Nothing leaves the
machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.common import machine, today
from edge_client.api import start_load_devices
from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.broker import start_broker
from fedsa_common.net.fd_limit import ensure_sessions_fit
from fedsa_common.net.transport import MqttSession
from fedsa_common.process.managed import ManagedProcess
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    PartialHeader,
    RoundSummary,
    Topics,
    decode_json,
    decode_message,
)
from hub.api import start_hub
from hub.provision import queued_messages

FEDERATION = "scale"
PER_PROCESS = 2_500  # light devices a load process hosts by default


def federation_config(devices: int, rounds: int, model: str, codec: str,
                      deadline_s: float) -> FederationConfig:
    """Every device selected every round; round 1 waits until all are online."""
    return FederationConfig.model_validate({
        "federation": {"name": FEDERATION, "seed": 0},
        "model": {"path": model, "num_labels": 4},
        "fedsa_lora": {"compression": {"method": codec}},
        "rounds": rounds,
        "sampling": {"min_clients": devices, "wait_for_clients_s": deadline_s},
        "round_policy": {"deadline_s": deadline_s},
    })


class Observer:
    """A session on the broker that keeps the cloud's round summaries, the partial messages
    per round and the CPU time of the hub processes at each summary."""

    def __init__(self, url: str, procs: Callable[[], dict[str, int]]) -> None:
        self.topics = Topics(FEDERATION)
        self.procs = procs
        self.lock = threading.Lock()
        self.summaries: list[RoundSummary] = []
        self.partials: Counter[int] = Counter()  # messages per round, resends included
        self.partial_ids: dict[int, set[str]] = {}
        self.cpu: list[dict[str, float]] = []  # per summary: CPU seconds by process name
        self.cpu_start: dict[str, float] = {}
        self.session = MqttSession(url, client_id="scale-observer", clean_session=True,
                                   max_message_bytes=64_000_000)
        self.session.subscribe_raw(self.topics.summary, self._on_summary)
        self.session.subscribe(self.topics.partial_filter, self._on_partial)

    def cpu_now(self) -> dict[str, float]:
        out = {}
        for name, pid in self.procs().items():
            try:
                t = psutil.Process(pid).cpu_times()
                out[name] = t.user + t.system
            except psutil.Error:
                continue
        return out

    def _on_summary(self, _topic: str, payload: bytes) -> None:
        try:
            summary = decode_json(RoundSummary, payload, max_bytes=64_000_000)
        except WireError:
            return
        cpu = self.cpu_now()
        with self.lock:
            self.summaries.append(summary)
            self.cpu.append(cpu)

    def _on_partial(self, _topic: str, payload: bytes) -> None:
        try:
            header, _ = decode_message(PartialHeader, payload, max_bytes=64_000_000)
        except WireError:
            return
        with self.lock:
            self.partials[header.round] += 1
            self.partial_ids.setdefault(header.round, set()).add(
                f"{header.region}:{header.round}:{header.seq}")


def split_devices(regions: Sequence[str], per_region: int, per_process: int
                  ) -> list[int]:
    """Devices per region in each load process: as few processes as hold at most
    ``per_process`` devices each, every region's devices spread evenly over them."""
    fits = max(1, per_process // len(regions))  # of each region, in one process
    n = math.ceil(per_region / fits)
    base, extra = divmod(per_region, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def run_scale(out: Path, *, regions: Sequence[str], per_region: int, rounds: int,
              per_process: int = PER_PROCESS, model: str = "minilm",
              codec: str = "topk", workers: int = 4, timeout_s: float = 1800.0,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """One federation of ``per_region`` light devices in each region; returns the cloud's
    summaries, partial messages and ids per round, CPU seconds per round of the cloud and
    the regional hubs, setup time and every process's exit status."""
    out.mkdir(parents=True, exist_ok=True)
    total = per_region * len(regions)
    config = federation_config(total, rounds, model, codec, deadline_s=timeout_s / 2)
    config_path = out / "federation.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    queued = queued_messages(per_region, total)
    # the broker's connections: every device, every hub, the observer
    ensure_sessions_fit(total + len(regions) + 2, option="--devices",
                        what="broker connections")
    hubs: dict[str, ManagedProcess] = {}
    loads: list[ManagedProcess] = []
    with start_broker("mosquitto", workdir=out / "broker", max_queued_messages=queued,
                      log_path=out / "logs" / "mosquitto.log") as broker:
        def procs() -> dict[str, int]:  # whose CPU time is read at each round summary
            pids = {k: p.pid for k, p in hubs.items()}
            pids.update({f"load-{i}": p.pid for i, p in enumerate(loads)})
            if broker.process is not None:
                pids["broker"] = broker.process.pid
            return pids

        observer = Observer(broker.url, procs)
        observer.session.connect()
        started = time.time()
        try:
            hubs["cloud"] = start_hub("cloud", FEDERATION, out / "state" / "cloud",
                                      log_path=out / "logs" / "cloud.log",
                                      broker=broker.url, config=config_path)
            for r in regions:
                hubs[r] = start_hub("regional", FEDERATION, out / "state" / r,
                                    log_path=out / "logs" / f"regional-{r}.log",
                                    broker=broker.url, region=r)
            for k, n in enumerate(split_devices(regions, per_region, per_process)):
                loads.append(start_load_devices(FEDERATION, regions, n, broker=broker.url,
                                        client_prefix=f"p{k}-", workers=workers,
                                        log_path=out / "logs" / f"load-{k}.log"))
            observer.cpu_start = observer.cpu_now()
            echo(f"  {total} devices in {len(regions)} regions over {len(loads)} load "
                 f"processes; waiting for {rounds} rounds")
            deadline = time.monotonic() + timeout_s
            load_codes = [p.wait(max(1.0, deadline - time.monotonic())) for p in loads]
            hub_codes = {k: p.wait(max(1.0, deadline - time.monotonic()))
                         for k, p in hubs.items()}
        finally:
            for p in [*loads, *hubs.values()]:
                p.stop()
            observer.session.close()
    with observer.lock:
        summaries = list(observer.summaries)
        cpu = list(observer.cpu)
    return {
        "devices": total, "regions": list(regions), "rounds": rounds,
        "load_processes": len(loads), "load_codes": load_codes, "hub_codes": hub_codes,
        "summaries": [s.model_dump(mode="json") for s in summaries],
        "partials": dict(observer.partials),
        "partial_ids": {r: sorted(ids) for r, ids in observer.partial_ids.items()},
        "cpu_per_round": _cpu_per_round(observer.cpu_start, cpu),
        "setup_s": (summaries[0].started_at - started) if summaries else None,
    }


def _cpu_per_round(start: dict[str, float], at_summaries: list[dict[str, float]]
                   ) -> list[dict[str, float]]:
    """CPU seconds of each hub process between consecutive round summaries (the first
    round from its announcement is approximated by the start: it includes the wait for
    devices, so the table leaves it out)."""
    rows = []
    prev = start
    for now in at_summaries:
        rows.append({k: round(v - prev.get(k, 0.0), 3) for k, v in now.items()})
        prev = now
    return rows


def row(res: dict[str, Any]) -> dict[str, Any]:
    """The table's row of one point: medians over rounds 2.. (round 1 also holds the wait
    for every device to join, in CPU time)."""
    s = res["summaries"]
    later = s[1:] or s
    cpu_later = res["cpu_per_round"][1:] or res["cpu_per_round"]
    regions = res["regions"]
    return {
        "devices": res["devices"], "regions": len(regions),
        "load_processes": res["load_processes"],
        "rounds_done": len(s),
        "round_s_median": round(statistics.median(x["duration_s"] for x in later), 2)
        if later else None,
        "round_s_max": round(max(x["duration_s"] for x in later), 2) if later else None,
        "applied_per_round": [len(x["applied"]) for x in s],
        "partials_per_round": [res["partials"].get(x["round"], 0) for x in s],
        "cloud_cpu_s_per_round": round(statistics.median(c.get("cloud", 0.0)
                                                         for c in cpu_later), 3)
        if cpu_later else None,
        "regional_cpu_s_per_round": round(statistics.median(
            max(c.get(r, 0.0) for r in regions) for c in cpu_later), 3) if cpu_later else None,
        # where a round's CPU goes: all regional hubs, all load processes, the broker
        "regionals_cpu_s_per_round": _median_sum(cpu_later, lambda k: k in regions),
        "load_cpu_s_per_round": _median_sum(cpu_later, lambda k: k.startswith("load-")),
        "broker_cpu_s_per_round": _median_sum(cpu_later, lambda k: k == "broker"),
        "setup_s": round(res["setup_s"], 1) if res["setup_s"] is not None else None,
        "exit": {"load": res["load_codes"], "hubs": sorted(set(res["hub_codes"].values()))},
    }


def _median_sum(cpu: list[dict[str, float]], which: Callable[[str], bool]) -> float | None:
    """The median over rounds of the CPU seconds of the processes ``which`` picks."""
    if not cpu:
        return None
    return round(statistics.median(sum(v for k, v in c.items() if which(k)) for c in cpu), 3)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[100, 1000, 10_000],
                    help="total devices of each point (spread evenly over the regions)")
    ap.add_argument("--regions", type=int, default=10, help="regional hubs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-process", type=int, default=PER_PROCESS,
                    help="most light devices one load process hosts (each process needs "
                         "a file descriptor per device: ulimit -Hn)")
    ap.add_argument("--workers", type=int, default=4, help="update threads per load process")
    ap.add_argument("--model", default="minilm", help="model.path (its real LoRA shapes)")
    ap.add_argument("--codec", default="topk", help="fedsa_lora.compression.method")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per point")
    ap.add_argument("--out", type=Path, default=Path("runs/scale_rounds"))
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    regions = [f"r{i:02d}" for i in range(args.regions)]
    rows = []
    for n in args.devices:
        if n % args.regions:
            ap.error(f"--devices {n} is not a multiple of --regions {args.regions}")
        print(f"{n} devices:", file=sys.stderr)
        res = run_scale(args.out / f"n{n}", regions=regions, per_region=n // args.regions,
                        rounds=args.rounds, per_process=args.per_process, model=args.model,
                        codec=args.codec, workers=args.workers, timeout_s=args.timeout,
                        echo=lambda m: print(m, file=sys.stderr))
        rows.append(row(res))
        print(f"  {json.dumps(rows[-1])}", file=sys.stderr)
    print(f"Machine: {machine()}; {today()}; {args.regions} regional hubs, {args.rounds} "
          f"rounds, model {args.model}, codec {args.codec}, <= {args.per_process} devices "
          "per load process\n")
    print("| devices | load processes | round time median / max (s) | updates applied per "
          "round | partials at the cloud per round | cloud CPU s per round | busiest "
          "regional hub CPU s per round | start to round 1 (s) |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for r in rows:
        print(f"| {r['devices']:,} | {r['load_processes']} | {r['round_s_median']} / "
              f"{r['round_s_max']} | {r['applied_per_round']} | {r['partials_per_round']} | "
              f"{r['cloud_cpu_s_per_round']} | {r['regional_cpu_s_per_round']} | "
              f"{r['setup_s']} |")
        table.append(f"| {r['devices']:,} | {r['regionals_cpu_s_per_round']} | "
                     f"{r['load_cpu_s_per_round']} | {r['broker_cpu_s_per_round']} |")
    print("\nCPU seconds per round (median over rounds 2..), all processes of a kind:\n")
    print("| devices | regional hubs | load processes | broker |")
    print("|---|---|---|---|")
    print("\n".join(table))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
