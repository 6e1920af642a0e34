"""The ``topk`` and ``randk`` codecs, every combination of value format, scale blocks and
zstd: the flat wire layout (at most three tensors for a whole update), round trips within
the quantization bound per block, exact error feedback, per-tensor selection, and hostile
bodies."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsa_common.wire.codec import (
    RandKCodec,
    TopKCodec,
    get_codec,
    randk_support,
    round_codec_params,
    round_seed,
    topk_count,
)
from fedsa_common.wire.codecs.indices import bitmap_len, decode_support, varint_encode
from fedsa_common.wire.codecs.layout import Layout
from fedsa_common.wire.codecs.sparse import MAX_BODY_TENSORS, randk_flat_support
from fedsa_common.wire.codecs.values import QMAX, num_blocks
from fedsa_common.wire.codecs.zbody import ZSTD_TENSOR, compress_body, decompress_body
from fedsa_common.wire.envelope import pack, unpack
from fedsa_common.wire.errors import WireError

Shapes = dict[str, tuple[int, ...]]
SEED = round_seed(0, 1)
INDEX_NAMES = ("idx.varint", "idx.bitmap")

# (values, block_size): every value format, and the scaled ones with blocks too
VALUE_OPTIONS = [("fp32", None), ("fp16", None), ("int8", None), ("int4", None),
                 ("int8", 3), ("int4", 3)]
COMBOS = [(sel, v, b, z) for sel in ("topk", "randk") for v, b in VALUE_OPTIONS
          for z in (False, True)]


def make(selector: str, values: str, block_size: int | None, zstd: bool,
         ratio: float = 0.3) -> Any:
    params: dict[str, Any] = {"ratio": ratio, "values": values, "block_size": block_size,
                              "zstd": zstd}
    return get_codec(selector, **round_codec_params(selector, params, 0, 1))


def _shapes(delta: dict[str, torch.Tensor]) -> Shapes:
    return {n: tuple(t.shape) for n, t in delta.items()}


def _plain(codec: Any, tensors: dict[str, torch.Tensor], shapes: Shapes
           ) -> dict[str, torch.Tensor]:
    """The uncompressed body, whether or not the codec uses zstd."""
    if not codec.zstd:
        return tensors
    assert set(tensors) == {ZSTD_TENSOR}
    return decompress_body(tensors, codec.body_limit(shapes), MAX_BODY_TENSORS)


def _flat_positions(codec: Any, plain: dict[str, torch.Tensor], layout: Layout,
                    counts: list[int]) -> torch.Tensor:
    """The flat positions the body says were sent, worked out independently of the codec:
    randk per tensor from the seed, topk from the one index."""
    k = sum(counts)
    if k == layout.total:
        assert not any(n in plain for n in INDEX_NAMES)
        return torch.arange(layout.total)
    if isinstance(codec, RandKCodec):
        assert not any(n in plain for n in INDEX_NAMES)
        return torch.cat([randk_support(numel, c, codec.seed, name) + off for name, numel, off, c
                          in zip(layout.names, layout.numels, layout.offsets, counts,
                                 strict=True)])
    (name,) = [n for n in INDEX_NAMES if n in plain]
    return decode_support(name, name[4:], plain[name], layout.total, k)


def check_round_trip(codec: Any, delta: dict[str, torch.Tensor],
                     old: dict[str, torch.Tensor] | None) -> None:
    """The body is flat (at most three tensors, values and scales in flat-position order);
    error feedback is exact (decoded + new residual == delta + old residual); unsent
    coordinates decode to 0; each tensor sends exactly its k; sent values are within the
    format's bound per block of each tensor; and top-k sends each tensor's largest
    magnitudes."""
    shapes = _shapes(delta)
    layout = Layout.of(shapes)
    enc = codec.encode(delta, old)
    assert enc.meta == {}
    body = unpack(pack({"codec_meta": enc.meta}, enc.tensors)).tensors
    decoded = codec.decode(body, {}, shapes)
    assert set(decoded) == set(delta) and set(enc.residual) == set(delta)
    plain = _plain(codec, enc.tensors, shapes)
    assert len(plain) <= MAX_BODY_TENSORS
    assert set(plain) <= {"val", "scale", *INDEX_NAMES}
    counts = [topk_count(n, codec.ratio) for n in layout.numels]
    pos = _flat_positions(codec, plain, layout, counts)
    assert pos.numel() == sum(counts)
    blocks = [num_blocks(c, codec.block_size) for c in counts]
    if codec.values in QMAX:
        assert plain["scale"].dtype == torch.float32
        assert plain["scale"].shape == (sum(blocks),)
    else:
        assert "scale" not in plain
    block_at = 0
    for name, off, numel, k, n_blocks in zip(layout.names, layout.offsets, layout.numels,
                                             counts, blocks, strict=True):
        d = delta[name]
        acc = d.float() + (old[name] if old is not None else 0.0)
        res, dec = enc.residual[name], decoded[name]
        assert res.dtype == torch.float32 and res.shape == d.shape
        assert dec.dtype == torch.float32 and dec.shape == d.shape
        tol = 1e-6 * (float(acc.abs().max()) if acc.numel() else 0.0) + 1e-30
        assert torch.allclose(dec + res, acc, rtol=0.0, atol=tol)
        local = pos[(pos >= off) & (pos < off + numel)] - off
        assert local.numel() == k  # the selection is per tensor
        flat_dec, flat_acc = dec.reshape(-1), acc.reshape(-1)
        unsent = torch.ones(numel, dtype=torch.bool)
        unsent[local] = False
        assert not flat_dec[unsent].any()
        err = (flat_dec[local] - flat_acc[local]).abs()
        sent_acc = flat_acc[local]
        if codec.values == "fp32":
            assert not err.any()
        elif codec.values == "fp16":
            assert bool((err <= sent_acc.abs() * 2**-11 + 2**-25).all())
        else:  # blocks of block_size sent values within this tensor, never across
            length = k if codec.block_size is None else codec.block_size
            for j, b in enumerate(range(0, k, max(length, 1))):
                scale = float(sent_acc[b:b + length].abs().max()) / QMAX[codec.values]
                assert float(plain["scale"][block_at + j]) == pytest.approx(scale, rel=1e-6,
                                                                             abs=1e-30)
                assert float(err[b:b + length].max()) <= scale / 2 * (1 + 1e-5) + 1e-30
            block_at += n_blocks
        if isinstance(codec, TopKCodec) and unsent.any() and k:
            assert float(flat_acc[local].abs().min()) >= float(flat_acc[unsent].abs().max())
    if codec.values == "fp32":  # values travel in flat-position order
        flat_acc = layout.flatten({n: delta[n].float() + (old[n] if old is not None else 0.0)
                                   for n in delta})
        assert torch.equal(plain["val"], flat_acc[pos])


_floats = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32).map(
    lambda x: 0.0 if abs(x) < 1e-6 else x
)
_NAMES = ["l1.lora_A.weight", "l0.lora_A.weight", "l10.lora_A.weight", "l2.lora_B.weight"]


@st.composite
def deltas(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """1-4 tensors, in an order that is not the sorted one, of up to 81 elements (some
    empty, some scalars)."""
    delta: dict[str, torch.Tensor] = {}
    residual: dict[str, torch.Tensor] = {}
    for name in _NAMES[:draw(st.integers(1, len(_NAMES)))]:
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=2)))
        numel = math.prod(shape)
        values = st.lists(_floats, min_size=numel, max_size=numel)
        delta[name] = torch.tensor(draw(values), dtype=torch.float32).reshape(shape)
        residual[name] = torch.tensor(draw(values), dtype=torch.float32).reshape(shape)
    return delta, (residual if draw(st.booleans()) else None)


@pytest.mark.parametrize(("selector", "values", "block_size", "zstd"), COMBOS)
@settings(max_examples=20, deadline=None, derandomize=True)
@given(case=deltas(), ratio=st.floats(0.01, 1.0))
def test_round_trip_and_error_feedback(selector: str, values: str, block_size: int | None,
                                       zstd: bool, case: Any, ratio: float) -> None:
    delta, residual = case
    check_round_trip(make(selector, values, block_size, zstd, ratio), delta, residual)


@pytest.mark.parametrize(("selector", "values", "block_size", "zstd"), COMBOS)
@settings(max_examples=8, deadline=None, derandomize=True)
@given(case=deltas(), ratio=st.floats(0.01, 1.0))
def test_flat_layout_changes_nothing_but_the_layout(selector: str, values: str,
                                                    block_size: int | None, zstd: bool,
                                                    case: Any, ratio: float) -> None:
    """Each tensor decodes (and keeps its residual) bit for bit as if it were the only one
    in its update: selection and scales are per tensor, only the wire layout is flat."""
    delta, residual = case
    codec = make(selector, values, block_size, zstd, ratio)
    enc = codec.encode(delta, residual)
    decoded = codec.decode(enc.tensors, {}, _shapes(delta))
    for name, d in delta.items():
        alone_res = None if residual is None else {name: residual[name]}
        alone = codec.encode({name: d}, alone_res)
        assert torch.equal(codec.decode(alone.tensors, {}, {name: tuple(d.shape)})[name],
                           decoded[name])
        assert torch.equal(alone.residual[name], enc.residual[name])


@pytest.mark.parametrize(("selector", "values", "block_size", "zstd"), COMBOS)
def test_body_has_at_most_three_tensors(selector: str, values: str, block_size: int | None,
                                        zstd: bool) -> None:
    shapes = {f"layer.{i}.lora_A.weight": (8, 384) for i in range(12)}
    g = torch.Generator().manual_seed(5)
    delta = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    codec = make(selector, values, block_size, zstd, ratio=0.05)
    enc = codec.encode(delta)
    expected = 1 + (values in QMAX) + (selector == "topk")
    assert len(enc.tensors) == (1 if zstd else expected) <= MAX_BODY_TENSORS
    assert len(_plain(codec, enc.tensors, shapes)) == expected
    decoded = codec.decode(enc.tensors, {}, shapes)
    # views of one float32 vector, in the expected shapes, in layout order
    assert list(decoded) == sorted(shapes)
    ptrs = {t.untyped_storage().data_ptr() for t in decoded.values()}
    assert len(ptrs) == 1 and all(t.shape == (8, 384) for t in decoded.values())


def test_decoded_update_does_not_alias_the_body() -> None:
    codec = make("topk", "fp32", None, False, ratio=1.0)
    shapes = {"a": (3,), "b": (2,)}
    enc = codec.encode({"a": torch.ones(3), "b": torch.ones(2)})
    assert set(enc.tensors) == {"val"}  # everything sent: no index
    decoded = codec.decode(enc.tensors, {}, shapes)
    decoded["a"] += 1.0
    assert torch.equal(enc.tensors["val"], torch.ones(5))


@pytest.mark.parametrize("selector", ["topk", "randk"])
def test_error_feedback_converges(selector: str) -> None:
    """With a constant delta, what was sent in total tracks the true total."""
    g = torch.Generator().manual_seed(1)
    delta = {"a": torch.randn(8, 16, generator=g), "b": torch.randn(30, generator=g)}
    rounds = 200
    residual = None
    sent = {n: torch.zeros_like(t) for n, t in delta.items()}
    for rnd in range(rounds):
        params = {"ratio": 0.1, "values": "int4", "block_size": 8, "zstd": False}
        codec = get_codec(selector, **round_codec_params(selector, params, 0, rnd))
        enc = codec.encode(delta, residual)
        residual = enc.residual
        for n, t in codec.decode(enc.tensors, {}, _shapes(delta)).items():
            sent[n] += t
    assert residual is not None
    for n, d in delta.items():
        assert torch.allclose(sent[n] + residual[n], d * rounds, atol=1e-3 * rounds)
        assert float((sent[n] - d * rounds).norm() / (d * rounds).norm()) < 0.15


def codec_params(codec: Any) -> dict[str, Any]:
    return {"ratio": codec.ratio, "values": codec.values, "block_size": codec.block_size,
            "zstd": codec.zstd}


def test_randk_support_same_on_every_device_and_no_indices() -> None:
    g = torch.Generator().manual_seed(2)
    shapes = {"x.lora_A.weight": (8, 48), "w.lora_A.weight": (8, 48)}
    codec = make("randk", "fp32", None, False, ratio=0.05)  # exact: sent values stay != 0
    masks = []
    for _ in range(4):  # four devices, different deltas, same round
        delta = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
        enc = codec.encode(delta)
        assert set(enc.tensors) == {"val"}
        decoded = codec.decode(enc.tensors, {}, shapes)
        masks.append({n: decoded[n] != 0 for n in shapes})
    assert all(torch.equal(m[n], masks[0][n]) for m in masks for n in shapes)
    for n in shapes:  # per tensor, from the seed and the tensor's name
        assert int(masks[0][n].sum()) == topk_count(8 * 48, 0.05)
        assert torch.equal(torch.nonzero(masks[0][n].reshape(-1)).reshape(-1),
                           randk_support(8 * 48, topk_count(8 * 48, 0.05), codec.seed, n))
    assert not torch.equal(masks[0]["x.lora_A.weight"], masks[0]["w.lora_A.weight"])
    later = get_codec("randk", **round_codec_params("randk", codec_params(codec), 0, 2))
    enc = later.encode({n: torch.randn(s, generator=g) for n, s in shapes.items()})
    decoded = later.decode(enc.tensors, {}, shapes)
    for n in shapes:
        assert not torch.equal(decoded[n] != 0, masks[0][n])


def test_randk_flat_support_is_memoised_per_round() -> None:
    layout = Layout.of({"a": (4, 25), "b": (7,)})
    first = randk_flat_support(layout, 0.1, SEED)
    assert randk_flat_support(layout, 0.1, SEED) is first
    assert randk_flat_support(layout, 0.1, SEED + 1) is not first
    assert first.tolist() == sorted(first.tolist()) and first.numel() == 10 + 1


def test_index_encoding_chosen_by_size() -> None:
    delta = {"sparse": torch.randn(1000), "tiny": torch.randn(2), "one": torch.randn(1)}
    total = 1003
    for ratio, kind in ((0.01, "varint"), (0.5, "bitmap")):
        codec = make("topk", "int8", None, False, ratio=ratio)
        enc = codec.encode(delta)
        (index,) = [n for n in enc.tensors if n.startswith("idx.")]
        assert index == f"idx.{kind}"  # 0.01: 12 positions, ~20 varint bytes vs 126
        k = sum(topk_count(t.numel(), ratio) for t in delta.values())
        pos = decode_support(index, kind, enc.tensors[index], total, k)
        gaps = torch.diff(pos, prepend=torch.zeros(1, dtype=torch.int64))
        sizes = {"varint": varint_encode(gaps).numel(), "bitmap": bitmap_len(total)}
        assert enc.tensors[index].numel() == min(sizes.values())
        assert sizes[kind] == min(sizes.values())
    enc = make("topk", "int8", None, False, ratio=1.0).encode(delta)
    assert set(enc.tensors) == {"val", "scale"}  # everything sent: no index


def test_params_validated() -> None:
    for bad in ({"ratio": 0.0}, {"ratio": True}, {"values": "int3"}, {"block_size": 0},
                {"block_size": 2.0}, {"values": "fp16", "block_size": 4}, {"zstd": 1}):
        with pytest.raises(ValueError) as info:
            get_codec("topk", **bad)
        assert not isinstance(info.value, WireError)
    for bad_seed in (-1, 2**63, 1.5, True, "7"):
        with pytest.raises(ValueError):
            get_codec("randk", seed=bad_seed)
    with pytest.raises(ValueError):
        get_codec("randk")  # the round's seed is required
    with pytest.raises(ValueError):
        get_codec("topk", seed=3)  # top-k has no seed


def test_encode_misuse_is_a_plain_value_error() -> None:
    codec = make("topk", "int8", None, False)
    for delta, residual in (({"a": torch.tensor([math.nan])}, None),
                            ({"a": torch.ones(3)}, {"b": torch.ones(3)}),
                            ({"a": torch.ones(3)}, {"a": torch.ones(4)})):
        with pytest.raises(ValueError) as info:
            codec.encode(delta, residual)
        assert not isinstance(info.value, WireError)


def test_round_codec_params_add_the_round_seed_to_randk_only() -> None:
    assert round_codec_params("randk", {"ratio": 0.1}, 5, 9) == {"ratio": 0.1,
                                                                 "seed": round_seed(5, 9)}
    assert round_codec_params("topk", {"ratio": 0.1}, 5, 9) == {"ratio": 0.1}


# ---------------------------------------------------------------------------- hostile

# sorted: "v" holds flat positions [0, 3) and sends 1 at ratio 0.1, "w" [3, 103) and 10
SHAPES: Shapes = {"w": (4, 25), "v": (3,)}
TOTAL, K = 103, 11


def _good(selector: str, values: str = "int8", zstd: bool = False, ratio: float = 0.1,
          block_size: int | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    codec = make(selector, values, block_size, zstd, ratio)
    g = torch.Generator().manual_seed(3)
    enc = codec.encode({n: torch.randn(s, generator=g) for n, s in SHAPES.items()})
    return codec, dict(enc.tensors)


def _reason(codec: Any, tensors: dict[str, Any], meta: Any = None) -> str:
    with pytest.raises(WireError) as info:
        codec.decode(tensors, {} if meta is None else meta, SHAPES)
    assert type(info.value) is WireError
    return info.value.reason


def _u8(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def _positions(tensors: dict[str, torch.Tensor]) -> list[int]:
    (name,) = [n for n in INDEX_NAMES if n in tensors]
    return decode_support(name, name[4:], tensors[name], TOTAL, K).tolist()


def _varint(positions: list[int]) -> torch.Tensor:
    pos = torch.tensor(positions, dtype=torch.int64)
    return varint_encode(torch.diff(pos, prepend=torch.zeros(1, dtype=torch.int64)))


def _bitmap(positions: list[int]) -> torch.Tensor:
    bits = torch.zeros(bitmap_len(TOTAL) * 8, dtype=torch.uint8)
    bits[positions] = 1
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8)
    return (bits.reshape(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def test_good_fixture_decodes() -> None:
    for selector in ("topk", "randk"):
        codec, tensors = _good(selector)
        assert set(codec.decode(tensors, {}, SHAPES)) == set(SHAPES)
    _, tensors = _good("topk")
    assert set(tensors) == {"val", "scale", "idx.varint"}  # 11 varint bytes < 13-byte bitmap
    assert tensors["val"].shape == (K,) and tensors["scale"].shape == (2,)
    assert torch.equal(_varint(_positions(tensors)), tensors["idx.varint"])


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"val": torch.zeros(K - 1, dtype=torch.int8)}, "shape_mismatch"),
        ({"val": torch.zeros(K + 1, dtype=torch.int8)}, "shape_mismatch"),
        ({"val": torch.zeros(1, K, dtype=torch.int8)}, "shape_mismatch"),
        ({"val": torch.zeros(K, dtype=torch.uint8)}, "bad_tensor"),
        ({"val": torch.full((K,), -128, dtype=torch.int8)}, "bad_value"),
        ({"val": "not a tensor"}, "bad_tensor"),
        ({"scale": torch.tensor([1.0, -1.0])}, "bad_value"),
        ({"scale": torch.tensor([math.inf, 1.0])}, "non_finite"),
        ({"scale": torch.tensor([1.0, math.nan])}, "non_finite"),
        ({"scale": torch.tensor([3e38, 1.0])}, "non_finite"),  # 3e38 * 127 overflows
        ({"scale": torch.ones(1)}, "shape_mismatch"),  # one scale per tensor: 2
        ({"scale": torch.ones(3)}, "shape_mismatch"),
        ({"scale": torch.ones(2, dtype=torch.float16)}, "bad_tensor"),
        ({"idx.varint": _u8([0x80])}, "bad_varint"),  # truncated
        ({"idx.varint": _u8([0x80] * 5 + [0x01] + [1] * 10)}, "bad_varint"),  # 6 bytes
        ({"idx.varint": _u8([0x81, 0x00] + [1] * 10)}, "bad_varint"),  # non-canonical
        ({"idx.varint": _u8([1] * 10)}, "bad_index"),  # K - 1 positions
        ({"idx.varint": _u8([1] * 12)}, "bad_index"),  # K + 1 positions
        ({"idx.varint": _u8([1, 0] + [1] * 9)}, "bad_index"),  # zero gap
        ({"idx.varint": _u8([1] * 10 + [100])}, "bad_index"),  # past the 103 elements
        ({"idx.varint": _u8([1] * 10).to(torch.int8)}, "bad_tensor"),
        ({"idx.varint": _u8([1] * 11).reshape(1, 11)}, "bad_tensor"),
        ({"idx.varint": "not a tensor"}, "bad_tensor"),
        ({"idx.bitmap": torch.zeros(13, dtype=torch.uint8)}, "unexpected_tensor"),
        ({"extra": torch.zeros(1)}, "unexpected_tensor"),
        ({"w.val": torch.zeros(10, dtype=torch.int8)}, "unexpected_tensor"),  # old layout
        ({ZSTD_TENSOR: torch.zeros(4, dtype=torch.uint8)}, "unexpected_tensor"),
    ],
)
def test_topk_hostile(patch: dict[str, Any], reason: str) -> None:
    codec, tensors = _good("topk")
    assert _reason(codec, {**tensors, **patch}) == reason


@pytest.mark.parametrize("part", ["val", "scale", "idx.varint"])
def test_topk_missing_part(part: str) -> None:
    codec, tensors = _good("topk")
    del tensors[part]
    assert _reason(codec, tensors) == "missing_tensor"


def test_old_per_tensor_layout_refused() -> None:
    codec, _ = _good("topk")
    old = {"w.val": torch.zeros(10, dtype=torch.int8), "w.scale": torch.ones(1),
           "w.idx.varint": _u8([1] * 10), "v.val": torch.zeros(1, dtype=torch.int8),
           "v.scale": torch.ones(1), "v.idx.varint": _u8([0])}
    assert _reason(codec, old) == "missing_tensor"


def _v_to_w(pos: list[int]) -> list[int]:
    """``pos`` with v's one position moved into w: v sends 0, w sends 11."""
    assert len([p for p in pos if p < 3]) == 1
    free_w = next(p for p in range(3, TOTAL) if p not in pos)
    return sorted([*(p for p in pos if p >= 3), free_w])


