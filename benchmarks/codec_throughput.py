"""Codec throughput; prints a Markdown table.

Not part of the test suite (it measures, it asserts nothing).  Run from the repository
root with the project's environment active:

    python -m benchmarks.codec_throughput             # about a minute on 2 cores
    python -m benchmarks.codec_throughput --quick     # seconds: smoke run

Encode/decode speed, in MB/s of dense fp32 parameters (numel x 4 bytes), of every codec on
MiniLM-shaped LoRA-A deltas (12 x [8, 384]) and on a larger set (64 x [16, 4096]: LoRA r=16
A on query and value of a 32-layer, 4096-wide model).  Encode is ``codec.encode`` (with an
error-feedback residual) plus serialising the body; decode is parsing the body plus
``codec.decode``, as a hub does.  Regional-hub ingest through a real broker is measured by
``benchmarks.hub_ingest``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import machine, today
from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.envelope import pack_tensors, unpack_tensors
from scenarios.bench_sweep import parse_compression

CODECS = ["dense:fp32", "topk_int8:0.1", "topk:0.1:int8", "topk:0.1:int8:zstd",
          "topk:0.01:int4", "topk:0.01:int4:zstd", "randk:0.05:int8", "randk:0.05:int4:b64",
          "dense:fp16", "dense:int8"]
INGEST_CODECS = ["dense:fp32", "topk_int8:0.1", "topk:0.1:int8", "topk:0.01:int4:zstd",
                 "randk:0.05:int8"]
SETS: dict[str, dict[str, tuple[int, ...]]] = {
    "MiniLM A (12 x [8,384])": {
        f"bert.encoder.layer.{i // 2}.attention.self.{('query', 'value')[i % 2]}"
        f".lora_A.weight": (8, 384) for i in range(12)},
    "large A (64 x [16,4096])": {
        f"model.layers.{i // 2}.self_attn.{('q_proj', 'v_proj')[i % 2]}.lora_A.weight":
        (16, 4096) for i in range(64)},
}
FEDERATION, REGION, ROUND, SEED = "tp", "r0", 1, 0


@dataclass(frozen=True)
class Setting:
    label: str
    codec: str
    params: dict[str, Any]
    config: dict[str, Any]


def setting(label: str) -> Setting:
    """The codec of a bench label, with the round's parameters, as a device builds it."""
    settings = parse_compression(label).settings
    config = FederationConfig.model_validate(
        {"federation": {"name": FEDERATION, "seed": SEED},
         "fedsa_lora": {"compression": settings}})
    comp = config.fedsa_lora.compression
    return Setting(label, comp.codec, comp.round_codec_params(SEED, ROUND),
                   config.model_dump(mode="json"))


def deltas(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * 1e-3 for n, s in shapes.items()}


def timed(fn: Callable[[], Any], min_s: float, max_iters: int) -> float:
    """Median CPU seconds per call over a bounded loop (at least 3 calls, one warm-up).

    CPU time of this process rather than wall time: with one torch thread the two agree on
    an idle machine, and on a shared one the CPU time is not inflated by other processes.
    """
    fn()
    times: list[float] = []
    start = time.process_time()
    while len(times) < max_iters and (len(times) < 3 or time.process_time() - start < min_s):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def measure(s: Setting, delta: dict[str, torch.Tensor], old: dict[str, torch.Tensor],
            shapes: dict[str, tuple[int, ...]], min_s: float, max_iters: int
            ) -> tuple[int, float, float]:
    """(body bytes, seconds to encode and serialise, seconds to parse and decode)."""
    codec = get_codec(s.codec, **s.params)
    enc = codec.encode(delta, old)
    body = pack_tensors(enc.tensors)
    t_enc = timed(lambda: pack_tensors(codec.encode(delta, old).tensors), min_s, max_iters)
    t_dec = timed(lambda: codec.decode(unpack_tensors(body), enc.meta, shapes), min_s,
                  max_iters)
    return len(body), t_enc, t_dec


def codec_table(min_s: float, max_iters: int) -> str:
    lines = ["| set | codec | bytes on the wire | x smaller | encode MB/s | decode MB/s |",
             "|---|---|---:|---:|---:|---:|"]
    for set_name, shapes in SETS.items():
        dense_bytes = sum(4 * torch.Size(s).numel() for s in shapes.values())
        delta, old = deltas(shapes, 0), deltas(shapes, 1)
        for label in CODECS:
            size, t_enc, t_dec = measure(setting(label), delta, old, shapes, min_s, max_iters)
            lines.append(f"| {set_name} | {label} | {size:,} | "
                         f"{dense_bytes / size:.1f} | {dense_bytes / t_enc / 1e6:,.0f} | "
                         f"{dense_bytes / t_dec / 1e6:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-s", type=float, default=0.5,
                        help="time budget per codec timing (bounded by --max-iters)")
    parser.add_argument("--max-iters", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default because these are many small "
                             "tensor operations, where OpenMP hand-offs cost more than they "
                             "gain (and a hub shares its cores with the broker)")
    parser.add_argument("--quick", action="store_true", help="short timings")
    args = parser.parse_args()
    if args.quick:
        args.min_s, args.max_iters = 0.05, 5
    torch.set_num_threads(args.threads)
    print(f"# Codec throughput ({today()}; {machine()}, {args.threads} torch thread(s))\n")
    print("MB/s are of dense fp32 parameters (numel x 4 bytes) per CPU second of this "
          "process, median of a bounded loop.\n")
    print(codec_table(args.min_s, args.max_iters))


if __name__ == "__main__":
    main()
