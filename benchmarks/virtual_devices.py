"""Memory per extra virtual device when several devices share one base in a process.

For N in 1, 2, 4, 8, one subprocess builds a ``ModelHost`` (one quantized base) and N real
``Device`` objects, each with its own data shard and state directory, and runs one real
round on each (``Device.train_round`` on a synthetic announcement: tokenizing, swapping its
adapters in, training, evaluating, encoding and persisting its update; no broker).  It
reports RSS with the base alone and after each device's round, so the cost of an extra
device is what its adapter state, data, optimizer and session objects add to the process.

    python -m benchmarks.virtual_devices --out runs/virtual_devices.json
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, markdown_table, run_child, today

MiB = 2**20


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edge_client.data import DataSpec
    from edge_client.device import Device, DeviceSpec
    from edge_client.host import ModelHost
    from edge_client.memory import rss_bytes
    from fedsa_common.federation.config import FederationConfig
    from fedsa_common.federation.split import shared_names
    from fedsa_common.wire.protocol import AnnounceHeader, decode_message, encode_message
    from quant.adapters import adapter_shapes, init_adapter_values

    torch.set_num_threads(args.threads)
    config = FederationConfig.model_validate({
        "federation": {"name": "vdev", "seed": 0},
        "model": {"path": args.model, "precision": args.precision, "max_length": 64,
                  "num_labels": 4},
        "training": {"local_steps": args.steps, "batch_size": 16},
    })
    host = ModelHost()
    rss_start = rss_bytes()
    with host.lock:
        host.adapter(config)
    gc.collect()
    rss_base = rss_bytes()
    shapes = adapter_shapes(config.model, 4)
    shared = shared_names(shapes, config.fedsa_lora.algorithm)
    clients = [f"dev-{i}" for i in range(args.devices)]
    header = AnnounceHeader(
        federation="vdev", round=1, version=0, status="running", selected={"r": clients},
        config=config.model_dump(mode="json"), config_hash=config.digest(), deadline_s=60,
        issued_at=time.time(), shared=shared)
    payload = encode_message(header, init_adapter_values({n: shapes[n] for n in shared}, 0))
    header, env = decode_message(AnnounceHeader, payload, max_bytes=64_000_000)
    after: list[int] = []
    devices = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, client in enumerate(clients):
            data = DataSpec(source="20newsgroups", classes=4, partition="dirichlet",
                            num_clients=8, shard=i, max_train=160, max_test=60)
            device = Device(DeviceSpec(client=client, region="r", federation="vdev", data=data,
                                       state_dir=Path(tmp) / client),
                            "mqtt://127.0.0.1:1", host)
            device.train_round(header, config, env, len(payload))
            devices.append(device)
            gc.collect()
            after.append(rss_bytes())
    adapter_bytes = sum(t.numel() * t.element_size()
                        for d in devices for t in (*d.state.local.values(),
                                                   *d.state.residual.values()))
    return {"rss_start_mb": round(rss_start / MiB), "rss_base_mb": round(rss_base / MiB),
            "rss_after_mb": [round(r / MiB) for r in after],
            "adapter_state_kb": round(adapter_bytes / len(devices) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--counts", default="1,2,4,8")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--precision", default="nf4")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=Path("runs/virtual_devices.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    rows = []
    for n in (int(c) for c in args.counts.split(",")):
        got = run_child("benchmarks.virtual_devices",
                        ["--devices", str(n), "--model", args.model, "--precision",
                         args.precision, "--steps", str(args.steps), "--threads",
                         str(args.threads)], args.timeout)
        row: dict[str, Any] = {"devices": n, **got}
        if "rss_after_mb" in got:
            series = got["rss_after_mb"]
            row["rss_mb"] = series[-1]
            row["over_base_mb"] = series[-1] - got["rss_base_mb"]
            row["per_extra_device_mb"] = (round((series[-1] - series[0]) / (n - 1), 1)
                                          if n > 1 else None)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {"command": f"python -m benchmarks.virtual_devices --counts {args.counts} "
                         f"--model {args.model} --precision {args.precision} "
                         f"--steps {args.steps} --threads {args.threads}",
              "machine": machine(), "date": today(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows, [
        ("devices", "virtual devices"), ("rss_base_mb", "RSS base only MiB"),
        ("rss_mb", "RSS after all rounds MiB"), ("over_base_mb", "over base MiB"),
        ("per_extra_device_mb", "per extra device MiB"),
        ("adapter_state_kb", "adapter state per device KiB"), ("error", "error")]))


if __name__ == "__main__":
    main()
