"""Fuzz of the cloud hub's partial path with hostile payloads (hypothesis; no broker).

Each example builds a real ``CloudHub`` (never connected) in the middle of round 3 and
delivers one regional partial (honest, mutated or garbage, from a known region or a made-up
one) as MQTT frames through the session's frame dispatch into ``CloudHub.handle_event`` --
what the cloud's round loop runs for every partial and presence message.

Properties: only ``WireError`` is ever raised inside (anything else would end the cloud
hub); every message is merged, acknowledged as a duplicate, refused under exactly one
counted reason from ``WIRE_REASONS``, or visibly held (an incomplete frame); a refusal
leaves the round's running sum untouched; the sum and its weight stay finite; and whatever
the round records (update ids, reasons) can still be written out as the round's summary
and in-flight state (UTF-8 JSON).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.chunking import split_payload
from fedsa_common.wire.envelope import pack_tensors
from fedsa_common.wire.protocol import PartialHeader, Presence, Topics, decode_json, encode_message
from hub.aggregation import RunningSum
from hub.checkpoint import CloudState
from hub.cloud import CloudHub
from hub.cloud_intake import CloudIntake
from tests.support.hostile import (
    WIRE_REASONS,
    broken_frame,
    envelope,
    frame,
    hostile_json,
    hostile_message,
    msg_id,
    mutate_bytes,
)

SHAPES = {"l0.lora_A.weight": (2, 8), "l1.lora_A.weight": (3, 5)}
TOPICS = Topics("f")
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow]}


def cloud_in_round_3(state_dir: Path, late: str) -> tuple[CloudHub, CloudState]:
    config = FederationConfig.model_validate(
        {"federation": {"name": "f"}, "round_policy": {"late": late}})
    cloud = CloudHub("mqtt://127.0.0.1:1", config, state_dir)
    cloud.listen("presence", TOPICS.presence_filter, raw=True)  # as run() does
    cloud.listen("partial", TOPICS.partial_filter)
    state = CloudState(2, 2, {n: torch.zeros(s) for n, s in SHAPES.items()}, config.digest())
    cloud.inflight = CloudIntake(3, b"", {"north": ["n1", "n2"], "south": ["s1"]}, 0.0,
                                 RunningSum.zeros(SHAPES))
    return cloud, state


def partial(rng: random.Random) -> tuple[PartialHeader, dict[str, torch.Tensor]]:
    region = rng.choices(["north", "south", "mallory"], [4, 2, 1])[0]
    count = rng.randint(0, 3)
    header = PartialHeader(
        federation="f", round=rng.choices([3, 2, 4], [8, 1, 1])[0], region=region,
        base_version=rng.choices([2, 1, 3], [8, 1, 1])[0], seq=rng.randint(0, 3),
        final=rng.random() < 0.5, count=count, weight=float(count * rng.randint(1, 9)),
        accepted=[f"{region[0]}{i}:3" for i in range(count)],
        rejected={"stale": rng.randint(0, 3)}, duplicates=rng.randint(0, 2),
        bytes_in=rng.randint(0, 999))
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    return header, {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}


def deliver(cloud: CloudHub, topic: str, payload: bytes, rng: random.Random) -> None:
    how = rng.random()
    if how < 0.6:
        cloud.session._dispatch(f"{topic}/0", frame(payload, mid=msg_id(rng)))
    elif how < 0.75:
        suffix, bad = broken_frame(payload, rng)
        cloud.session._dispatch(f"{topic}/{suffix}", bad)
    elif how < 0.9:
        # (never empty: an empty frame is a cleared retained message, ignored by design)
        raw = mutate_bytes(frame(payload, mid=msg_id(rng)), rng) or b"\x00"
        cloud.session._dispatch(f"{topic}/0", raw)
    else:
        for idx, raw in enumerate(split_payload(payload, 280, msg_id(rng))):
            cloud.session._dispatch(f"{topic}/{idx}", raw)


def writable(fl: CloudIntake) -> None:
    """What finish_round and save_inflight write from the round's bookkeeping."""
    record: dict[str, Any] = {"applied": fl.applied, "dropped": fl.dropped,
                              "rejected": dict(fl.rejected), "seen": sorted(fl.seen),
                              "finals": sorted(fl.finals), "bytes_in": fl.bytes_in}
    json.dumps(record, ensure_ascii=False).encode("utf-8")


