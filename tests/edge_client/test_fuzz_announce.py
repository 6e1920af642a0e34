"""Fuzz of a device's first look at a round announcement (hypothesis; no broker).

Every device decodes the retained announcement, so a hostile one must end in ``WireError``,
which ``Device.run`` logs and ignores, never in another exception that would end the
device's loop.  The steps are the two ``Device.run`` takes before acting on an
announcement: ``decode_message(AnnounceHeader, ...)`` and ``announced_config``.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsa_common.federation.config import FederationConfig, announced_config
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, decode_message
from tests.support.hostile import WIRE_REASONS, hostile_message

CONFIG = FederationConfig.model_validate({
    "federation": {"name": "f", "seed": 5},
    "fedsa_lora": {"compression": {"method": "topk", "ratio": 0.2, "values": "int4"}},
    "round_policy": {"deadline_s": 30},
})
HEADER = AnnounceHeader(
    federation="f", round=3, version=2, status="running", selected={"eu": ["d1", "d2"]},
    config=CONFIG.model_dump(mode="json"), config_hash=CONFIG.digest(), deadline_s=30,
    issued_at=1.0, shared=["l0.lora_A.weight"]).model_dump(mode="json")


def check(seed: int) -> str:
    rng = random.Random(seed)
    tensors = {"l0.lora_A.weight": torch.randn(2, 8)}
    payload = hostile_message(HEADER, tensors, rng)
    try:
        header, _ = decode_message(AnnounceHeader, payload, max_bytes=64_000_000)
        config = announced_config(header)
    except WireError as err:
        assert err.reason in WIRE_REASONS, err
        return err.reason
    assert isinstance(config, FederationConfig) and header.round >= 0
    return "valid"


@settings(max_examples=800, deadline=None)
@given(seed=st.integers(0, 2**63))
def test_hostile_announcements_only_raise_wire_error(seed: int) -> None:
    check(seed)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None)
@given(seed=st.integers(0, 2**63))
def test_hostile_announcements_only_raise_wire_error_long(seed: int) -> None:
    check(seed)


def test_invalid_announced_config_is_a_wire_error() -> None:
    """It used to escape as pydantic's ValidationError and end the device (and the regional
    hub, which validates it the same way)."""
    header = AnnounceHeader.model_validate({**HEADER, "config": {"rounds": 0}})
    with pytest.raises(WireError) as err:
        announced_config(header)
    assert err.value.reason == "bad_header" and "rounds" in err.value.detail
