"""Training memory per device for 0.5B-1B-parameter causal language models, and the formula.

No real checkpoint is needed: a model's memory and speed depend on its shapes, not on its
weight values, so each model here is randomly initialised with the exact shapes of a real
one (``SHAPES``: Qwen2.5-0.5B and Llama-3.2-1B, plus Qwen2.5-0.5B cut to fewer layers for the
scaling curve), written once as a local model directory with the tokenizer ``tiny-causal``
uses (``quant.base_model.write_random_model``).  For each model, precision, sequence length,
batch and activation-checkpointing setting, one subprocess trains it exactly as a device does
(``model.task: causal_lm``: ``build_adapter_model`` with LoRA on the attention projections,
``tokenize_pairs`` with the loss on the answer tokens, ``train_steps``) and reports its
training peak RSS and samples/s (``benchmarks.precision.measure_training``), next to what
``predicted_peak_mb`` expects from the shapes alone.

    python -m benchmarks.causal_memory --models qwen2.5-0.5b,llama-3.2-1b --batches 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from benchmarks.common import machine, markdown_table, run_child, today

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

MiB = 2**20
CHECKPOINTING = {"off": False, "on": True}
FP32 = 4  # bytes
# Stored bytes per weight of the layers' linear projections (what bitsandbytes quantizes):
# nf4 packs two weights per byte plus one fp32 absmax per block of 64; int8 is one byte plus
# an fp32 scale per row (negligible).  Embeddings, norms and biases stay fp32.
WEIGHT_BYTES = {"fp32": 4.0, "int8": 1.0, "nf4": 0.5 + 4 / 64}
LORA_STATE_BYTES = 16  # per LoRA parameter: fp32 value, gradient, AdamW's two moments
# The loss's backward holds four vocab-wide copies per position at once: the logits (kept
# in the output), their log-softmax (saved for backward), its gradient and the logits'.
LOGITS_COPIES = 4


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's sizes (tied input and output embeddings)."""

    family: Literal["qwen2", "llama"]
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_parameters(self) -> int:
        """Weights of the layers' projections: q, k, v, o and the gated MLP's three."""
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_dim
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    def other_parameters(self) -> int:
        """Embedding (tied to the output layer), RMSNorm weights, Qwen2's q/k/v biases."""
        bias = self.hidden + 2 * self.kv_dim if self.family == "qwen2" else 0
        return self.vocab * self.hidden + self.layers * (2 * self.hidden + bias) + self.hidden

    def parameters(self) -> int:
        return self.linear_parameters() + self.other_parameters()

    def lora_parameters(self, r: int) -> int:
        """LoRA r on q_proj and v_proj (peft's default targets for both families)."""
        return self.layers * r * ((self.hidden + self.hidden) + (self.hidden + self.kv_dim))


QWEN_05B = Shape("qwen2", hidden=896, layers=24, intermediate=4864, heads=14, kv_heads=2,
                 vocab=151936)
SHAPES = {
    "qwen2.5-0.5b-6l": Shape(**{**QWEN_05B.__dict__, "layers": 6}),
    "qwen2.5-0.5b-12l": Shape(**{**QWEN_05B.__dict__, "layers": 12}),
    "qwen2.5-0.5b": QWEN_05B,
    "llama-3.2-1b": Shape("llama", hidden=2048, layers=16, intermediate=8192, heads=32,
                          kv_heads=8, vocab=128256),
}


def model_config(shape: Shape, special_tokens: dict[str, int]) -> PretrainedConfig:
    """The transformers config of ``shape`` (Qwen2 has q/k/v biases, Llama none)."""
    from transformers import LlamaConfig, Qwen2Config

    cls = Qwen2Config if shape.family == "qwen2" else LlamaConfig
    return cls(vocab_size=shape.vocab, hidden_size=shape.hidden,
               intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
               num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
               max_position_embeddings=4096, tie_word_embeddings=True, **special_tokens)