def run_example(state_dir: Path, seed: int) -> str:
    rng = random.Random(seed)
    cloud, state = cloud_in_round_3(state_dir, rng.choice(["drop", "stale_weight"]))
    fl = cloud.inflight
    assert fl is not None
    if rng.random() < 0.5:  # an earlier honest partial, so duplicates and sums are non-trivial
        header, tensors = partial(rng)
        header = header.model_copy(update={"round": 3, "base_version": 2, "region": "north"})
        header = header.model_copy(update={"accepted": [f"n{i}:3" for i in range(header.count)]})
        cloud.session._dispatch(f"{TOPICS.partial('north')}/0",
                                frame(encode_message(header, tensors), mid=msg_id(rng)))
        while not cloud.events.empty():
            cloud.handle_event(cloud.events.get_nowait(), state)
    before = ({n: t.clone() for n, t in fl.total.sums.items()}, fl.total.weight, fl.total.count)
    seen, duplicates = set(fl.seen), fl.duplicates
    counters = Counter(cloud.counters)
    acks = len(cloud.pending_acks)

    presence_payload: bytes | None = None
    if rng.random() < 0.15:
        presence = Presence(client="mallory", region="north", online=False)
        presence_payload = hostile_json(presence.model_dump(mode="json"), rng)
        cloud.session._dispatch(TOPICS.presence("north", "mallory"), presence_payload)
    else:
        header, tensors = partial(rng)
        honest = rng.random() < 0.1
        payload = encode_message(header, tensors) if honest else hostile_message(
            header.model_dump(mode="json"), tensors, rng)
        deliver(cloud, TOPICS.partial(header.region if rng.random() < 0.9 else "south"),
                payload, rng)
    while not cloud.events.empty():
        cloud.handle_event(cloud.events.get_nowait(), state)  # only WireError is caught

    delta = Counter(cloud.counters)
    delta.subtract(counters)
    refused = {k.removeprefix("rejected."): v for k, v in delta.items()
               if k.startswith("rejected.") and v}
    assert all(bool(torch.isfinite(t).all()) for t in fl.total.sums.values())
    assert torch.isfinite(torch.tensor(fl.total.weight))
    writable(fl)
    unchanged = (fl.total.weight, fl.total.count) == before[1:] and all(
        torch.equal(before[0][n], fl.total.sums[n]) for n in SHAPES)
    if refused:
        assert sum(refused.values()) == 1, refused
        (reason,) = refused
        assert reason in WIRE_REASONS, f"unnamed refusal {reason!r}"
        assert fl.seen == seen and unchanged
        return f"refused:{reason}"
    if fl.duplicates > duplicates and fl.seen == seen:
        assert unchanged and cloud.pending_acks[-1][1].reason == "duplicate"
        return "duplicate"
    if fl.seen != seen:
        [pid] = fl.seen - seen
        region, _, _ = pid.split(":")
        ack_region, ack = cloud.pending_acks[-1]
        assert ack.accepted and ack.id == pid and ack_region == region
        assert len(cloud.pending_acks) == acks + 1
        return "merged" if not unchanged else "accepted_empty_or_dropped"
    assert unchanged
    if cloud.session._reassembler.pending:
        return "held"
    assert presence_payload is not None, "a partial vanished without a trace"
    if not presence_payload:
        return "empty"  # an empty presence clears a retained one: ignored by design
    applied = decode_json(Presence, presence_payload)  # well-formed, so it was applied
    assert TOPICS.presence(applied.region, applied.client) == TOPICS.presence("north",
                                                                               "mallory")
    return "presence"


@settings(max_examples=1200, **SETTINGS)
@given(seed=st.integers(0, 2**63))
def test_cloud_hub_survives_hostile_partials(tmp_path: Path, seed: int) -> None:
    run_example(tmp_path, seed)


@pytest.mark.slow
@settings(max_examples=30_000, **SETTINGS)
@given(seed=st.integers(0, 2**63))
def test_cloud_hub_survives_hostile_partials_long(tmp_path: Path, seed: int) -> None:
    run_example(tmp_path, seed)


def test_fuzz_reaches_every_outcome(tmp_path: Path) -> None:
    outcomes = Counter(run_example(tmp_path, seed) for seed in range(600))
    reasons = {k.removeprefix("refused:") for k in outcomes if k.startswith("refused:")}
    assert outcomes["merged"] >= 10 and outcomes["duplicate"] >= 1
    assert len(reasons) >= 12, sorted(reasons)
    assert {"bad_header", "shape_mismatch", "wrong_topic", "non_finite"} <= reasons


def test_regressions_found_by_the_fuzz(tmp_path: Path) -> None:
    """Partials that once ended the cloud hub: an Ack id over 200 characters (huge seq), a
    lone surrogate in an update id (the round summary could not be encoded), and a weight
    that overflowed the round's total to inf (every update zeroed)."""
    cloud, state = cloud_in_round_3(tmp_path, "drop")
    sums = {n: torch.ones(s) for n, s in SHAPES.items()}
    good = PartialHeader(federation="f", round=3, region="north", base_version=2, count=1,
                         weight=2.0, accepted=["n1:3"]).model_dump(mode="json")

    def send(text: bytes) -> None:
        cloud.session._dispatch(f"{TOPICS.partial('north')}/0",
                                frame(envelope(text, pack_tensors(sums))))
        while not cloud.events.empty():
            cloud.handle_event(cloud.events.get_nowait(), state)

    def variant(**fields: Any) -> bytes:
        return json.dumps({**good, **fields}).encode()

    send(variant(seq=10**250))
    send(variant(accepted=["\udc80:1"]))  # json.dumps writes the escape "\\udc80"
    send(variant(weight=1.5e308, count=1))
    send(variant(weight="inf"))
    send(variant(seq=1).replace(b'"weight": 2.0', b'"weight": 1e400'))
    assert cloud.counters["rejected.bad_header"] == 5
    assert cloud.inflight is not None and cloud.inflight.total.count == 0
    send(variant())
    assert cloud.inflight.total.count == 1 and cloud.inflight.total.weight == 2.0
