"""Tests for the message envelope: round trips, determinism and hostile input."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from fedsa_common.wire.envelope import (
    MAGIC,
    PROTOCOL_VERSION,
    Envelope,
    max_tensor_header_bytes,
    pack,
    unpack,
    unpack_tensors,
)
from fedsa_common.wire.errors import WireError

ALL_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.uint16,
    torch.int32,
    torch.int64,
]


def _raw(
    header: bytes, body: bytes, *, magic: bytes = MAGIC, version: int = PROTOCOL_VERSION
) -> bytes:
    """Hand-assemble a message so tests can corrupt individual fields."""
    return magic + bytes([version]) + struct.pack(">I", len(header)) + header + body


def _reason(data: bytes, **kwargs: int) -> str:
    with pytest.raises(WireError) as info:
        unpack(data, **kwargs)
    assert type(info.value) is WireError
    return info.value.reason


def test_round_trip_all_dtypes() -> None:
    header = {"kind": "delta", "round": 3, "nested": {"a": [1, 2.5, None, "x"]}, "ü": "ß"}
    tensors = {
        f"t_{str(dtype).removeprefix('torch.')}": torch.arange(6).reshape(2, 3).to(dtype)
        for dtype in ALL_DTYPES
    }
    tensors["scalar"] = torch.tensor(1.5)
    tensors["empty"] = torch.zeros(0, 4)
    env = unpack(pack(header, tensors))
    assert isinstance(env, Envelope)
    assert env.header == header
    assert set(env.tensors) == set(tensors)
    for name, tensor in tensors.items():
        got = env.tensors[name]
        assert got.dtype == tensor.dtype
        assert got.shape == tensor.shape
        assert torch.equal(got, tensor)


def test_round_trip_empty_tensors() -> None:
    env = unpack(pack({"hello": "world"}, {}))
    assert env.header == {"hello": "world"}
    assert env.tensors == {}


def test_unpacked_tensors_are_writable_copies() -> None:
    env = unpack(pack({}, {"a": torch.ones(3)}))
    env.tensors["a"].add_(1)
    assert torch.equal(env.tensors["a"], torch.full((3,), 2.0))


def test_pack_is_deterministic_and_accepts_views() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = {"w": base.t(), "v": base[1], "z": torch.ones(2, dtype=torch.int8)}
    b = {"z": torch.ones(2, dtype=torch.int8), "v": base[1].clone(), "w": base.t().contiguous()}
    assert pack({"b": 1, "a": 2}, a) == pack({"a": 2, "b": 1}, b)
    assert torch.equal(unpack(pack({}, a)).tensors["w"], base.t())


def test_pack_rejects_local_mistakes() -> None:
    with pytest.raises(ValueError):
        pack({}, {"x": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError):
        pack({"x": float("nan")}, {})
    with pytest.raises(TypeError):
        pack([1, 2], {})  # type: ignore[arg-type]


def test_truncated_at_every_cut_point() -> None:
    data = pack({"k": "v"}, {"a": torch.arange(5, dtype=torch.int16), "b": torch.ones(2)})
    assert unpack(data).header == {"k": "v"}
    for cut in range(len(data)):
        with pytest.raises(WireError):
            unpack(data[:cut])
    assert _reason(data[:5]) == "truncated"
    assert _reason(data[:-1]) == "truncated"


def test_bad_magic() -> None:
    data = pack({}, {})
    assert _reason(b"XYZ" + data[3:]) == "bad_magic"
    assert _reason(b"FSB" + data[3:]) == "bad_magic"
    assert _reason(b"") == "truncated"


def test_wrong_version() -> None:
    body = st_save({})
    assert _reason(_raw(b"{}", body, version=PROTOCOL_VERSION + 1)) == "version"
    assert _reason(_raw(b"{}", body, version=0)) == "version"


def test_oversized() -> None:
    data = pack({}, {"a": torch.zeros(1000)})
    assert _reason(data, max_bytes=len(data) - 1) == "too_large"
    assert unpack(data, max_bytes=len(data)).tensors["a"].shape == (1000,)


def test_too_many_tensors() -> None:
    data = pack({}, {f"t{i}": torch.zeros(1) for i in range(5)})
    assert _reason(data, max_tensors=4) == "too_large"
    assert len(unpack(data, max_tensors=5).tensors) == 5


def test_header_too_long() -> None:
    data = pack({"pad": "x" * 200}, {})
    assert _reason(data, max_header_bytes=100) == "bad_header"


@pytest.mark.parametrize(
    "header",
    [
        b"[1, 2]",
        b'"str"',
        b"3",
        b"null",
        b"{bad json",
        b"\xff\xfe",
        b'{"a": NaN}',
        b'{"a": 1, "a": 2}',
        b"[" * 5000 + b"]" * 5000,
        b"",
    ],
)
def test_header_not_an_object(header: bytes) -> None:
    assert _reason(_raw(header, st_save({}))) == "bad_header"


@pytest.mark.parametrize(
    "body",
    [
        b"\x00" * 7,
        b"\xff" * 16,
        struct.pack("<Q", 4) + b"nope",
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 12) + b'{"a": "str"}',
        struct.pack("<Q", 8) + b"{}      " + b"trailing",
    ],
)
def test_garbage_body(body: bytes) -> None:
    assert _reason(_raw(b"{}", body)) in {"bad_tensor", "truncated"}


def test_garbage_body_reason() -> None:
    assert _reason(_raw(b"{}", struct.pack("<Q", 4) + b"nope")) == "bad_tensor"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bool, torch.complex64])
def test_disallowed_dtype(dtype: torch.dtype) -> None:
    body = st_save({"ok": torch.zeros(2), "bad": torch.zeros(2, dtype=dtype)})
    assert _reason(_raw(b"{}", body)) == "bad_tensor"


def test_bad_data_offsets() -> None:
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}).encode()
    body = struct.pack("<Q", len(header)) + header + b"\x00" * 8
    assert _reason(_raw(b"{}", body)) == "truncated"
    header = json.dumps({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    body = struct.pack("<Q", len(header)) + header + b"\x00" * 8
    assert _reason(_raw(b"{}", body)) == "bad_tensor"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        env = unpack(data)
    except WireError:
        return
    assert isinstance(env, Envelope)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_messages_never_crash(data: st.DataObject) -> None:
    """Flip bytes of a valid message: the result parses or is a clean WireError."""
    tensors = {"a": torch.arange(4, dtype=torch.int32), "b": torch.ones(3)}
    msg = bytearray(pack({"k": [1, 2]}, tensors))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(msg) - 1))
        msg[pos] = data.draw(st.integers(0, 255))
    try:
        env = unpack(bytes(msg))
    except WireError:
        return
    assert isinstance(env, Envelope)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b'{"w":1e400}', "overflows"),  # a disguised Infinity
        (b'{"w":-1e999}', "overflows"),
        (b'{"id":"\\ud800"}', "surrogates"),  # a lone surrogate escape: not UTF-8 text
        (b'{"ids":["ok",{"\\udfff":1}]}', "surrogates"),
    ],
)
def test_header_json_must_be_finite_utf8_text(header: bytes, why: str) -> None:
    """Values that parse in Python but that later encodes (logs, state files, summaries)
    would choke on are refused at the door."""
    with pytest.raises(WireError, match=why) as info:
        unpack(_raw(header, st_save({})))
    assert info.value.reason == "bad_header"


def test_surrogate_pairs_and_large_finite_numbers_still_parse() -> None:
    env = unpack(_raw(b'{"e":"\\ud83d\\ude00","w":1e308}', st_save({})))
    assert env.header == {"e": "\N{GRINNING FACE}", "w": 1e308}


def _body_with_st_header(st_header: bytes) -> bytes:
    """A safetensors body whose JSON header is exactly ``st_header`` and holds no data."""
    return struct.pack("<Q", len(st_header)) + st_header


def test_oversized_safetensors_header_is_refused_before_parsing() -> None:
    """JSON parsing costs in proportion to the header (16 MB: 1.4 s, +137 MiB), so a long
    header is refused by its declared length alone."""
    limit = max_tensor_header_bytes(4096)
    pad = b'{"__metadata__":{"x":"' + b"a" * limit + b'"}}'
    pad += b" " * (-len(pad) % 8)
    assert _reason(_raw(b"{}", _body_with_st_header(pad)), max_bytes=10 * limit) == "too_large"
    with pytest.raises(WireError) as err:
        unpack_tensors(_body_with_st_header(pad[: 8 * 1024] + b"}"), max_tensors=3)
    assert err.value.reason == "too_large"  # the limit follows max_tensors


def test_many_tensors_with_long_names_fit_the_header_limit() -> None:
    name = "base_model.model.bert.encoder.layer.{}.attention.self.query.lora_A.weight_" + "x" * 60
    tensors = {name.format(i): torch.zeros(2) for i in range(4096)}
    data = pack({}, tensors)
    assert len(unpack(data, max_bytes=len(data)).tensors) == 4096
