"""A region served by two intake processes (issue 17, point 3), against a real broker and
real processes: ``hub serve --role cloud`` and ``hub serve --role regional --intake-shards
2`` (a leader and its two intake children).

The test plays six devices itself (hand-made dense updates whose weighted sums are exact in
float32, so that any order of addition gives the same bits).  Every update is accepted
exactly once across a device's resend and across a crash (SIGKILL) and restart of the
intake process that holds it; the region forwards one final partial to the cloud whose sums
equal, bit for bit, one process's running sum of the same updates (``RegionIntake``); the
round completes with every update applied once.  A second test SIGKILLs the leader: its
intake processes, listed by ``hub status`` under the region while they run, stop by
themselves, and ``hub status`` then reports them offline.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
from typer.testing import CliRunner

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import (
    Ack,
    PartialHeader,
    RoundSummary,
    Topics,
    decode_json,
    decode_message,
)
from fedsa_common.wire.shards import intake_shard
from hub.cli import app
from hub.intake import RegionIntake
from tests.support.procs import children, cmdline, wait_gone
from tests.support.scripted_devices import ScriptedDevices, dense_update

pytestmark = pytest.mark.integration

FED = "shards"
REGION = "r1"  # what the start_hubs fixture serves
CLIENTS = [f"d{i}" for i in range(6)]
K = 2


def config() -> FederationConfig:
    return FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 1},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
        "fedsa_lora": {"compression": {"method": "dense"}},
        "rounds": 1,
        "sampling": {"min_clients": len(CLIENTS), "wait_for_clients_s": 120},
        "round_policy": {"deadline_s": 120, "resend_s": 1},
        "intake_shards": {REGION: K},
    })


def delta(i: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Multiples of 1/4 below 8: weighted by up to 6 samples and summed over six devices
    they stay exact in float32, so the sum does not depend on the order of addition."""
    out = {}
    for n, s in sorted(shapes.items()):
        numel = int(torch.tensor(s).prod())
        out[n] = ((torch.arange(numel) * (i + 3) % 29 - 14).float() / 4).reshape(s)
    return out


