"""The hostile-payload generators themselves: reproducible from a seed, and every frame
defect is one a receiver refuses at once (the integration fuzz counts on that)."""

from __future__ import annotations

import random

import pytest
import torch

from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.errors import WireError
from tests.support.hostile import (
    FRAME_DEFECTS,
    WIRE_REASONS,
    broken_frame,
    hostile_json,
    hostile_message,
)

HEADER = {"proto": 1, "kind": "update", "round": 3, "client": "d1", "codec_params": {"r": 1}}
TENSORS = {"a.val": torch.arange(6, dtype=torch.int8), "a.scale": torch.ones(1)}


def test_generators_are_reproducible_from_a_seed() -> None:
    for seed in range(50):
        one = hostile_message(HEADER, TENSORS, random.Random(seed))
        two = hostile_message(HEADER, TENSORS, random.Random(seed))
        assert one == two
        assert hostile_json(HEADER, random.Random(seed)) == hostile_json(
            HEADER, random.Random(seed))


def test_generators_vary() -> None:
    payloads = {hostile_message(HEADER, TENSORS, random.Random(s)) for s in range(200)}
    assert len(payloads) > 150


@pytest.mark.parametrize("defect", FRAME_DEFECTS)
def test_every_frame_defect_is_refused_once(defect: str) -> None:
    refused: list[WireError] = []
    delivered: list[bytes] = []
    session = MqttSession("mqtt://127.0.0.1:1", client_id="t",
                          on_reject=lambda _topic, err: refused.append(err),
                          max_message_bytes=16_000_000)
    session.subscribe("base/update/+", lambda _topic, payload: delivered.append(payload))
    rng = random.Random(defect)
    for _ in range(20):
        suffix, raw = broken_frame(b"x" * rng.randint(0, 600), rng, defect)
        session._dispatch(f"base/update/mallory/{suffix}", raw)
    assert len(refused) == 20 and not delivered
    assert {err.reason for err in refused} <= WIRE_REASONS