def _w_to_v(pos: list[int]) -> list[int]:
    """``pos`` with one of w's positions moved into v: v sends 2, w sends 9."""
    free_v = next(p for p in range(3) if p not in pos)
    return sorted([*pos[:-1], free_v])


def test_topk_positions_must_match_each_tensors_count() -> None:
    """A well-formed index with the right total that moves one position from one tensor
    into another is refused: each tensor sends exactly its k."""
    codec, tensors = _good("topk")
    pos = _positions(tensors)
    for moved in (_v_to_w(pos), _w_to_v(pos)):
        assert len(moved) == K and len(set(moved)) == K
        varint = _varint(moved)
        assert _reason(codec, {**tensors, "idx.varint": varint}) == "bad_index"
        bitmap_body = {n: t for n, t in tensors.items() if n != "idx.varint"}
        assert _reason(codec, {**bitmap_body, "idx.bitmap": _bitmap(moved)}) == "bad_index"
    assert torch.equal(codec.decode({**tensors, "idx.varint": _varint(pos)}, {}, SHAPES)["w"],
                       codec.decode(tensors, {}, SHAPES)["w"])


def test_topk_bitmap_hostile() -> None:
    codec, tensors = _good("topk", ratio=0.5)
    bitmap = tensors["idx.bitmap"]
    assert set(tensors) == {"val", "scale", "idx.bitmap"}  # 52 of 103: bitmap 13 bytes
    assert bitmap.numel() == bitmap_len(TOTAL) == 13
    assert _reason(codec, {**tensors, "idx.bitmap": bitmap[:12]}) == "shape_mismatch"
    longer = torch.cat([bitmap, _u8([0])])
    assert _reason(codec, {**tensors, "idx.bitmap": longer}) == "shape_mismatch"
    flipped = bitmap.clone()
    flipped[0] ^= 1  # one position more or less than K
    assert _reason(codec, {**tensors, "idx.bitmap": flipped}) == "bad_index"
    padded = bitmap.clone()
    padded[12] |= 0x80  # bit 103 lies past the 103 elements
    assert _reason(codec, {**tensors, "idx.bitmap": padded}) == "bad_index"
    both = {**tensors, "idx.varint": _u8([1])}
    assert _reason(codec, both) == "unexpected_tensor"
    del tensors["idx.bitmap"]
    assert _reason(codec, tensors) == "missing_tensor"