def write_model(shape: Shape, out: Path) -> Path:
    """A random model of ``shape`` saved in bf16 (half the disk and build memory of fp32;
    devices load it in fp32 or quantize it, as they would a real bf16 checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM

    from quant.base_model import causal_special_tokens, write_random_model

    def make(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
        config = model_config(shape, causal_special_tokens(tokenizer))
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)

    return write_random_model(out, make)


def activation_floats(shape: Shape, checkpointing: bool) -> int:
    """fp32 values kept for backward per token, counted from the layer's operations.

    Per layer without checkpointing: two RMSNorm inputs (2h); the dropout mask and input
    of LoRA A on q and v (2 x 1.25h); attention's output, query and keys/values (about
    2h + 2 kv_dim); the MLP's gate, its SiLU and the up projection (3 x intermediate).  The
    frozen projections keep nothing (their weights need no gradient).  With checkpointing,
    each layer keeps only its input, plus one layer recomputed at a time.  The output layer
    adds ``LOGITS_COPIES`` x vocab either way (every position's logits are computed)."""
    per_layer = 2 * shape.hidden + 2.5 * shape.hidden + 2 * shape.hidden + 2 * shape.kv_dim \
        + 3 * shape.intermediate
    layers = shape.layers * shape.hidden + per_layer if checkpointing \
        else shape.layers * per_layer
    return round(layers + LOGITS_COPIES * shape.vocab)


def predicted_peak_mb(shape: Shape, precision: str, batch: int, seq: int, checkpointing: bool,
                      runtime_mb: float, lora_r: int = 8) -> dict[str, float]:
    """The training peak the shapes predict, by part: the runtime (imports, measured),
    weights at ``WEIGHT_BYTES``, LoRA's parameters with their gradients and AdamW state, and
    batch x seq x ``activation_floats`` fp32 activations."""
    weights = shape.linear_parameters() * WEIGHT_BYTES[precision] \
        + shape.other_parameters() * FP32
    lora = shape.lora_parameters(lora_r) * LORA_STATE_BYTES
    activations = batch * seq * activation_floats(shape, checkpointing) * FP32
    parts = {"pred_weights_mb": weights / MiB, "pred_lora_mb": lora / MiB,
             "pred_activations_mb": activations / MiB}
    return {**{k: round(v) for k, v in parts.items()},
            "predicted_mb": round(runtime_mb + sum(parts.values()))}


def pairs(n: int) -> tuple[list[str], list[str]]:
    """Prompt/response pairs whose prompt is longer than any sequence length here, so that
    every row is cut to exactly ``max_length`` tokens (the loss is on the short answer)."""
    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 120)
    return ([f"{i} {prompt}" for i in range(n)],
            [f"the answer is {i} and nothing else" for i in range(n)])


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.precision import measure_training
    from edge_client.causal import tokenize_pairs
    from edge_client.memory import return_large_frees, rss_bytes
    from fedsa_common.federation.config import ModelSection
    from quant.adapters import build_adapter_model

    torch.set_num_threads(args.threads)
    return_large_frees()  # as a device with a memory budget does before loading
    runtime = rss_bytes()  # torch, transformers, peft and bitsandbytes imported
    start = time.perf_counter()
    spec = ModelSection(task="causal_lm", path=args.model, precision=args.precision,
                        max_length=args.max_length)
    adapter = build_adapter_model(spec, 0, seed=0)
    load_s = time.perf_counter() - start
    got = measure_training(
        adapter, lambda: tokenize_pairs(adapter.tokenizer, *pairs(args.batch * (args.steps + 2)),
                                        args.max_length),
        steps=args.steps, load_s=load_s, batch_size=args.batch, lr=1e-4,
        gradient_checkpointing=CHECKPOINTING[args.checkpoint])
    return {"runtime_mb": round(runtime / MiB), **got}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="nf4", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", default="off", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--max-length", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--precisions", default="fp32,int8,nf4")
    ap.add_argument("--checkpointing", default="off,on", help="off, on or off,on")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--max-lengths", default="256")
    ap.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0, help="per combination, seconds")
    ap.add_argument("--models-dir", type=Path,
                    help="keep the written models here and reuse them (default: a temporary "
                         "directory, removed at the end)")
    ap.add_argument("--out", type=Path, default=Path("runs/causal_memory.json"))
    ap.add_argument("--table", type=Path, nargs="+", metavar="JSON",
                    help="run nothing: print one table of these earlier --out files' rows, "
                         "their predictions recomputed with the current formula")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    if args.table:
        rows = [with_prediction(row) for path in args.table
                for row in json.loads(path.read_text())["rows"]]
        print(table(rows))
        return
    unknown = sorted(set(args.models.split(",")) - set(SHAPES))
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    root = args.models_dir or Path(tempfile.mkdtemp(prefix="fedsa-causal-"))
    rows: list[dict[str, Any]] = []
    try:
        for name in args.models.split(","):
            shape = SHAPES[name]
            path = root / name
            if not (path / "config.json").exists():
                write_model(shape, path)
            for precision in args.precisions.split(","):
                for seq in map(int, args.max_lengths.split(",")):
                    for batch in map(int, args.batches.split(",")):
                        for checkpoint in args.checkpointing.split(","):
                            key = {"model": name, "params_m": round(shape.parameters() / 1e6),
                                   "precision": precision, "seq": seq, "batch": batch,
                                   "checkpointing": checkpoint}
                            got = run_child("benchmarks.causal_memory", [
                                "--model", str(path), "--precision", precision,
                                "--checkpoint", checkpoint, "--batch", str(batch),
                                "--max-length", str(seq), "--steps", str(args.steps),
                                "--threads", str(args.threads)], args.timeout)
                            row = with_prediction({**key, **got})
                            print(json.dumps(row), flush=True)
                            rows.append(row)
    finally:
        if args.models_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    report = {"command": "python -m benchmarks.causal_memory " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k in ("models", "precisions", "checkpointing", "batches", "max_lengths",
                           "steps", "threads")),
              "machine": machine(), "date": today(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(rows))


def with_prediction(row: dict[str, Any]) -> dict[str, Any]:
    """A measured row with what ``predicted_peak_mb`` expects for it, and the ratio."""
    if "runtime_mb" not in row:  # failed or skipped
        return row
    row = {**row, **predicted_peak_mb(SHAPES[row["model"]], row["precision"], row["batch"],
                                      row["seq"], CHECKPOINTING[row["checkpointing"]],
                                      row["runtime_mb"])}
    row["measured_vs_predicted"] = round(row["train_peak_mb"] / row["predicted_mb"], 2)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(rows, [
        ("model", "model"), ("params_m", "params M"), ("precision", "base"), ("seq", "seq"),
        ("batch", "batch"), ("checkpointing", "checkpointing"),
        ("weights_mb", "weights MiB"), ("rss_loaded_mb", "RSS loaded MiB"),
        ("load_peak_mb", "peak load MiB"), ("train_peak_mb", "peak train MiB"),
        ("predicted_mb", "predicted MiB"),
        ("measured_vs_predicted", "measured/predicted"),
        ("cpu_s_per_sample", "CPU s/sample"), ("samples_per_s", "samples/s"),
        ("load1", "load avg"), ("error", "error")])


if __name__ == "__main__":
    main()
