"""The centralized reference: one model trained on the union of the devices' training splits.

It is what the federation would reach if the devices could pool their texts: the same base
model, precision, max_length and LoRA configuration, built by ``edge_client.host.ModelHost``
exactly as a device builds it (same seeded initial A, B and head), with A, B and the head all
trainable as in FedIT's model, trained by ``edge_client.training.train_steps`` with the
devices' optimizer settings on the pooled training splits the federation's devices get for
this seed, for as many samples as the whole federation processes
(``scenarios.references.federation_samples``).  One optimizer runs over the whole training
(devices restart theirs every round), since a pooled model has no reason to.

It is evaluated on each device's own test split and averaged over devices like a federated
round, after every round's worth of samples (every few when evaluation would cost more
than half the training), so the curve says how fast pooled training gets where it gets.

Run as ``python -m scenarios.centralized --config SCENARIO.json --out RESULT.json`` by
``scenarios.references.run_centralized``: its own process, so the model's memory is
returned to the bench when it ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from edge_client.host import ModelHost
from edge_client.training import StepInfo, TokenizedSplit, evaluate, tokenize, train_steps
from fedsa_common.federation.config import validate_model
from fedsa_common.process.atomic import write_json
from scenarios.config import ScenarioConfig
from scenarios.references import (
    METHOD_VERSION,
    curve_rounds,
    device_datas,
    federation_samples,
    round_ends,
)
from scenarios.runner import count_labels

log = logging.getLogger("fedsa.scenarios.centralized")


def federation_threads(config: ScenarioConfig) -> int:
    """CPU threads the federation's device workers use together (at most the CPUs here), so
    the reference's wall time is comparable with a federated run's."""
    sc = config.scenario
    workers = -(-sc.topology.num_devices // sc.devices_per_worker)
    return max(1, min(workers * sc.threads_per_worker, os.cpu_count() or 1))


def train_centralized(config: ScenarioConfig, echo: Callable[[str], None] = print
                      ) -> dict[str, Any]:
    """Train and evaluate the centralized reference of ``config`` (one seed); returns the
    result: per-device final accuracies, the curve of (round's worth, mean accuracy), the
    samples it processed and the federation's that it matches."""
    if config.model.causal:
        raise ValueError("model.task causal_lm: the centralized reference of a causal "
                         "language model is not supported yet")
    started = time.time()
    devices = device_datas(config)
    fed = config.federation_config(count_labels(config))
    tr = fed.training
    host = ModelHost()
    with host.lock:
        adapter = host.adapter(fed)
        adapter.enable_all()  # LoRA A, B and the head: FedIT's model, on pooled data
        pooled = TokenizedSplit(
            input_ids=[ids for _, d in devices
                       for ids in tokenize(adapter, d.train.texts, d.train.labels).input_ids],
            labels=[y for _, d in devices for y in d.train.labels])
        tests = {client: tokenize(adapter, d.test.texts, d.test.labels)
                 for client, d in devices}
        target = federation_samples(fed, [len(d.train) for _, d in devices])
        steps = max(1, -(-target // tr.batch_size))
        ends = round_ends(steps, fed.rounds)
        wanted = curve_rounds(fed.rounds, target / fed.rounds,
                              sum(len(t) for t in tests.values()))
        eval_at = {ends[r - 1]: r for r in wanted}  # rounds sharing a step: the latest
        curve: list[tuple[int, float]] = []
        final: dict[str, float] = {}

        def on_step(info: StepInfo) -> None:
            rnd = eval_at.get(info.step)
            if rnd is None:
                return
            final.clear()
            final.update({c: evaluate(adapter, t, tr.eval_batch_size, autocast=tr.autocast)
                          for c, t in tests.items()})
            adapter.model.train()  # evaluate() left it in eval mode; training goes on
            curve.append((rnd, fmean(final.values())))
            echo(f"round's worth {rnd}/{fed.rounds}: {info.samples} samples, loss "
                 f"{info.loss:.3f}, mean accuracy {curve[-1][1]:.3f}")

        torch.set_num_threads(federation_threads(config))
        echo(f"centralized: {len(pooled)} pooled training texts from {len(devices)} devices, "
             f"{steps} steps of {tr.batch_size} ({target} samples, the federation's)")
        result = train_steps(adapter, pooled, steps=steps, batch_size=tr.batch_size,
                             lr=tr.lr, head_lr=tr.head_lr, b_lr_ratio=tr.b_lr_ratio,
                             weight_decay=tr.weight_decay,
                             seed=fed.federation.seed, autocast=tr.autocast, on_step=on_step)
    return {
        "reference": "centralized",
        "method_version": METHOD_VERSION["centralized"],
        "seed": fed.federation.seed,
        "devices": len(devices),
        "num_labels": fed.model.num_labels,
        "train_sizes": {c: len(d.train) for c, d in devices},
        "pooled_train": len(pooled),
        "target_samples": target,
        "samples": result.samples,
        "steps": steps,
        "batch_size": tr.batch_size,
        "rounds": fed.rounds,
        "train_loss": result.loss,
        "curve": curve,
        "device_accuracy": final,
        "wall_s": time.time() - started,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scenarios.centralized",
                                     description="Train a bench's centralized reference.")
    parser.add_argument("--config", type=Path, required=True,
                        help="The run's scenario configuration as JSON.")
    parser.add_argument("--out", type=Path, required=True, help="Where to write the result.")
    parser.add_argument("--digest", default="", help="Stored with the result for reuse.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = validate_model(ScenarioConfig, json.loads(args.config.read_text()))
    result = train_centralized(config, echo=lambda line: print(line, flush=True))
    write_json(args.out, {**result, "digest": args.digest, "finished": True})


if __name__ == "__main__":
    main()
