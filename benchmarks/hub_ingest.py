"""Regional-hub ingest against the broker's raw delivery rate; prints a Markdown table.

Not part of the test suite (it measures, it asserts nothing).  From the repository root,
with the project's environment active and Mosquitto installed:

    python -m benchmarks.hub_ingest                 # 1,000 devices, five codecs: ~2 minutes
    python -m benchmarks.hub_ingest --quick         # 200 devices, two codecs
    python -m benchmarks.hub_ingest --intake-shards 1,2   # the hub with 1 and 2 intake processes

For every codec, 1,000 simulated devices' updates (MiniLM-shaped LoRA-A deltas, one per
device id, encoded as a device encodes them) are queued at a real Mosquitto for a
subscriber whose persistent session is offline; then the subscriber comes online and the
broker delivers the backlog as fast as the broker and the subscriber can go.  Queueing
first takes the publishers out of the measurement (on a 2-core machine they would compete
with what is measured) and is what a regional hub sees after a restart or a burst.  Rates
are updates per second of wall time:

* ``raw C``: ``mosquitto_sub`` (Mosquitto's own C client) only counts the messages: the
  broker's delivery rate for these payloads;
* ``raw paho``: a Python subscriber on the project's transport (paho-mqtt, reassembly)
  that only counts: the ceiling for any Python subscriber;
* ``paho + acks``: the same subscriber that also acknowledges every update on its
  device's ack topic (one QoS 1 message each, published in batches), as the protocol
  requires of a hub, and does nothing else: the ceiling of any hub on this transport;
* ``hub``: the real regional hub process (``hub serve --role regional``, default INFO
  logging), which validates, decodes and folds every update into its running sum, persists
  its intake (atomically, on disk) and acknowledges each update; from its status message
  after connecting to its last acknowledgement.  With ``--intake-shards K`` (K > 1) the
  region is served by a leader and K intake processes (``--intake-shards K``; the devices
  publish to their shard's topic): from the first intake process's status to the last
  acknowledgement, CPU summed over the leader and its intake processes;
* ``CPU``: the same decode-and-fold (``hub.intake.RegionIntake``) without broker, per CPU
  second of this process: what the hub's Python costs per update;
* ``per CPU s``: ``raw paho``, ``paho + acks`` and ``hub`` again, per CPU second their
  process used while draining (all its threads; the hub's from its status message to its
  last acknowledgement, read from /proc every 50 ms): on a busy machine, where wall rates
  depend on what else runs, the ratio of these is the steadier one.

Every wait is bounded; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.codec_throughput import FEDERATION, REGION, ROUND, SETS, Setting, deltas, setting
from benchmarks.common import machine, today
from fedsa_common.federation.config import RoundPolicySection
from fedsa_common.net.broker import BrokerProcess, start_broker
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.protocol import (
    Ack,
    AnnounceHeader,
    Topics,
    UpdateHeader,
    decode_message,
    encode_json,
    encode_message,
)
from hub.intake import RegionIntake
from quant.adapters import init_adapter_values

CODECS = ["dense:fp32", "topk_int8:0.1", "topk:0.1:int8", "topk:0.01:int4:zstd",
          "randk:0.05:int8"]
SHAPES = SETS["MiniLM A (12 x [8,384])"]


def announce(s: Setting, clients: list[str], shapes: dict[str, tuple[int, ...]],
             shards: int = 1) -> AnnounceHeader:
    config = dict(s.config, **({"intake_shards": {REGION: shards}} if shards > 1 else {}))
    return AnnounceHeader(federation=FEDERATION, round=ROUND, version=0, status="running",
                          selected={REGION: clients}, config=config, config_hash="x",
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


def queue_updates(url: str, payloads: list[bytes], clients: list[str], timeout: float,
                  shards: int = 1) -> None:
    """Publish every update (QoS 1, acknowledged by the broker) from four sessions, each to
    its device's topic for a region of ``shards`` intake processes."""
    topics = Topics(FEDERATION)
    pubs = [MqttSession(url, client_id=f"ing-pub-{i}", clean_session=True) for i in range(4)]
    for p in pubs:
        p.connect()

    def publish(k: int) -> None:
        for i in range(k, len(payloads), len(pubs)):
            pubs[k].publish(topics.device_update(REGION, clients[i], shards), payloads[i],
                            timeout=timeout)

    threads = [threading.Thread(target=publish, args=(k,)) for k in range(len(pubs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    for p in pubs:
        p.close()


def register(url: str, client_id: str) -> MqttSession:
    """A persistent session subscribed to the region's updates, then taken offline."""
    session = MqttSession(url, client_id=client_id, clean_session=False)
    session.connect()
    session.subscribe(Topics(FEDERATION).update_filter(REGION), lambda _t, _p: None)
    session.close()
    return session


def raw_c(url: str, n: int, payloads: list[bytes], clients: list[str], timeout: float
          ) -> float | None:
    """mosquitto_sub draining a backlog of ``n`` updates (None without mosquitto_sub)."""
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        return None
    host, port = url.removeprefix("mqtt://").split(":")
    topic = Topics(FEDERATION).update_filter(REGION) + "/#"
    base = [binary, "-h", host, "-p", port, "-q", "1", "-c", "-i", "ing-raw-c", "-t", topic]
    subprocess.run([*base, "-W", "1"], capture_output=True, timeout=timeout)  # register
    queue_updates(url, payloads, clients, timeout)
    start = time.perf_counter()
    done = subprocess.run([*base, "-C", str(n), "-W", str(int(timeout))], timeout=timeout + 5,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        print(f"  (mosquitto_sub exit {done.returncode}: {done.stderr[-200:]!r})",
              file=sys.stderr)
        return None
    return n / elapsed


def raw_paho(url: str, n: int, payloads: list[bytes], clients: list[str], timeout: float,
             acks: bool = False) -> tuple[float, float]:
    """A counting Python subscriber draining a backlog of ``n`` updates: (updates per
    second, updates per CPU second of this process).

    With ``acks`` it also acknowledges every update on its device's ack topic, as a hub
    must (one QoS 1 ``Ack`` per update, published in batches of whatever arrived meanwhile,
    one round trip per batch, as the hub's group commit does), and does nothing else: no
    decoding, no checks, no fold, no persistence.  That is the ceiling of any hub under
    this protocol; ``n`` counts the acknowledgements the broker confirmed."""
    client_id = "ing-raw-ack" if acks else "ing-raw-paho"
    register(url, client_id)
    queue_updates(url, payloads, clients, timeout)
    topics = Topics(FEDERATION)
    count, done, last = [0], threading.Event(), [0.0]
    pending: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def on_update(topic: str, _payload: bytes) -> None:
        if acks:
            client = topic.rsplit("/", 1)[1]
            ack = Ack(kind="update", id=f"{client}:{ROUND}", accepted=True)
            with lock:
                pending.append((topics.ack(REGION, client), encode_json(ack)))
        count[0] += 1
        last[0] = time.perf_counter()
        if count[0] >= n:
            done.set()

    session = MqttSession(url, client_id=client_id, clean_session=False)
    start, cpu = time.perf_counter(), time.process_time()
    session.subscribe(topics.update_filter(REGION), on_update)
    session.connect()
    acked = 0
    while acks and acked < n and time.perf_counter() - start < timeout:
        with lock:
            batch, pending[:] = list(pending), []
        if batch:
            session.publish_raw_many(batch, timeout=timeout)
            acked += len(batch)
            last[0] = time.perf_counter()
        else:
            time.sleep(0.002)
    done.wait(timeout)
    cpu = time.process_time() - cpu
    session.close()
    got = acked if acks else count[0]
    if got < n:
        print(f"  ({client_id} got {got}/{n})", file=sys.stderr)
    return got / max(last[0] - start, 1e-9), got / max(cpu, 1e-9)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system, all threads) that process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a region leader's intake processes)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class HubWatch:
    """Acknowledgements and status messages of the regional hub, with arrival times."""

    def __init__(self, url: str, shards: int = 1) -> None:
        topics = Topics(FEDERATION)
        self.acks: dict[str, tuple[bool, float]] = {}
        self.status: list[dict] = []
        self.lock = threading.Lock()
        self.session = MqttSession(url, client_id="ing-watch", clean_session=True)
        self.session.subscribe_raw(f"{topics.base}/ack/{REGION}/+", self.on_ack)
        # who drains the backlog: the hub, or its intake processes
        self.session.subscribe_raw(topics.status("regional", REGION), self.on_status)
        if shards > 1:
            self.session.subscribe_raw(f"{topics.base}/region/{REGION}/intake/status/+",
                                       self.on_status)
        self.session.connect()

    def on_ack(self, _topic: str, payload: bytes) -> None:
        ack = json.loads(payload)
        with self.lock:
            self.acks.setdefault(ack["id"], (bool(ack["accepted"]), time.time()))

    def on_status(self, _topic: str, payload: bytes) -> None:
        if payload:
            with self.lock:
                self.status.append(json.loads(payload))

    def wait(self, predicate, timeout: float) -> bool:
        until = time.time() + timeout
        while time.time() < until:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.05)
        return False


def hub_process(url: str, s: Setting, payloads: list[bytes], clients: list[str],
                workdir: Path, timeout: float, shards: int = 1
                ) -> tuple[float | None, float | None]:
    """The real regional hub (with ``shards`` > 1: its leader and intake processes)
    draining a backlog: (updates/s, updates per CPU second of its processes), None where it
    did not acknowledge them all."""
    topics = Topics(FEDERATION)
    cloud = MqttSession(url, client_id="ing-cloud", clean_session=True)
    cloud.connect()
    header = announce(s, clients, SHAPES, shards)
    cloud.publish(topics.announce, encode_message(header, init_adapter_values(SHAPES, 0)),
                  retain=True, timeout=timeout)
    watch = HubWatch(url, shards)
    state = workdir / "hub-state"
    cmd = [sys.executable, "-m", "hub", "serve", "--role", "regional", "--region", REGION,
           "--federation", FEDERATION, "--broker", url, "--state-dir", str(state),
           "--intake-shards", str(shards)]
    logs = [workdir / "hub.log"] if shards == 1 else [
        state / f"intake-{i}.log" for i in range(shards)]  # who takes the round's updates
    log = (workdir / "hub.log").open("ab")
    try:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        serving = watch.wait(lambda w: all(_log_has(p, "devices selected") for p in logs),
                             timeout)
        first.terminate()
        first.wait(timeout)
        if not serving:
            print("  (hub never took the round)", file=sys.stderr)
            return None, None
        queue_updates(url, payloads, clients, timeout, shards)
        restarted = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        n = len(payloads)
        # CPU of each process from its first status (it connected: torch's import and the
        # intake processes' start-up are not ingest) to the last acknowledgement
        started = started_cpu(watch, proc.pid, shards, restarted, timeout)
        watch.wait(lambda w: len(w.acks) >= n, timeout)
        cpu = sum(cpu_seconds(pid) - c0 for pid, c0 in started.values())
        proc.terminate()
        proc.wait(timeout)
    finally:
        log.close()
        cloud.clear_retained(topics.announce)
        cloud.close()
        watch.session.close()
    drains = REGION if shards == 1 else f"{REGION}."  # the processes that take updates
    starts = [st["ts"] for st in watch.status if st.get("ts", 0) >= restarted
              and st.get("name", "").startswith(drains)]
    acked = [t for ok, t in watch.acks.values() if ok]
    if not starts or len(acked) < len(payloads):
        print(f"  (hub acknowledged {len(acked)}/{len(payloads)})", file=sys.stderr)
        return None, None
    return len(acked) / max(max(acked) - min(starts), 1e-9), len(acked) / max(cpu, 1e-9)


def started_cpu(watch: HubWatch, leader: int, shards: int, since: float, timeout: float
                ) -> dict[str, tuple[int, float]]:
    """Process name -> (pid, its CPU seconds when its first status after ``since`` came):
    the hub, or the leader and its ``shards`` intake processes (``REGION.i``)."""
    names = [REGION] + ([f"{REGION}.{i}" for i in range(shards)] if shards > 1 else [])
    out: dict[str, tuple[int, float]] = {}
    until = time.time() + timeout
    while len(out) < len(names) and time.time() < until:
        pids = {REGION: leader}
        for pid in children(leader):
            args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            if "--shard" in args:
                pids[f"{REGION}.{args[args.index('--shard') + 1]}"] = pid
        with watch.lock:
            fresh = {st.get("name") for st in watch.status if st.get("ts", 0) >= since}
        for name in names:
            if name in fresh and name in pids and name not in out:
                out[name] = (pids[name], cpu_seconds(pids[name]))
        time.sleep(0.005)
    return out


def _log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def cpu_rate(s: Setting, payloads: list[bytes], clients: list[str]) -> float:
    intake = new_intake(s, clients, SHAPES)
    t0 = time.process_time()
    for payload in payloads:
        header, env = decode_message(UpdateHeader, payload, max_bytes=16_000_000)
        intake.accept(header, env.tensors, len(payload))
    return len(payloads) / (time.process_time() - t0)


def ingest_table(devices: int, codecs: list[str], timeout: float,
                 shard_counts: list[int] | None = None) -> str:
    """One row per codec and number of intake processes (``shard_counts``, default [1]);
    the raw and no-broker columns are measured once per codec."""
    clients = [f"d{i:05d}" for i in range(devices)]
    lines = ["| codec | intake processes | update bytes | raw C updates/s | raw paho updates/s "
             "| hub process updates/s | hub / raw C | hub / raw paho | hub CPU updates/s (no "
             "broker) | raw paho per CPU s | paho + acks per CPU s | hub per CPU s "
             "| paho + acks / raw paho per CPU s | hub / raw paho per CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in codecs:
        s = setting(label)
        payloads = updates(s, clients, SHAPES)
        with tempfile.TemporaryDirectory(prefix="fedsa-ingest-") as tmp, \
                _broker(Path(tmp), devices) as broker:
            c = raw_c(broker.url, devices, payloads, clients, timeout)
            paho, paho_cpu = raw_paho(broker.url, devices, payloads, clients, timeout)
        with tempfile.TemporaryDirectory(prefix="fedsa-ingest-") as tmp, \
                _broker(Path(tmp), devices) as broker:
            _, ack_cpu = raw_paho(broker.url, devices, payloads, clients, timeout, acks=True)
        cpu = cpu_rate(s, payloads, clients)
        size = statistics.mean(len(p) for p in payloads)
        for k in shard_counts or [1]:
            with tempfile.TemporaryDirectory(prefix="fedsa-ingest-") as tmp, \
                    _broker(Path(tmp), devices) as broker:
                hub, hub_cpu = hub_process(broker.url, s, payloads, clients, Path(tmp),
                                           timeout, k)
            lines.append("| " + " | ".join([
                label, str(k), f"{size:,.0f}", _n(c), _n(paho), _n(hub), _ratio(hub, c),
                _ratio(hub, paho), _n(cpu), _n(paho_cpu), _n(ack_cpu), _n(hub_cpu),
                _ratio(ack_cpu, paho_cpu), _ratio(hub_cpu, paho_cpu)]) + " |")
            print(lines[-1], file=sys.stderr)
    return "\n".join(lines)


def _broker(workdir: Path, devices: int) -> BrokerProcess:
    return start_broker("mosquitto", workdir=workdir, max_packet_bytes=4_000_000,
                        max_queued_messages=devices * 4 + 100)


def _n(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="200 devices, two codecs")
    parser.add_argument("--intake-shards", default="1",
                        help="comma-separated numbers of intake processes serving the region "
                             "(hub serve --intake-shards), one row each: e.g. 1,2")
    args = parser.parse_args()
    codecs = args.codecs.split(",")
    if args.quick:
        args.devices, codecs = 200, codecs[:2]
    torch.set_num_threads(1)
    print(f"# Regional-hub ingest ({today()}; {machine()}); {args.devices} devices, MiniLM A, "
          "Mosquitto on 127.0.0.1, backlog drained\n")
    shard_counts = [int(k) for k in args.intake_shards.split(",")]
    print(ingest_table(args.devices, codecs, args.timeout, shard_counts))


if __name__ == "__main__":
    main()