@pytest.mark.parametrize("block_size", [None, 3])
def test_int4_hostile(block_size: int | None) -> None:
    codec, tensors = _good("topk", values="int4", block_size=block_size)
    packed = tensors["val"]
    assert packed.shape == ((K + 1) // 2,)  # 11 values: the last high nibble is padding
    blocks = 2 if block_size is None else 1 + 4  # v: 1 value, w: 10 values in blocks of 3
    assert tensors["scale"].shape == (blocks,)
    assert int(packed[-1]) >> 4 == 0
    padded = packed.clone()
    padded[-1] |= 0x10
    assert _reason(codec, {**tensors, "val": padded}) == "bad_value"
    nibble0 = packed.clone()
    nibble0[2] &= 0xF0  # value 4 becomes -8
    assert _reason(codec, {**tensors, "val": nibble0}) == "bad_value"
    assert _reason(codec, {**tensors, "val": packed[:-1]}) == "shape_mismatch"
    assert _reason(codec, {**tensors, "val": packed.to(torch.int8)}) == "bad_tensor"
    assert _reason(codec, {**tensors, "scale": torch.ones(blocks + 1)}) == "shape_mismatch"
    neg = tensors["scale"].clone()
    neg[-1] = -neg[-1] - 1.0
    assert _reason(codec, {**tensors, "scale": neg}) == "bad_value"


def test_randk_hostile() -> None:
    codec, tensors = _good("randk", values="int4")
    assert set(tensors) == {"val", "scale"}
    assert _reason(codec, {**tensors, "idx.varint": torch.zeros(1, dtype=torch.uint8)}) \
        == "unexpected_tensor"  # randk never carries indices
    packed = tensors["val"]
    assert _reason(codec, {**tensors, "val": packed[:-1]}) == "shape_mismatch"
    assert _reason(codec, {**tensors, "val": torch.zeros_like(packed)}) == "bad_value"
    assert _reason(codec, tensors, meta=[1]) == "bad_header"
    del tensors["scale"]
    assert _reason(codec, tensors) == "missing_tensor"


@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_float_values_hostile(values: str) -> None:
    codec, tensors = _good("randk", values=values)
    assert set(tensors) == {"val"}
    val = tensors["val"].clone()
    val[3] = math.inf
    assert _reason(codec, {**tensors, "val": val}) == "non_finite"
    val[3] = math.nan
    assert _reason(codec, {**tensors, "val": val}) == "non_finite"
    other = torch.float16 if values == "fp32" else torch.float32
    assert _reason(codec, {**tensors, "val": tensors["val"].to(other)}) == "bad_tensor"
    assert _reason(codec, {**tensors, "scale": torch.ones(2)}) == "unexpected_tensor"


def test_zstd_codec_hostile() -> None:
    codec, tensors = _good("topk", zstd=True)
    assert set(tensors) == {ZSTD_TENSOR}
    plain = decompress_body(tensors, codec.body_limit(SHAPES), MAX_BODY_TENSORS)
    assert set(plain) == {"val", "scale", "idx.varint"}
    assert _reason(codec, plain) == "missing_tensor"  # zstd announced, plain body sent
    bad_inner = compress_body({**plain, "idx.varint": _u8([0x80])})
    assert _reason(codec, bad_inner) == "bad_varint"
    moved = compress_body({**plain, "idx.varint": _varint(_v_to_w(_positions(plain)))})
    assert _reason(codec, moved) == "bad_index"
    four = compress_body({**plain, "junk": torch.zeros(1)})
    assert _reason(codec, four) == "too_large"  # more tensors than a body can have
    three = compress_body({"val": plain["val"], "scale": plain["scale"],
                           "junk": torch.zeros(1)})
    assert _reason(codec, three) == "missing_tensor"
    huge = compress_body({**plain, "junk": torch.zeros(codec.body_limit(SHAPES),
                                                       dtype=torch.uint8)})
    assert _reason(codec, huge) == "zstd_bomb"


def test_body_limit_covers_the_largest_well_formed_body() -> None:
    """The zstd bound is not so tight that a legitimate body is refused: varint positions
    with the largest gaps, and a bitmap, at every value format."""
    from fedsa_common.wire.envelope import pack_tensors

    for values, block_size in VALUE_OPTIONS:
        codec = make("topk", values, block_size, True, ratio=0.1)
        _, tensors = _good("topk", values=values, block_size=block_size, ratio=0.1)
        plain = {n: t for n, t in tensors.items() if not n.startswith("idx.")}
        worst = {**plain, "idx.varint": _u8([0xFF, 0xFF, 0xFF, 0xFF, 0x0F] * K)}
        assert len(pack_tensors(worst)) <= codec.body_limit(SHAPES)
        assert len(pack_tensors({**plain, "idx.bitmap": _bitmap(list(range(K)))})) \
            <= codec.body_limit(SHAPES)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=40), st.sampled_from(["varint", "bitmap"]),
       st.binary(max_size=12), st.lists(st.floats(width=32), max_size=3))
def test_random_bodies_never_crash(idx: bytes, kind: str, val: bytes,
                                   scale: list[float]) -> None:
    codec = make("topk", "int4", None, False, ratio=0.1)
    tensors = {f"idx.{kind}": torch.tensor(list(idx), dtype=torch.uint8),
               "val": torch.tensor(list(val), dtype=torch.uint8),
               "scale": torch.tensor(scale, dtype=torch.float32)}
    try:
        out = codec.decode(tensors, {}, SHAPES)
    except WireError as err:
        assert type(err) is WireError
        return
    assert out["w"].shape == (4, 25) and bool(torch.isfinite(out["w"]).all())
    assert int((out["w"] != 0).sum()) <= 10 and int((out["v"] != 0).sum()) <= 1