def test_two_intake_processes_fold_into_one_partial(tmp_path, broker, start_hubs):
    cfg = config()
    shards = {c: intake_shard(c, K) for c in CLIENTS}
    assert sorted(set(shards.values())) == [0, 1]  # both processes have devices
    topics = Topics(FED)
    devices = ScriptedDevices(broker.url, FED, framed=(topics.announce, topics.partial(REGION)),
                              raw=(f"{topics.base}/ack/{REGION}/+", topics.summary,
                                   topics.intake_status(REGION, 0),
                                   topics.intake_status(REGION, 1)))
    procs = start_hubs(broker.url, cfg, regional_args=("--intake-shards", str(K)))
    devices.hubs = procs
    wait_for = devices.wait_for

    def ack_of(client: str, after: int) -> Ack:
        return wait_for(f"{client}'s ack", lambda t, p: decode_json(Ack, p) if (
            t == topics.ack(REGION, client) and p) else None, after=after)

    def serving(shard: int, since: float, after: int = 0) -> None:
        wait_for(f"intake {shard}'s status", lambda t, p: True if (
            t == topics.intake_status(REGION, shard) and p
            and json.loads(p).get("ts", 0) >= since) else None, after=after)

    try:
        start = time.time()
        for shard in range(K):  # subscribed before any update is published
            serving(shard, start)
        for client in CLIENTS:
            devices.presence(REGION, client)
        header, env = devices.running_announcement()
        shapes = {n: tuple(t.shape) for n, t in env.tensors.items()}
        payloads = {client: dense_update(header, REGION, client, delta(i, shapes), i + 1)
                    for i, client in enumerate(CLIENTS)}

        def send(client: str) -> Ack:
            mark = devices.mark()
            devices.session.publish(topics.device_update(REGION, client, K),
                                    payloads[client][2], timeout=30)
            return ack_of(client, mark)

        first = [c for c in CLIENTS if shards[c] == shards[CLIENTS[0]]]
        other = [c for c in CLIENTS if c not in first]
        # the first device of each shard, then a resend: acknowledged, not counted again
        for client in (first[0], other[0]):
            ack = send(client)
            assert (ack.accepted, ack.reason) == (True, None), ack
        ack = send(first[0])
        assert (ack.accepted, ack.reason) == (True, "duplicate"), ack

        # the intake process holding first[0]'s update crashes; its leader restarts it
        victim = next(pid for pid in children(procs[1].pid) if "--shard" in (
            args := cmdline(pid)) and args[args.index("--shard") + 1] == str(shards[first[0]]))
        killed_at = time.time()
        mark = devices.mark()
        os.kill(victim, signal.SIGKILL)
        serving(shards[first[0]], killed_at, after=mark)
        ack = send(first[0])  # the device resends: the restarted process remembers it
        assert (ack.accepted, ack.reason) == (True, "duplicate"), ack
        for client in CLIENTS:
            if client not in (first[0], other[0]):
                ack = send(client)
                assert (ack.accepted, ack.reason) == (True, None), (client, ack)

        partial_header, partial_env = wait_for("the region's partial", lambda t, p: (
            decode_message(PartialHeader, p, max_bytes=64_000_000)
            if t == topics.partial(REGION) and p else None))
        summary = wait_for("round summary", lambda t, p: (
            decode_json(RoundSummary, p, max_bytes=16_000_000)
            if t == topics.summary and p else None))
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        devices.close()

    # one process's running sum of the same updates
    one = RegionIntake(REGION, FED)
    one.announce(header, shapes, cfg.round_policy, "dense")
    for client in CLIENTS:
        update, tensors, payload = payloads[client]
        one.accept(update, tensors, len(payload))
    [(expected_header, expected)] = one.flush(final=True)
    assert partial_header.final and partial_header.worker is None
    assert partial_header.pid == f"{REGION}:1:0"  # the region's first partial: one
    assert partial_header.count == len(CLIENTS)
    assert sorted(partial_header.accepted) == sorted(f"{c}:1" for c in CLIENTS)
    assert partial_header.weight == expected_header.weight == sum(range(1, 7))
    assert sorted(partial_env.tensors) == sorted(expected)
    for n, t in expected.items():
        assert torch.equal(partial_env.tensors[n], t), n
        by_hand = sum((i + 1) * delta(i, shapes)[n] for i in range(len(CLIENTS)))
        assert torch.equal(t, by_hand), n
    assert summary.applied_step
    assert sorted(summary.applied) == sorted(f"{c}:1" for c in CLIENTS)
    assert summary.rejected == {} and summary.dropped == {}
    log = (tmp_path / "regional").joinpath(f"intake-{shards[first[0]]}.log").read_text()
    assert "restored intake of round 1" in log


def intake_lines(broker_url: str) -> tuple[list[str], str]:
    """``hub status``'s lines of region r1's intake processes, and its whole output."""
    result = CliRunner().invoke(app, ["status", "--broker", broker_url, "--federation", FED,
                                      "--timeout", "5"])
    return [line.strip() for line in result.stdout.splitlines()
            if line.startswith("    intake ")], result.stdout


def test_intake_processes_stop_when_their_leader_is_sigkilled(broker, start_hubs):
    [leader] = start_hubs(broker.url, config(), roles=("regional",),
                          regional_args=("--intake-shards", str(K)))
    until = time.monotonic() + 180
    while True:  # both intake processes connected and said so (no announcement needed)
        lines, out = intake_lines(broker.url)
        if [line.split()[:3] for line in lines] == [["intake", str(i), "online"]
                                                    for i in range(K)]:
            break
        assert leader.poll() is None, "the leader exited"
        assert time.monotonic() < until, f"no two online intake processes in:\n{out}"
        time.sleep(0.5)
    assert out.index("regional/r1") < out.index("intake 0") < out.index("intake 1"), out
    workers = [pid for pid in children(leader.pid) if "intake" in cmdline(pid)]
    assert len(workers) == K

    leader.send_signal(signal.SIGKILL)  # no clean-up runs in the leader
    leader.wait(timeout=30)
    left = wait_gone(workers, bound_s=120)
    for pid in left:  # not to outlive the test when it fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], "intake processes outlived their leader"
    lines, out = intake_lines(broker.url)
    assert [line.split()[:3] for line in lines] == [["intake", str(i), "OFFLINE"]
                                                    for i in range(K)], out
    assert "regional/r1 intake 0 offline" in out and "regional/r1 intake 1 offline" in out
