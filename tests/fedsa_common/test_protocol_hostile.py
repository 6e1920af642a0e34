"""Protocol-level defences the hub fuzz tests rely on: raw JSON messages decode strictly,
and header numbers that would later break a hub are refused when the header is parsed."""

from __future__ import annotations

import pytest

from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    MAX_WIRE_INT,
    Ack,
    PartialHeader,
    Presence,
    decode_json,
    encode_json,
    parse_header,
)


@pytest.mark.parametrize("payload", [
    b"[" * 5000,  # deeper than the parser's recursion limit: RecursionError, not ValueError
    b'{"a":' * 5000,
    b'{"client":"a","region":"b","online":true,"ts":NaN}',
    b'{"client":"a","region":"b","online":true,"ts":1e400}',
    b'{"client":"a","client":"b","region":"b","online":true}',
    b'{"client":"\\ud800","region":"b","online":true}',
    b"\xff\xfe",
])
def test_decode_json_refuses_hostile_json_as_bad_header(payload: bytes) -> None:
    with pytest.raises(WireError) as err:
        decode_json(Presence, payload)
    assert err.value.reason == "bad_header"


def test_decode_json_round_trips_what_peers_send() -> None:
    ack = Ack(kind="update", id="d1:3", accepted=False, reason="stale")
    assert decode_json(Ack, encode_json(ack)) == ack


PARTIAL = {"proto": 1, "kind": "partial", "federation": "f", "round": 3, "region": "north",
           "base_version": 2, "seq": 0, "final": True, "count": 1, "weight": 2.0,
           "accepted": ["n1:3"]}


@pytest.mark.parametrize("field", [
    {"seq": MAX_WIRE_INT + 1},  # "north:3:<seq>" would not fit an Ack id
    {"round": 10**250},
    {"weight": "inf"},  # pydantic coerces the string; a weight must be finite
    {"weight": "nan"},
    {"weight": -1.0},
])
def test_partial_header_refuses_numbers_that_break_the_cloud(field: dict) -> None:
    with pytest.raises(WireError) as err:
        parse_header(PartialHeader, {**PARTIAL, **field})
    assert err.value.reason == "bad_header"


def test_bad_header_detail_is_bounded() -> None:
    """A huge hostile header must not become a huge log line per message."""
    with pytest.raises(WireError) as err:
        parse_header(PartialHeader, {**PARTIAL, "accepted": "x" * 100_000})
    assert len(err.value.detail) <= 300


def test_an_announcement_of_ten_thousand_devices_decodes_and_other_headers_keep_64_kb():
    import time

    import torch

    from fedsa_common.wire.protocol import (
        AnnounceHeader,
        UpdateHeader,
        decode_message,
        encode_message,
    )

    selected = {f"r{r:02d}": [f"p0-r{r:02d}-{i:04d}" for i in range(1000)] for r in range(10)}
    header = AnnounceHeader(federation="f", round=1, version=0, status="running",
                            selected=selected, config={}, config_hash="x", deadline_s=60,
                            issued_at=time.time(), shared=["a"])
    payload = encode_message(header, {"a": torch.zeros(2)})
    assert len(payload) > 100_000  # past the 64 KB every header had
    got, _ = decode_message(AnnounceHeader, payload, max_bytes=10_000_000)
    assert got.selected == selected
    with pytest.raises(WireError, match="header length") as err:  # an update's stays bounded
        decode_message(UpdateHeader, payload, max_bytes=10_000_000)
    assert err.value.reason == "bad_header"
