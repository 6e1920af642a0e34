"""Fuzz of a regional hub's update path with hostile payloads (hypothesis; no broker).

Each example builds a real ``RegionalHub`` (never connected, so nothing here publishes),
hands it a real announcement of round 3, then delivers one message the way paho would: as
MQTT frames through the session's frame dispatch (chunk subtopic, reassembly) into the
hub's event queue and ``RegionalHub.handle`` -- the code a running hub executes for every
update and presence message.  The messages are valid updates (sometimes), and mutations of
them from ``tests.support.hostile`` (mostly).

Properties: nothing but ``WireError`` ever escapes (the hub would die); every message is
accepted, or refused under exactly one counted reason from ``WIRE_REASONS``, or visibly held
(a frame waiting for the rest of its message, an update for a future round); an update is
accepted only if it is one of the round's selected devices' first update, and then the
running sum grows by exactly its weight; refused input leaves the running sum untouched;
the sum stays finite.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.chunking import split_payload
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    Presence,
    Topics,
    UpdateHeader,
    decode_json,
    decode_message,
    encode_message,
)
from hub.intake import RoundInfo
from hub.process import Event
from hub.regional import RegionalHub
from tests.support.hostile import (
    WIRE_REASONS,
    broken_frame,
    frame,
    hostile_json,
    hostile_message,
    msg_id,
    mutate_bytes,
)

SHAPES = {"l0.lora_A.weight": (2, 8), "l1.lora_A.weight": (3, 5)}
SELECTED = ["d1", "d2", "ghost"]  # ghost never reports, so the round never closes (no sends)
TOPICS = Topics("f")
COMPRESSION: dict[str, dict[str, Any]] = {
    "topk_int8": {},
    "topk_int4_blocks": {"method": "topk", "ratio": 0.3, "values": "int4", "block_size": 2},
    "topk_fp16_zstd": {"method": "topk", "ratio": 0.5, "values": "fp16", "zstd": True},
    "randk_int8_zstd": {"method": "randk", "ratio": 0.25, "zstd": True},
}
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow]}


def federation_config(compression: dict[str, Any]) -> FederationConfig:
    return FederationConfig.model_validate(
        {"federation": {"name": "f", "seed": 3}, "fedsa_lora": {"compression": compression}})


def announced_hub(state_dir: Path, config: FederationConfig) -> RegionalHub:
    """A regional hub subscribed like ``run()`` and serving round 3 (rounds 1-2 known too,
    so late and stale updates take their own paths)."""
    hub = RegionalHub("mqtt://127.0.0.1:1", "f", "eu", state_dir)
    hub.listen("presence", f"{TOPICS.base}/presence/eu/+", raw=True)
    hub.listen("update", TOPICS.update_filter("eu"))
    header = AnnounceHeader(
        federation="f", round=3, version=2, status="running", selected={"eu": SELECTED},
        config=config.model_dump(mode="json"), config_hash=config.digest(), deadline_s=30,
        issued_at=0.0, shared=sorted(SHAPES))
    payload = encode_message(header, {n: torch.zeros(s) for n, s in SHAPES.items()})
    hub.handle(Event("announce", TOPICS.announce, payload, time.time()))
    info = hub.intake.rounds[3]
    for rnd in (1, 2):
        hub.intake.rounds[rnd] = RoundInfo(rnd - 1, list(SELECTED), info.codec,
                                           dict(info.codec_params))
    return hub


def valid_update(config: FederationConfig, client: str, rnd: int, rng: random.Random
                 ) -> tuple[UpdateHeader, dict[str, torch.Tensor]]:
    comp = config.fedsa_lora.compression
    codec = comp.codec if rng.random() < 0.85 else "dense"
    params = comp.round_codec_params(config.federation.seed, rnd) if codec != "dense" else {}
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    delta = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    enc = get_codec(codec, **params).encode(delta)
    header = UpdateHeader(federation="f", round=rnd, client=client, region="eu",
                          base_version=rnd - 1, codec=codec, codec_params=params,
                          codec_meta=enc.meta, num_samples=rng.randint(1, 50))
    return header, enc.tensors


def deliver(hub: RegionalHub, topic: str, payload: bytes, rng: random.Random) -> None:
    """Publish ``payload`` to ``topic`` as a sender (honest or not) would frame it."""
    how = rng.random()
    if how < 0.55:
        hub.session._dispatch(f"{topic}/0", frame(payload, mid=msg_id(rng)))
    elif how < 0.7:
        suffix, bad = broken_frame(payload, rng)
        hub.session._dispatch(f"{topic}/{suffix}", bad)
    elif how < 0.85:
        # (never empty: an empty frame is a cleared retained message, ignored by design)
        raw = mutate_bytes(frame(payload, mid=msg_id(rng)), rng) or b"\x00"
        hub.session._dispatch(f"{topic}/0", raw)
    else:  # several frames, possibly reordered or repeated
        frames = list(enumerate(split_payload(payload, 280, msg_id(rng))))
        if rng.random() < 0.5:
            rng.shuffle(frames)
        if rng.random() < 0.3:
            frames.append(rng.choice(frames))
        for idx, raw in frames:
            hub.session._dispatch(f"{topic}/{idx}", raw)


def snapshot(hub: RegionalHub) -> dict[str, Any]:
    groups = {bv: ({n: t.clone() for n, t in g.sums.items()}, g.weight, g.count)
              for bv, g in hub.intake.groups.items()}
    return {"groups": groups, "accepted": set(hub.intake.accepted_ids)}


def run_example(state_dir: Path, compression: str, seed: int) -> str:
    """One hostile (or honest) message through a fresh hub; returns the outcome."""
    rng = random.Random(seed)
    config = federation_config(COMPRESSION[compression])
    hub = announced_hub(state_dir, config)
    before = snapshot(hub)
    counters = Counter(hub.counters)
    if rng.random() < 0.15:
        presence = Presence(client=rng.choice(["d1", "mallory"]), region=rng.choice(["eu", "us"]),
                            online=rng.random() < 0.5)
        topic = TOPICS.presence("eu", rng.choice([presence.client, "d2"]))
        payload = hostile_json(presence.model_dump(mode="json"), rng)
        hub.session._dispatch(topic, payload)
        sent: tuple[UpdateHeader, bool] | None = None
    else:
        client = rng.choices(["d1", "d2", "mallory"], [4, 4, 1])[0]
        header, tensors = valid_update(config, client, rng.choices([3, 2, 4], [8, 1, 1])[0], rng)
        honest = rng.random() < 0.1
        payload = encode_message(header, tensors) if honest else hostile_message(
            header.model_dump(mode="json"), tensors, rng)
        topic = TOPICS.update("eu", client if rng.random() < 0.9 else "d2")
        deliver(hub, topic, payload, rng)
        sent = (header, honest)
    handled = []
    while not hub.events.empty():
        handled.append(hub.events.get_nowait())
        hub.handle(handled[-1])  # anything but WireError escaping fails the test

    delta = Counter(hub.counters)
    delta.subtract(counters)
    refused = {k.removeprefix("rejected."): v for k, v in delta.items()
               if k.startswith("rejected.") and v}
    accepted = delta["updates.accepted"]
    for group in hub.intake.groups.values():
        assert all(bool(torch.isfinite(t).all()) for t in group.sums.values())
    if refused:
        assert accepted == 0 and sum(refused.values()) == 1, (refused, accepted)
        (reason,) = refused
        assert reason in WIRE_REASONS, f"unnamed refusal {reason!r}"
        after = snapshot(hub)
        assert after["accepted"] == before["accepted"]
        assert after["groups"].keys() == before["groups"].keys()
        for bv, (sums, weight, count) in before["groups"].items():
            new_sums, new_weight, new_count = after["groups"][bv]
            assert (new_weight, new_count) == (weight, count)
            assert all(torch.equal(sums[n], new_sums[n]) for n in sums)
        return f"refused:{reason}"
    if accepted:
        assert accepted == 1
        [uid] = hub.intake.accepted_ids - before["accepted"]
        [event] = handled
        header, _ = decode_message(UpdateHeader, event.payload, max_bytes=16_000_000)
        assert header.update_id == uid and header.client in {"d1", "d2"}
        assert header.round == 3 and header.base_version == 2 and header.region == "eu"
        assert event.topic == TOPICS.update("eu", header.client)
        group = hub.intake.groups[header.base_version]
        old_weight = before["groups"].get(header.base_version, ({}, 0.0, 0))[1]
        assert group.weight == old_weight + header.num_samples
        ack_topic, ack = hub.acks[-1]
        assert ack.accepted and ack.id == uid and ack_topic == TOPICS.ack("eu", header.client)
        return "accepted"
    # neither accepted nor refused: only a visibly held message may stay silent (a frame
    # waiting for the rest of its message, or an update for a round not announced yet)
    held = hub.early or hub.session._reassembler.pending
    if not held and sent is None:
        if not payload:
            return "empty"  # an empty presence clears a retained one: ignored by design
        # a well-formed presence of this region's own topic is applied, not refused
        presence = decode_json(Presence, payload)
        assert topic == TOPICS.presence(presence.region, presence.client)
        return "presence"
    assert held, "a message vanished without being accepted, refused or held"
    return "held"


@pytest.mark.parametrize("compression", sorted(COMPRESSION))
@settings(max_examples=400, **SETTINGS)
@given(seed=st.integers(0, 2**63))
def test_regional_hub_survives_hostile_updates(tmp_path: Path, compression: str,
                                                seed: int) -> None:
    run_example(tmp_path, compression, seed)


@pytest.mark.slow
@pytest.mark.parametrize("compression", sorted(COMPRESSION))
@settings(max_examples=10_000, **SETTINGS)
@given(seed=st.integers(0, 2**63))
def test_regional_hub_survives_hostile_updates_long(tmp_path: Path, compression: str,
                                                     seed: int) -> None:
    run_example(tmp_path, compression, seed)


def test_fuzz_reaches_every_outcome(tmp_path: Path) -> None:
    """The generator is not vacuous: a fixed batch of seeds gets accepted updates, held
    frames and refusals under many different reasons, deep in the codecs included."""
    outcomes = Counter(run_example(tmp_path, name, seed)
                       for name in sorted(COMPRESSION) for seed in range(150))
    reasons = {k.removeprefix("refused:") for k in outcomes if k.startswith("refused:")}
    assert outcomes["accepted"] >= 10
    assert outcomes["held"] >= 1
    assert len(reasons) >= 20, sorted(reasons)
    assert {"bad_header", "bad_tensor", "frame_bad_magic", "not_selected"} <= reasons
    assert reasons & {"shape_mismatch", "missing_tensor", "unexpected_tensor", "bad_zstd"}


def test_regressions_found_by_the_fuzz(tmp_path: Path) -> None:
    """Messages that once ended a regional hub, now counted: a presence nested deeper than
    the JSON parser's recursion limit (RecursionError escaped ``decode_json``), and an
    announcement whose configuration does not validate (pydantic's ValidationError)."""
    hub = announced_hub(tmp_path, federation_config({}))
    for nested in (b"[" * 5000, b'{"a":' * 5000):
        hub.session._dispatch(TOPICS.presence("eu", "d1"), nested)
    bad = AnnounceHeader(
        federation="f", round=4, version=3, status="running", selected={"eu": SELECTED},
        config={"rounds": 0}, config_hash="h", deadline_s=30, issued_at=0.0,
        shared=sorted(SHAPES))
    hub.handle(Event("announce", TOPICS.announce, encode_message(bad, {}), time.time()))
    while not hub.events.empty():
        hub.handle(hub.events.get_nowait())
    assert hub.counters["rejected.bad_header"] == 3
    assert hub.intake.round == 3  # still serving the round it had
