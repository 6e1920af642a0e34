"""Training throughput and memory per base precision and compute precision.

For each model, base precision (nf4, fp4, int8, fp16, bf16, fp32), autocast (none, bf16)
and activation checkpointing (``--checkpointing off,on``), one subprocess loads the model
with LoRA exactly as a device does, trains one warm-up step and then ``--steps`` timed
steps on 20 Newsgroups texts, and reports samples/s (wall clock), CPU seconds per sample
(all threads; far less sensitive than wall time to other work sharing the CPU), the RSS
with the model loaded, and the peak RSS of loading and of training.  Each combination
runs in its own process so that its RSS is its own.

Models: ``minilm`` (the real all-MiniLM-L6-v2, 22M parameters) and ``bert-base``, a
randomly initialised BERT of ``BertConfig()``'s default size (110M parameters), written
once to a temporary directory: at that size the 4-bit saving stands out from the runtime.

    python -m benchmarks.precision --out runs/precision.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import machine, markdown_table, run_child, today

if TYPE_CHECKING:
    from edge_client.training import TokenizedSplit
    from quant.adapters import AdapterModel

PRECISIONS = ("nf4", "fp4", "int8", "fp16", "bf16", "fp32")
AUTOCASTS = ("none", "bf16")
CHECKPOINTING = {"off": False, "on": True}
MiB = 2**20


def write_bert_base(out: Path) -> Path:
    """A random BERT-base (BertConfig defaults) with the MiniLM tokenizer (same vocab)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from quant.base_model import minilm_path

    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(num_labels=4)).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(out)
    return out


def texts(n: int) -> tuple[list[str], list[int]]:
    from edge_client.data import DataSpec, load_pool

    pool = load_pool(DataSpec(source="20newsgroups", classes=4))
    return pool.texts[:n], pool.labels[:n]


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edge_client.memory import return_large_frees
    from edge_client.training import tokenize
    from fedsa_common.federation.config import ModelSection
    from quant.adapters import build_adapter_model

    torch.set_num_threads(args.threads)
    return_large_frees()  # as a device with a memory budget does before loading
    start = time.perf_counter()
    spec = ModelSection(path=args.model, precision=args.precision, max_length=args.max_length,
                        num_labels=4)
    adapter = build_adapter_model(spec, 4, seed=0)
    load_s = time.perf_counter() - start
    return measure_training(
        adapter, lambda: tokenize(adapter, *texts(max(64, args.batch * (args.steps + 1)))),
        steps=args.steps, load_s=load_s, batch_size=args.batch, lr=1e-4,
        autocast=args.autocast, gradient_checkpointing=CHECKPOINTING[args.checkpoint])


def measure_training(adapter: AdapterModel, data: Callable[[], TokenizedSplit], *, steps: int,
                     load_s: float, **train: Any) -> dict[str, Any]:
    """Memory and speed of the device's ``train_steps`` on a freshly loaded ``adapter``:
    the RSS once loading's freed memory is returned (as ``ModelHost`` does), the peak of
    loading, then the peak of a warm-up step (kernels, allocator) and ``steps`` timed steps,
    which alone give samples/s.  ``data`` is built after the loaded RSS is read, so that
    tokenizing does not count as the model's."""
    from edge_client.memory import PeakMeter, peak_rss_bytes, release_free_memory, rss_bytes
    from edge_client.training import train_steps

    release_free_memory()  # as ModelHost does after building the model
    load_peak, loaded = peak_rss_bytes(), rss_bytes()
    tensors = [*adapter.model.parameters(), *adapter.model.buffers()]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    rows = data()
    with PeakMeter() as meter:  # resets the high-water mark: training's peak alone
        train_steps(adapter, rows, steps=1, seed=1, **train)  # warm-up: kernels, allocator
        t, cpu = time.perf_counter(), time.process_time()
        result = train_steps(adapter, rows, steps=steps, seed=2, **train)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        meter.read()
    return {
        "samples_per_s": round(result.samples / seconds, 2),
        "cpu_s_per_sample": round(cpu / result.samples, 3),
        "loss": round(result.loss, 4),
        "load_s": round(load_s, 1),
        "rss_loaded_mb": round(loaded / MiB),
        "load_peak_mb": round(load_peak / MiB),
        "train_peak_mb": round(meter.overall / MiB),
        "weights_mb": round(weights / MiB),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="minilm", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--precision", default="nf4", help=argparse.SUPPRESS)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--autocast", default="none", help=argparse.SUPPRESS)
    ap.add_argument("--autocasts", default=",".join(AUTOCASTS))
    ap.add_argument("--checkpoint", default="off", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", default="off",
                    help="activation checkpointing settings to run: off, on or off,on")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0, help="per combination, seconds")
    ap.add_argument("--out", type=Path, default=Path("runs/precision.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--max-length",
              str(args.max_length), "--threads", str(args.threads)]
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="fedsa-bench-"))
    try:
        for name in args.models.split(","):
            path = str(write_bert_base(tmp / "bert-base")) if name == "bert-base" else name
            for precision in args.precisions.split(","):
                for autocast in args.autocasts.split(","):
                    for checkpoint in args.checkpointing.split(","):
                        key = {"model": name, "precision": precision, "autocast": autocast,
                               "checkpointing": checkpoint}
                        if precision == "fp16" and autocast == "bf16":  # see compute_context
                            rows.append({**key, "error": "n/a: not applied over an fp16 base"})
                            continue
                        got = run_child("benchmarks.precision",
                                        ["--model", path, "--precision", precision,
                                         "--autocast", autocast, "--checkpoint", checkpoint,
                                         *common], args.timeout)
                        row = {**key, **got}
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"command": "python -m benchmarks.precision " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k in ("models", "precisions", "autocasts", "checkpointing", "steps",
                           "batch", "max_length", "threads")),
              "machine": machine(), "date": today(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows, [
        ("model", "model"), ("precision", "base"), ("autocast", "autocast"),
        ("checkpointing", "checkpointing"),
        ("cpu_s_per_sample", "CPU s/sample"), ("samples_per_s", "train samples/s"),
        ("weights_mb", "weights MiB"), ("rss_loaded_mb", "RSS loaded MiB"),
        ("load_peak_mb", "peak load MiB"), ("train_peak_mb", "peak train MiB"),
        ("load1", "load avg"), ("error", "error")]))


if __name__ == "__main__":
    main()
