"""ONNX export of a device model: file size, latency and agreement, fp32 against int8.

One subprocess plays a device: it trains MiniLM (nf4, FedSA-LoRA adapters) for a few steps
on 4 classes of 20 Newsgroups and leaves its state directory as a device does, then runs
``edge-client export`` twice (fp32 and ``--int8``).  Then one subprocess per runtime (the
merged torch model, ONNX fp32, ONNX int8) loads it and measures single-text latency
(median of ``--repeats``), throughput at batch 32, RSS with the model loaded, and the
predictions on held-out texts, compared with the torch model's.

    python -m benchmarks.onnx_export --out runs/onnx_export.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import machine, markdown_table, run_child, today

if TYPE_CHECKING:
    from edge_client.data import DeviceData

MiB = 2**20
MODULE = "benchmarks.onnx_export"


def device_data(eval_n: int) -> DeviceData:
    """The benchmark device's share: 400 texts to train on, ``eval_n`` held out."""
    from edge_client.data import DataSpec, load_device_data

    return load_device_data(DataSpec(source="20newsgroups", classes=4, seed=0, max_train=400,
                                     max_test=eval_n))


def eval_texts(n: int) -> tuple[list[str], list[int]]:
    data = device_data(n)
    return data.test.texts[:n], data.test.labels[:n]


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Train a device model briefly, persist it as a device does, export fp32 and int8."""
    import torch

    from edge_client.export import export_state
    from edge_client.snapshot import model_info, save_global
    from edge_client.state import DeviceState, StateDir
    from edge_client.training import tokenize, train_steps
    from fedsa_common.federation.config import FederationConfig
    from fedsa_common.federation.split import local_names, shared_names
    from quant.adapters import build_adapter_model

    torch.set_num_threads(args.threads)
    config = FederationConfig.model_validate({
        "model": {"path": args.model, "precision": "nf4", "max_length": 128, "num_labels": 4}})
    adapter = build_adapter_model(config.model, 4, seed=0)
    data = device_data(args.eval)
    split = tokenize(adapter, data.train.texts, data.train.labels)
    train_steps(adapter, split, steps=args.train_steps, batch_size=16, lr=3e-3)
    values = adapter.get()
    state_dir, work = Path(args.work) / "state", Path(args.work)
    StateDir(state_dir, "bench", "r", "bench").save(DeviceState(
        "bench", "r", "bench", last_round=1,
        local={n: values[n] for n in local_names(values, "fedsa")}))
    save_global(state_dir, {n: values[n] for n in shared_names(values, "fedsa")},
                model_info(config, data.label_names, client="bench", round_=1,
                           config_hash=config.digest()))
    out: dict[str, Any] = {}
    for name, int8 in (("fp32", False), ("int8", True)):
        t = time.perf_counter()
        result = export_state(state_dir, work / f"model-{name}.onnx", int8=int8)
        out[name] = {"bytes": result.bytes, "export_s": round(time.perf_counter() - t, 1)}
    return out


def infer(args: argparse.Namespace) -> dict[str, Any]:
    """Latency, throughput and predictions of one runtime, in a fresh process."""
    import numpy as np
    import torch

    from edge_client.memory import rss_bytes

    torch.set_num_threads(args.threads)
    texts, labels = eval_texts(args.eval)
    work = Path(args.work)
    base = rss_bytes()
    if args.runtime == "torch":
        from edge_client.export import merged_model
        from edge_client.snapshot import load_snapshot

        model, tokenizer, max_length = merged_model(load_snapshot(work / "state"))

        def logits(batch: list[str]) -> np.ndarray:
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            with torch.no_grad():
                return model(input_ids=enc["input_ids"],
                             attention_mask=enc["attention_mask"]).logits.numpy()
    else:
        from edge_client.predict import OnnxClassifier

        clf = OnnxClassifier(work / f"model-{args.runtime}.onnx", threads=args.threads)
        logits = clf.logits
    loaded = rss_bytes()
    logits(texts[:2])  # warm-up
    single = []
    for i in range(args.repeats):
        t = time.perf_counter()
        logits([texts[i % len(texts)]])
        single.append(time.perf_counter() - t)
    t, cpu = time.perf_counter(), time.process_time()
    preds: list[int] = []
    for start in range(0, len(texts), 32):
        preds.extend(logits(texts[start : start + 32]).argmax(-1).tolist())
    batch_s, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"latency_ms": round(statistics.median(single) * 1000, 2),
            "texts_per_s_b32": round(len(texts) / batch_s, 1),
            "cpu_ms_per_text_b32": round(cpu / len(texts) * 1000, 1),
            "model_rss_mb": round((loaded - base) / MiB),
            "accuracy": round(float(np.mean(np.array(preds) == np.array(labels))), 4),
            "preds": preds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="prepare", help=argparse.SUPPRESS)
    ap.add_argument("--runtime", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--work", default="", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/onnx_export.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(prepare(args) if args.mode == "prepare" else infer(args)), flush=True)
        return
    common = ["--model", args.model, "--train-steps", str(args.train_steps), "--eval",
              str(args.eval), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory(prefix="fedsa-onnx-") as work:
        exported = run_child(MODULE, ["--mode", "prepare", "--work", work, *common], 1800)
        if "error" in exported:
            raise SystemExit(f"export failed: {exported['error']}")
        runs = {rt: run_child(MODULE, ["--mode", "infer", "--runtime", rt, "--work", work,
                                       *common], 1800)
                for rt in ("torch", "fp32", "int8")}
    reference = runs["torch"].get("preds")
    rows = []
    for rt, got in runs.items():
        preds = got.pop("preds", None)
        row = {"runtime": "torch (merged, fp32)" if rt == "torch" else f"onnxruntime {rt}",
               **got, **exported.get(rt, {})}
        if preds is not None and reference is not None:
            row["agree_with_torch"] = round(
                sum(a == b for a, b in zip(preds, reference, strict=True)) / len(preds), 4)
        if "bytes" in row:
            row["file_mb"] = round(row["bytes"] / 1e6, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"command": "python -m benchmarks.onnx_export " + " ".join(common),
              "machine": machine(), "date": today(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows, [
        ("runtime", "runtime"), ("file_mb", "file MB"), ("export_s", "export s"),
        ("latency_ms", "latency 1 text ms"), ("texts_per_s_b32", "texts/s at batch 32"),
        ("cpu_ms_per_text_b32", "CPU ms/text at batch 32"),
        ("model_rss_mb", "RSS of model MiB"), ("accuracy", "accuracy"),
        ("agree_with_torch", "argmax = torch"), ("error", "error")]))


if __name__ == "__main__":
    main()
