"""What a memory budget costs: peak RSS, micro-batch size and throughput per budget.

For each budget (``none`` or MiB), one subprocess loads the model as a device does, trains
``--steps`` steps of the federation's batch with the device's micro-batch planner under
that budget, and reports the micro-batch it settled on, whether activation checkpointing
was on at the end (``--gradient-checkpointing auto``, the default, lets the planner switch
it on), the peak RSS while training (the planner's own measurement, the kernel's high-water
mark per micro-batch) and samples/s.

    python -m benchmarks.memory_budget --budgets none,1000,800,650 --out runs/memory_budget.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, markdown_table, run_child, today

MiB = 2**20
CHECKPOINTING: dict[str, bool | str] = {"auto": "auto", "true": True, "false": False}


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.precision import texts
    from edge_client.memory import PeakMeter, return_large_frees, rss_bytes
    from edge_client.microbatch import MicroBatchPlanner
    from edge_client.training import tokenize, train_steps
    from fedsa_common.federation.config import ModelSection
    from quant.adapters import build_adapter_model

    torch.set_num_threads(args.threads)
    return_large_frees()  # as a device with a memory budget does before loading
    spec = ModelSection(path=args.model, precision=args.precision, max_length=args.max_length,
                        num_labels=4)
    adapter = build_adapter_model(spec, 4, seed=0)
    data = tokenize(adapter, *texts(args.batch * args.steps))
    budget = None if args.budget == "none" else float(args.budget)
    planner = MicroBatchPlanner.for_budget(budget)
    floor = rss_bytes()
    with PeakMeter() as meter:  # without a budget the planner measures nothing
        t, cpu = time.perf_counter(), time.process_time()
        result = train_steps(adapter, data, steps=args.steps, batch_size=args.batch, lr=1e-4,
                             planner=planner, gradient_checkpointing=CHECKPOINTING[
                                 args.gradient_checkpointing])
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        meter.read()
    return {
        "rss_before_mb": round(floor / MiB),
        "peak_mb": round((result.peak_rss or meter.overall) / MiB),
        "micro_batch": result.micro_batch,
        "checkpointing": "on" if result.checkpointing else "off",
        "samples_per_s": round(result.samples / seconds, 2),
        "cpu_s_per_sample": round(cpu / result.samples, 3),
        "loss": round(result.loss, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--budget", default="none", help=argparse.SUPPRESS)
    ap.add_argument("--budgets", default="none,1000,800,650")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--precision", default="nf4")
    ap.add_argument("--gradient-checkpointing", choices=list(CHECKPOINTING), default="auto")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=Path("runs/memory_budget.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    common = ["--model", args.model, "--precision", args.precision,
              "--gradient-checkpointing", args.gradient_checkpointing, "--steps", str(args.steps),
              "--batch", str(args.batch), "--max-length", str(args.max_length), "--threads",
              str(args.threads)]
    rows = []
    for budget in args.budgets.split(","):
        got = run_child("benchmarks.memory_budget", ["--budget", budget, *common], args.timeout)
        row = {"budget_mb": budget, **got}
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {"command": f"python -m benchmarks.memory_budget --budgets {args.budgets} "
                         + " ".join(common), "machine": machine(), "date": today(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows, [
        ("budget_mb", "--memory-mb"), ("rss_before_mb", "RSS before training MiB"),
        ("peak_mb", "peak training MiB"), ("micro_batch", "largest micro-batch"),
        ("checkpointing", "checkpointing"),
        ("samples_per_s", "samples/s"), ("cpu_s_per_sample", "CPU s/sample"),
        ("load1", "load avg"), ("error", "error")]))


if __name__ == "__main__":
    main()
