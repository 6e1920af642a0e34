"""Updates that reach a regional hub before their round's announcement (a hub restarted
without its state, draining its broker backlog) are held decoded and taken once the round
is announced: the good ones accepted, a bad one refused, counted and acknowledged as such
without losing the others; each update counted once as received; the intake persisted
with the accepted ids before any acknowledgement leaves; one INFO line for the batch."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    Topics,
    UpdateHeader,
    decode_message,
    encode_message,
)
from hub.process import Event
from hub.regional import STATE_JSON, RegionalHub
from tests.support.sessions import RecordingSession

TOPICS = Topics("f")
SHAPES = {"a.lora_A.weight": (2, 6), "b.lora_A.weight": (5,)}
CONFIG = FederationConfig.model_validate(
    {"federation": {"name": "f", "seed": 3},
     "fedsa_lora": {"compression": {"method": "topk", "ratio": 0.5, "values": "int8"}}})


def update(client: str, value: float = 1.0, codec: str | None = None) -> Event:
    comp = CONFIG.fedsa_lora.compression
    name = codec or comp.codec
    params = comp.round_codec_params(CONFIG.federation.seed, 1) if name == comp.codec else {}
    enc = get_codec(name, **params).encode({n: torch.full(s, value) for n, s in SHAPES.items()})
    header = UpdateHeader(federation="f", round=1, client=client, region="eu", base_version=0,
                          codec=name, codec_params=params, codec_meta=enc.meta, num_samples=4)
    return Event("update", TOPICS.update("eu", client), encode_message(header, enc.tensors),
                 time.time())


def announcement() -> Event:
    header = AnnounceHeader(federation="f", round=1, version=0, status="running",
                            selected={"eu": ["d1", "d2", "d3"]},
                            config=CONFIG.model_dump(mode="json"), config_hash=CONFIG.digest(),
                            deadline_s=600, issued_at=time.time(), shared=sorted(SHAPES))
    payload = encode_message(header, {n: torch.zeros(s) for n, s in SHAPES.items()})
    return Event("announce", TOPICS.announce, payload, time.time())


def test_early_updates_are_taken_at_the_announcement(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    session = RecordingSession()
    hub = RegionalHub("mqtt://127.0.0.1:1", "f", "eu", tmp_path,
                      session=session)  # type: ignore[arg-type]
    persisted_at_ack: list[list[str]] = []
    publish = session.publish_raw_many

    def acks_after_persist(messages, **kw):  # what the state file held when acks left
        state = json.loads((tmp_path / STATE_JSON).read_text())
        persisted_at_ack.append(state["intake"]["accepted_ids"])
        return publish(messages, **kw)

    session.publish_raw_many = acks_after_persist  # type: ignore[method-assign]
    for event in [update("d1"), update("d2", codec="topk_int8"), update("d3", value=2.0)]:
        hub.handle(event)
    assert len(hub.early) == 3 and not hub.intake.accepted_ids
    with caplog.at_level(logging.INFO, logger="fedsa.hub.regional"):
        hub.handle(announcement())
        hub.after_batch()
    assert hub.intake.accepted_ids == {"d1:1", "d3:1"}
    assert hub.counters["updates.received"] == 3 and hub.counters["updates.accepted"] == 2
    assert hub.counters["rejected.unexpected_codec"] == 1
    assert hub.intake.rejected["unexpected_codec"] == 1
    acks = {topic.rsplit("/", 1)[1]: json.loads(body) for topic, body in session.raw
            if "/ack/" in topic}
    assert {c: a["accepted"] for c, a in acks.items()} == {"d1": True, "d2": False, "d3": True}
    assert acks["d2"]["reason"] == "unexpected_codec"
    assert persisted_at_ack == [["d1:1", "d3:1"]]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("accepted")]
    assert lines == ["accepted 2 updates: d1:1, d3:1"]
    total = hub.intake.groups[0].result()
    assert total.count == 2 and total.weight == 8.0


def test_a_held_update_over_the_announced_size_limit_is_refused(tmp_path: Path) -> None:
    """Held updates were decoded under the limit known before the announcement; the
    announced round's (smaller) limit still applies to them."""
    raw = CONFIG.model_dump(mode="json")
    raw["transport"]["max_message_bytes"] = 4096
    small = FederationConfig.model_validate(raw)
    hub = RegionalHub("mqtt://127.0.0.1:1", "f", "eu", tmp_path,
                      session=RecordingSession())  # type: ignore[arg-type]
    big = update("d1")
    header, _ = decode_message(UpdateHeader, big.payload, max_bytes=10**7)
    payload = encode_message(header, {"pad": torch.zeros(2048)})  # 8 KB
    hub.handle(Event("update", big.topic, payload, time.time()))
    assert len(hub.early) == 1
    announced, _ = decode_message(AnnounceHeader, announcement().payload, max_bytes=10**7)
    announced = announced.model_copy(update={"config": small.model_dump(mode="json"),
                                             "config_hash": small.digest()})
    hub.handle(Event("announce", TOPICS.announce, encode_message(
        announced, {n: torch.zeros(s) for n, s in SHAPES.items()}), time.time()))
    assert hub.max_bytes == 4096 and not hub.intake.accepted_ids
    assert hub.counters["rejected.too_large"] == 1 and hub.intake.rejected["too_large"] == 1
