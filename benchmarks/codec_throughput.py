"""Codec throughput and regional-hub ingest rate; prints Markdown tables.

Not part of the test suite (it measures, it asserts nothing).  Run from the repository
root with the project's environment active:

    python -m benchmarks.codec_throughput             # about a minute on 2 cores
    python -m benchmarks.codec_throughput --quick     # seconds: smoke run

1. Encode/decode speed, in MB/s of dense fp32 parameters (numel x 4 bytes), of every codec
   on MiniLM-shaped LoRA-A deltas (12 x [8, 384]) and on a larger set (64 x [16, 4096]:
   LoRA r=16 A on query and value of a 32-layer, 4096-wide model).  Encode is
   ``codec.encode`` (with an error-feedback residual) plus serialising the body; decode is
   parsing the body plus ``codec.decode``, as a hub does.
2. Regional-hub ingest: 1,000 simulated devices' updates (MiniLM shapes) are published
   through a real broker on 127.0.0.1 (``fedsa_common.broker.start_broker``, Mosquitto when
   installed) by four publisher sessions.  One subscriber only counts (the broker's raw
   message rate for these payload sizes); another decodes every update and folds it into
   the running sum with ``hub.intake.RegionIntake`` (the hub's rate, broker included).  The
   same decode-and-fold over the same payloads without a broker, per CPU second of the
   process, gives the hub's CPU bound.  The broker columns are wall-clock rates and depend
   on what else the machine runs; the others are CPU time.

Every loop is bounded (iteration counts and timeouts); nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import machine, today
from fedsa_common.broker import start_broker
from fedsa_common.config import FederationConfig, RoundPolicySection
from fedsa_common.envelope import pack_tensors, unpack_tensors
from fedsa_common.protocol import (
    AnnounceHeader,
    Topics,
    UpdateHeader,
    decode_message,
    encode_message,
)
from fedsa_common.transport import MqttSession
from hub.intake import RegionIntake
from quant.codec import get_codec
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


# ------------------------------------------------------------------------------- ingest


def announce(s: Setting, clients: list[str], shapes: dict[str, tuple[int, ...]]
             ) -> AnnounceHeader:
    return AnnounceHeader(federation=FEDERATION, round=ROUND, version=0, status="running",
                          selected={REGION: clients}, config=s.config, config_hash="x",
                          deadline_s=600, issued_at=time.time(), shared=sorted(shapes))


def new_intake(s: Setting, clients: list[str], shapes: dict[str, tuple[int, ...]]
               ) -> RegionIntake:
    intake = RegionIntake(REGION, FEDERATION)
    intake.announce(announce(s, clients, shapes), shapes, RoundPolicySection(), s.codec)
    return intake


def updates(s: Setting, clients: list[str], shapes: dict[str, tuple[int, ...]]
            ) -> list[bytes]:
    """One encoded update message per simulated device (a few distinct deltas reused)."""
    codec = get_codec(s.codec, **s.params)
    bodies = [codec.encode(deltas(shapes, i)) for i in range(8)]
    out = []
    for i, client in enumerate(clients):
        enc = bodies[i % len(bodies)]
        header = UpdateHeader(federation=FEDERATION, round=ROUND, client=client,
                              region=REGION, base_version=0, codec=s.codec,
                              codec_params=s.params, codec_meta=enc.meta, num_samples=10)
        out.append(encode_message(header, enc.tensors))
    return out


class Sink:
    """A subscriber callback that counts (and optionally ingests) until ``n`` arrived."""

    def __init__(self, n: int, ingest: RegionIntake | None) -> None:
        self.n, self.ingest = n, ingest
        self.count, self.errors = 0, 0
        self.done = threading.Event()
        self.last = 0.0

    def __call__(self, _topic: str, payload: bytes) -> None:
        if self.ingest is not None:
            try:
                header, env = decode_message(UpdateHeader, payload, max_bytes=16_000_000)
                self.ingest.offer(header, env.tensors, len(payload))
            except ValueError:
                self.errors += 1
        self.count += 1
        self.last = time.perf_counter()
        if self.count >= self.n:
            self.done.set()


def through_broker(url: str, payloads: list[bytes], clients: list[str],
                   ingest: RegionIntake | None, tag: str, timeout: float) -> float:
    """Messages per second from the first publish to the last message handled."""
    topics = Topics(FEDERATION)
    sink = Sink(len(payloads), ingest)
    sub = MqttSession(url, client_id=f"tp-sub-{tag}", clean_session=True)
    sub.connect()
    sub.subscribe(topics.update_filter(REGION), sink)
    pubs = [MqttSession(url, client_id=f"tp-pub-{tag}-{i}", clean_session=True)
            for i in range(4)]
    for p in pubs:
        p.connect()

    def publish(k: int) -> None:
        for i in range(k, len(payloads), len(pubs)):
            pubs[k].publish(topics.update(REGION, clients[i]), payloads[i], timeout=timeout)

    threads = [threading.Thread(target=publish, args=(k,)) for k in range(len(pubs))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    finished = sink.done.wait(timeout)
    for t in threads:
        t.join(timeout)
    for session in (*pubs, sub):
        session.close()
    if not finished or sink.errors:
        print(f"  ({tag}: {sink.count}/{len(payloads)} handled, {sink.errors} refused)",
              file=sys.stderr)
    return sink.count / max(sink.last - start, 1e-9)


def ingest_table(devices: int, timeout: float) -> str:
    shapes = SETS["MiniLM A (12 x [8,384])"]
    clients = [f"d{i:05d}" for i in range(devices)]
    lines = ["| codec | update bytes | broker raw msg/s (count only) | hub ingest updates/s "
             "(via broker) | hub ingest updates per CPU second (no broker) |",
             "|---|---:|---:|---:|---:|"]
    with start_broker("auto", max_packet_bytes=4_000_000) as broker:
        print(f"  broker: {broker.kind} at {broker.url}", file=sys.stderr)
        for n, label in enumerate(INGEST_CODECS):
            s = setting(label)
            payloads = updates(s, clients, shapes)
            raw = through_broker(broker.url, payloads, clients, None, f"raw{n}", timeout)
            intake = new_intake(s, clients, shapes)
            hub = through_broker(broker.url, payloads, clients, intake, f"hub{n}", timeout)
            if len(intake.accepted_ids) != devices:
                print(f"  ({label}: hub accepted {len(intake.accepted_ids)}/{devices})",
                      file=sys.stderr)
            intake = new_intake(s, clients, shapes)
            t0 = time.process_time()
            for payload in payloads:
                header, env = decode_message(UpdateHeader, payload, max_bytes=16_000_000)
                intake.offer(header, env.tensors, len(payload))
            cpu = devices / (time.process_time() - t0)
            size = statistics.mean(len(p) for p in payloads)
            lines.append(f"| {label} | {size:,.0f} | {raw:,.0f} | {hub:,.0f} | {cpu:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--min-s", type=float, default=0.5,
                        help="time budget per codec timing (bounded by --max-iters)")
    parser.add_argument("--max-iters", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default because these are many small "
                             "tensor operations, where OpenMP hand-offs cost more than they "
                             "gain (and a hub shares its cores with the broker)")
    parser.add_argument("--quick", action="store_true", help="100 devices, short timings")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.min_s, args.max_iters = 100, 0.05, 5
    torch.set_num_threads(args.threads)
    print(f"# Codec throughput ({today()}; {machine()}, {args.threads} torch thread(s))\n")
    print("MB/s are of dense fp32 parameters (numel x 4 bytes) per CPU second of this "
          "process, median of a bounded loop.\n")
    print(codec_table(args.min_s, args.max_iters))
    print(f"\n# Regional-hub ingest: {args.devices} devices, MiniLM A, loopback broker\n")
    print(ingest_table(args.devices, args.timeout))


if __name__ == "__main__":
    main()
