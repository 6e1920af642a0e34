"""The building blocks of the topk/randk codecs: value formats, index encodings, the
random-k support and the bounded zstd body, each against its contract and hostile input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsa_common.wire.codecs.indices import (
    bitmap_len,
    check_counts,
    decode_support,
    encode_support,
    varint_decode,
    varint_encode,
)
from fedsa_common.wire.codecs.sparsify import randk_support, round_seed
from fedsa_common.wire.codecs.values import (
    QMAX,
    block_index,
    dequantize,
    num_blocks,
    pack_int4,
    quantize,
    unpack_int4,
)
from fedsa_common.wire.codecs.zbody import ZSTD_TENSOR, compress_body, decompress_body
from fedsa_common.wire.envelope import pack_tensors
from fedsa_common.wire.errors import WireError


def _reason(fn: Any, *args: Any) -> str:
    with pytest.raises(WireError) as info:
        fn(*args)
    assert type(info.value) is WireError
    return info.value.reason


_floats = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)
_vectors = st.lists(_floats, min_size=0, max_size=40).map(torch.tensor)


# ----------------------------------------------------------------------------- values


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_vectors, st.sampled_from(["fp32", "fp16", "int8", "int4"]),
       st.sampled_from([None, 1, 3, 8]))
def test_quantize_round_trip_within_bound(values: torch.Tensor, fmt: str,
                                          block_size: int | None) -> None:
    if fmt in ("fp32", "fp16"):
        block_size = None
    k = values.numel()
    q = quantize(values, fmt, block_size)
    out = dequantize(q.wire, q.scale, fmt, k, block_size)
    assert torch.equal(out, q.sent)  # the receiver reconstructs what the sender computed
    err = (out - values).abs()
    if fmt == "fp32":
        assert not err.any()
    elif fmt == "fp16":
        assert bool((err <= values.abs() * 2**-11 + 2**-25).all())
    else:
        assert q.scale is not None and q.scale.numel() == num_blocks(k, block_size)
        length = k if block_size is None else block_size
        for b in range(q.scale.numel()):
            block = values[b * length:(b + 1) * length]
            scale = float(block.abs().max()) / QMAX[fmt]
            assert float(q.scale[b]) == pytest.approx(scale, rel=1e-6, abs=1e-30)
            assert float(err[b * length:(b + 1) * length].max()) <= scale / 2 * (1 + 1e-5)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(_vectors, min_size=0, max_size=5), st.sampled_from(["int8", "int4"]),
       st.sampled_from([None, 1, 3, 8]))
def test_blocks_stay_within_each_tensor(parts: list[torch.Tensor], fmt: str,
                                        block_size: int | None) -> None:
    """Values of several tensors laid end to end quantize (and dequantize, bit for bit)
    exactly as each tensor would on its own: a tensor's blocks never take in values of
    the next one."""
    counts = [p.numel() for p in parts]
    values = torch.cat(parts) if parts else torch.zeros(0)
    q = quantize(values, fmt, block_size, counts)
    assert q.scale is not None
    assert q.scale.shape == (sum(num_blocks(c, block_size) for c in counts),)
    assert torch.equal(dequantize(q.wire, q.scale, fmt, counts, block_size), q.sent)
    alone = [quantize(p, fmt, block_size) for p in parts]
    assert torch.equal(q.scale, torch.cat([a.scale for a in alone if a.scale is not None])
                       if alone else torch.zeros(0))
    assert torch.equal(q.sent, torch.cat([a.sent for a in alone]) if alone else torch.zeros(0))
    assert q.wire.dtype == (torch.int8 if fmt == "int8" else torch.uint8)
    assert q.wire.numel() == (values.numel() if fmt == "int8" else (values.numel() + 1) // 2)


def test_block_index() -> None:
    block, n = block_index((2, 0, 5, 1), 2)
    assert n == 1 + 0 + 3 + 1
    assert block.tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    block, n = block_index((2, 0, 5, 1), None)
    assert n == 3 and block.tolist() == [0, 0, 1, 1, 1, 1, 1, 2]
    assert block_index((), 4)[1] == 0


def test_zero_block_sends_zeros() -> None:
    q = quantize(torch.tensor([0.0, 0.0, 3.0, -1.5]), "int8", None, [2, 2])
    assert q.scale is not None and q.scale.tolist() == [0.0, pytest.approx(3.0 / 127)]
    assert q.wire.tolist()[:2] == [0, 0] and q.sent.tolist()[:2] == [0.0, 0.0]


def test_quantize_misuse_is_a_plain_value_error() -> None:
    for args in ((torch.ones(3), "int3"), (torch.ones(3), "int8", None, [1, 1]),
                 (torch.ones(3), "int8", None, [4, -1])):
        with pytest.raises(ValueError) as info:
            quantize(*args)
        assert not isinstance(info.value, WireError)


def test_int4_packs_two_values_per_byte() -> None:
    q = torch.tensor([-7, 7, 0, 1, -1], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.tolist() == [1 | (15 << 4), 8 | (9 << 4), 7]  # last high nibble is padding
    assert torch.equal(unpack_int4(packed, 5), q)


@pytest.mark.parametrize(
    ("packed", "k", "reason"),
    [
        ([0x11, 0x01], 4, "bad_value"),  # nibble 0 (-8) in a value position
        ([0x10, 0x11], 4, "bad_value"),  # ... the first one
        ([0x11, 0x11], 3, "bad_value"),  # padding nibble not zero
        ([0x11], 3, "shape_mismatch"),  # too short
        ([0x11, 0x01, 0x11], 3, "shape_mismatch"),  # too long
    ],
)
def test_int4_hostile(packed: list[int], k: int, reason: str) -> None:
    wire = torch.tensor(packed, dtype=torch.uint8)
    scale = torch.ones(2)
    assert _reason(dequantize, wire, scale, "int4", [k - 1, 1], None) == reason


@pytest.mark.parametrize(
    ("fmt", "wire", "scale", "reason"),
    [
        ("int8", torch.tensor([1, -128], dtype=torch.int8), torch.ones(2), "bad_value"),
        ("int8", torch.tensor([1, 2], dtype=torch.int16), torch.ones(2), "bad_tensor"),
        ("int8", torch.tensor([1, 2, 3], dtype=torch.int8), torch.ones(2), "shape_mismatch"),
        ("int8", torch.tensor([1, 2], dtype=torch.int8), torch.ones(1), "shape_mismatch"),
        ("int8", torch.tensor([1, 2], dtype=torch.int8), torch.ones(3), "shape_mismatch"),
        ("int8", torch.tensor([1, 2], dtype=torch.int8), torch.tensor([1.0, -1.0]),
         "bad_value"),
        ("int8", torch.tensor([1, 2], dtype=torch.int8), torch.tensor([1.0, math.nan]),
         "non_finite"),
        ("int8", torch.tensor([1, 2], dtype=torch.int8), torch.tensor([-math.inf, 1.0]),
         "non_finite"),
        ("int8", torch.tensor([1, 127], dtype=torch.int8), torch.tensor([1.0, 3e38]),
         "non_finite"),
        ("int8", torch.tensor([1, 2], dtype=torch.int8), torch.ones(2, dtype=torch.float16),
         "bad_tensor"),
        ("int8", torch.tensor([1, 2], dtype=torch.int8), None, "bad_tensor"),
        ("fp16", torch.tensor([1.0, math.inf], dtype=torch.float16), None, "non_finite"),
        ("fp16", torch.tensor([1.0, 2.0]), None, "bad_tensor"),
        ("fp32", torch.tensor([1.0, math.nan]), None, "non_finite"),
        ("fp32", torch.tensor([[1.0, 2.0]]), None, "shape_mismatch"),
        ("fp32", "not a tensor", None, "bad_tensor"),
    ],
)
def test_values_hostile(fmt: str, wire: Any, scale: Any, reason: str) -> None:
    """Two tensors of one value each: two scales."""
    assert _reason(dequantize, wire, scale, fmt, [1, 1], None) == reason


def test_fp16_clamps_instead_of_overflowing() -> None:
    q = quantize(torch.tensor([1e6, -1e6, 1.0]), "fp16")
    assert q.sent.tolist() == [65504.0, -65504.0, 1.0]


# ---------------------------------------------------------------------------- indices


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2**35 - 1), max_size=30))
def test_varint_round_trip(values: list[int]) -> None:
    data = varint_encode(torch.tensor(values, dtype=torch.int64))
    assert data.dtype == torch.uint8
    assert varint_decode("i", data, len(values)).tolist() == values


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), max_size=n))))
def test_support_round_trip_picks_the_smaller_encoding(case: tuple[int, set[int]]) -> None:
    numel, chosen = case
    support = torch.tensor(sorted(chosen), dtype=torch.int64)
    encoded = encode_support(support, numel)
    if len(chosen) == numel:
        assert encoded is None
        return
    assert encoded is not None
    kind, data = encoded
    gaps = torch.diff(support, prepend=torch.zeros(1, dtype=torch.int64))
    assert data.numel() == min(varint_encode(gaps).numel(), bitmap_len(numel))
    assert torch.equal(decode_support("i", kind, data, numel, len(chosen)), support)


def _u8(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("data", "numel", "k", "reason"),
    [
        ([0x85], 1000, 1, "bad_varint"),  # truncated: continuation bit on the last byte
        ([3, 0x80], 1000, 2, "bad_varint"),  # truncated second varint
        ([0x80, 0x80, 0x80, 0x80, 0x80, 0x01], 2**31, 1, "bad_varint"),  # 6 bytes
        ([0x83, 0x00], 1000, 1, "bad_varint"),  # non-canonical (trailing zero byte)
        ([3, 4], 1000, 3, "bad_index"),  # fewer varints than k
        ([3, 4, 5], 1000, 2, "bad_index"),  # more varints than k
        ([], 1000, 1, "bad_index"),
        ([3, 0], 1000, 2, "bad_index"),  # zero gap: not strictly increasing
        ([5, 5], 10, 2, "bad_index"),  # 5 + 5 = 10 is out of range
        ([0xE8, 0x07], 1000, 1, "bad_index"),  # 1000 out of range
    ],
)
def test_varint_hostile(data: list[int], numel: int, k: int, reason: str) -> None:
    assert _reason(decode_support, "i", "varint", _u8(data), numel, k) == reason


@pytest.mark.parametrize(
    ("data", "numel", "k", "reason"),
    [
        ([0b101], 10, 2, "shape_mismatch"),  # 1 byte for 10 positions
        ([0b101, 0, 0], 10, 2, "shape_mismatch"),
        ([0b101, 0b100], 10, 3, "bad_index"),  # bit 10 lies past numel
        ([0b101, 0], 10, 3, "bad_index"),  # 2 set bits, k = 3
    ],
)
def test_bitmap_hostile(data: list[int], numel: int, k: int, reason: str) -> None:
    assert _reason(decode_support, "i", "bitmap", _u8(data), numel, k) == reason


@pytest.mark.parametrize(
    ("positions", "ok"),
    [
        ([0, 4, 5, 9], True),
        ([0, 4, 9, 10], False),  # one of segment 1's positions moved into segment 2
        ([0, 1, 4, 9], False),  # ... into segment 0
        ([4, 5, 6, 9], False),
    ],
)
def test_check_counts(positions: list[int], ok: bool) -> None:
    """Segments [0, 4), [4, 9), [9, 12) send 1, 2 and 1 positions."""
    bounds = np.array([0, 4, 9, 12], dtype=np.int64)
    counts = np.array([1, 2, 1], dtype=np.int64)
    pos = torch.tensor(sorted(positions), dtype=torch.int64)
    if ok:
        check_counts("i", pos, bounds, counts, ["a", "b", "c"])
    else:
        assert _reason(check_counts, "i", pos, bounds, counts, ["a", "b", "c"]) == "bad_index"


def test_varint_one_byte_fast_path_agrees() -> None:
    """Every value below 128 takes a shortcut; its result and checks match the general
    path (one larger value forces it)."""
    small = list(range(0, 128, 7))
    assert varint_decode("i", varint_encode(torch.tensor(small)), len(small)).tolist() == small
    assert _reason(varint_decode, "i", _u8(small), len(small) + 1) == "bad_index"
    mixed = [*small, 300]
    assert varint_decode("i", varint_encode(torch.tensor(mixed)), len(mixed)).tolist() == mixed


def test_index_kind_and_dtype_checked() -> None:
    assert _reason(decode_support, "i", "bitmap", torch.zeros(2, dtype=torch.int8), 10, 0) \
        == "bad_tensor"
    assert _reason(decode_support, "i", "gzip", _u8([1]), 10, 1) == "bad_index"


# ----------------------------------------------------------------------------- randk


def test_round_seed_is_pinned() -> None:
    """Devices and hubs of different versions must agree: the derivation never changes."""
    assert round_seed(0, 1) == 5275268513722643299
    assert round_seed(7, 3) == 4526402787896878899
    assert 0 <= round_seed(2**40, 10**6) < 2**63


def test_randk_support_is_pinned() -> None:
    assert randk_support(100, 5, round_seed(0, 1), "x.lora_A.weight").tolist() == [
        14, 24, 46, 78, 93]
    assert randk_support(3072, 8, 12345, "a").tolist() == [
        92, 886, 892, 1244, 2132, 2234, 2329, 2679]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2000), st.floats(0.001, 1.0), st.integers(0, 2**20),
       st.integers(1, 500))
def test_randk_support_shared_by_round_not_across_rounds(numel: int, ratio: float,
                                                         fed_seed: int, rnd: int) -> None:
    k = max(1, min(numel, math.ceil(ratio * numel)))
    seed = round_seed(fed_seed, rnd)
    devices = [randk_support(numel, k, seed, "layer.0.lora_A.weight") for _ in range(3)]
    assert all(torch.equal(d, devices[0]) for d in devices)
    s = devices[0]
    assert s.numel() == k and len(set(s.tolist())) == k
    assert int(s.min()) >= 0 and int(s.max()) < numel and bool((s[1:] > s[:-1]).all())
    if 4 <= k <= numel // 2:  # a different round (or tensor) picks a different support
        assert not torch.equal(s, randk_support(numel, k, round_seed(fed_seed, rnd + 1),
                                                "layer.0.lora_A.weight"))
        assert not torch.equal(s, randk_support(numel, k, seed, "layer.1.lora_A.weight"))


def test_randk_support_is_uniform_enough() -> None:
    counts = torch.zeros(64)
    for rnd in range(400):
        counts[randk_support(64, 8, round_seed(0, rnd), "w")] += 1
    assert float(counts.min()) > 25 and float(counts.max()) < 75  # expectation 50


# ----------------------------------------------------------------------------- zstd


def _body() -> dict[str, torch.Tensor]:
    return {"a.val": torch.arange(100, dtype=torch.int8), "a.scale": torch.ones(1)}


def test_zstd_round_trip() -> None:
    wire = compress_body(_body())
    assert set(wire) == {ZSTD_TENSOR} and wire[ZSTD_TENSOR].dtype == torch.uint8
    out = decompress_body(wire, limit=10_000, max_tensors=4)
    assert set(out) == set(_body()) and all(torch.equal(out[n], t) for n, t in _body().items())


def _blob(data: bytes) -> dict[str, torch.Tensor]:
    return {ZSTD_TENSOR: torch.tensor(list(data), dtype=torch.uint8)}


def test_zstd_bomb_rejected_before_decompressing() -> None:
    bomb = zstandard.ZstdCompressor(level=1).compress(b"\0" * 20_000_000)
    assert len(bomb) < 10_000
    assert _reason(decompress_body, _blob(bomb), 1_000_000, 4) == "zstd_bomb"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not zstd at all",
        zstandard.ZstdCompressor(write_content_size=False).compress(pack_tensors(_body())),
        zstandard.ZstdCompressor().compress(pack_tensors(_body())) + b"trailing",
        zstandard.ZstdCompressor().compress(pack_tensors(_body()))[:-4],
        zstandard.ZstdCompressor().compress(pack_tensors(_body())) * 2,
    ],
    ids=["empty", "garbage", "no-size", "trailing", "truncated", "two-frames"],
)
def test_zstd_bad_frames(blob: bytes) -> None:
    assert _reason(decompress_body, _blob(blob), 10_000, 4) == "bad_zstd"


def test_zstd_decompressor_reused_after_errors() -> None:
    """The per-thread decompressor is reused, and still works after bad frames."""
    for blob in (b"garbage", zstandard.ZstdCompressor().compress(b"x" * 50)[:-3]):
        assert _reason(decompress_body, _blob(blob), 10_000, 4) == "bad_zstd"
        out = decompress_body(compress_body(_body()), limit=10_000, max_tensors=4)
        assert torch.equal(out["a.val"], _body()["a.val"])
    bomb = zstandard.ZstdCompressor(level=1).compress(b"\0" * 20_000)
    assert _reason(decompress_body, _blob(bomb), 10_000, 4) == "zstd_bomb"


def test_zstd_content_checked_like_a_body() -> None:
    not_safetensors = zstandard.ZstdCompressor().compress(b"\x05" * 100)
    assert _reason(decompress_body, _blob(not_safetensors), 10_000, 4) == "truncated"
    too_many = compress_body({f"t{i}": torch.zeros(1) for i in range(5)})
    assert _reason(decompress_body, too_many, 10_000, 4) == "too_large"
    assert _reason(decompress_body, {**compress_body(_body()), "x": torch.zeros(1)}, 10_000,
                   4) == "unexpected_tensor"
    assert _reason(decompress_body, {ZSTD_TENSOR: torch.zeros(3)}, 10_000, 4) == "bad_tensor"
