"""Subprocess body for test_memory_budget: train a small BERT and report peak RSS as JSON.

Run in its own process so that RSS belongs to this training alone.  ``--headroom-mb`` sets
the budget to the RSS right before training plus that much (0: no budget).  Peak RSS is
measured independently of the trainer (which resets the kernel's high-water mark under a
budget) by a thread sampling RSS every millisecond.
"""

from __future__ import annotations

import argparse
import json
import random
import threading

import psutil
import torch

from edge_client.memory import MiB, PeakMeter, rss_bytes
from edge_client.microbatch import MicroBatchPlanner
from edge_client.training import TokenizedSplit, train_steps
from fedsa_common.federation.config import ModelSection
from quant.adapters import build_adapter_model


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_bytes()
        self.stop = threading.Event()

    def run(self) -> None:
        proc = psutil.Process()
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, proc.memory_info().rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--headroom-mb", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = ModelSection(path=args.model, precision="fp32", max_length=256, num_labels=2)
    adapter = build_adapter_model(spec, 2, seed=0)
    rng = random.Random(0)
    rows = [[101, *(rng.randrange(1000, 20000) for _ in range(254)), 102] for _ in range(64)]
    data = TokenizedSplit(input_ids=rows, labels=[rng.randrange(2) for _ in rows])
    floor = rss_bytes()
    budget = floor + args.headroom_mb * MiB if args.headroom_mb else None
    planner = MicroBatchPlanner(budget_bytes=None if budget is None else int(budget))
    sampler = Sampler()
    sampler.start()
    with PeakMeter() as meter:  # resets the high-water mark: loading's peak is not training's
        result = train_steps(adapter, data, steps=args.steps, batch_size=args.batch, lr=1e-3,
                             planner=planner)
        meter.read()
    sampler.stop.set()
    sampler.join()
    print(json.dumps({
        "floor": floor, "budget": budget, "sampled_peak": sampler.peak,
        "hwm_peak": meter.overall if budget is None else result.peak_rss,
        "micro_batch": result.micro_batch, "samples": result.samples,
    }))


if __name__ == "__main__":
    main()
