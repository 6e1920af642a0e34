"""The ``topk`` and ``randk`` codecs, every combination of value format, scale blocks and
zstd: round trips within the quantization bound, exact error feedback, hostile bodies."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsa_common.envelope import pack, unpack
from fedsa_common.errors import WireError
from quant.codec import (
    RandKCodec,
    TopKCodec,
    get_codec,
    randk_support,
    round_codec_params,
    round_seed,
    topk_count,
)
from quant.codecs.indices import INDEX_KINDS, decode_support
from quant.codecs.values import QMAX
from quant.codecs.zbody import ZSTD_TENSOR, compress_body, decompress_body

Shapes = dict[str, tuple[int, ...]]
SEED = round_seed(0, 1)

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
    return decompress_body(tensors, codec.body_limit(shapes), 64) if codec.zstd else tensors


def _positions(codec: Any, plain: dict[str, torch.Tensor], name: str, numel: int,
               k: int) -> torch.Tensor:
    if k == numel:
        return torch.arange(numel)
    if isinstance(codec, RandKCodec):
        return randk_support(numel, k, codec.seed, name)
    (kind,) = [kd for kd in INDEX_KINDS if f"{name}.idx.{kd}" in plain]
    return decode_support(name, kind, plain[f"{name}.idx.{kind}"], numel, k)


def check_round_trip(codec: Any, delta: dict[str, torch.Tensor],
                     old: dict[str, torch.Tensor] | None) -> None:
    """Error feedback is exact (decoded + new residual == delta + old residual), unsent
    coordinates decode to 0, sent ones are within the format's bound, and top-k sends the
    largest magnitudes."""
    shapes = _shapes(delta)
    enc = codec.encode(delta, old)
    assert enc.meta == {}
    body = unpack(pack({"codec_meta": enc.meta}, enc.tensors)).tensors
    decoded = codec.decode(body, {}, shapes)
    plain = _plain(codec, enc.tensors, shapes)
    for name, d in delta.items():
        acc = d.float() + (old[name] if old is not None else 0.0)
        res = enc.residual[name]
        assert res.dtype == torch.float32 and res.shape == d.shape
        assert decoded[name].dtype == torch.float32 and decoded[name].shape == d.shape
        tol = 1e-6 * float(acc.abs().max()) + 1e-30
        assert torch.allclose(decoded[name] + res, acc, rtol=0.0, atol=tol)
        numel = d.numel()
        k = topk_count(numel, codec.ratio)
        pos = _positions(codec, plain, name, numel, k)
        assert pos.numel() == k
        flat_dec, flat_acc = decoded[name].reshape(-1), acc.reshape(-1)
        unsent = torch.ones(numel, dtype=torch.bool)
        unsent[pos] = False
        assert not flat_dec[unsent].any()
        err = (flat_dec[pos] - flat_acc[pos]).abs()
        sent_acc = flat_acc[pos]
        if codec.values == "fp32":
            assert not err.any()
        elif codec.values == "fp16":
            assert bool((err <= sent_acc.abs() * 2**-11 + 2**-25).all())
        else:
            length = k if codec.block_size is None else codec.block_size
            for b in range(0, k, max(length, 1)):
                scale = float(sent_acc[b:b + length].abs().max()) / QMAX[codec.values]
                assert float(err[b:b + length].max()) <= scale / 2 * (1 + 1e-5) + 1e-30
        if isinstance(codec, TopKCodec) and unsent.any() and k:
            assert float(flat_acc[pos].abs().min()) >= float(flat_acc[unsent].abs().max())


_floats = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32).map(
    lambda x: 0.0 if abs(x) < 1e-6 else x
)


@st.composite
def deltas(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    delta: dict[str, torch.Tensor] = {}
    residual: dict[str, torch.Tensor] = {}
    for i in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.integers(1, 9), min_size=0, max_size=2)))
        numel = math.prod(shape)
        values = st.lists(_floats, min_size=numel, max_size=numel)
        delta[f"l{i}.lora_A.weight"] = torch.tensor(draw(values)).reshape(shape)
        residual[f"l{i}.lora_A.weight"] = torch.tensor(draw(values)).reshape(shape)
    return delta, (residual if draw(st.booleans()) else None)


@pytest.mark.parametrize(("selector", "values", "block_size", "zstd"), COMBOS)
@settings(max_examples=20, deadline=None)
@given(case=deltas(), ratio=st.floats(0.01, 1.0))
def test_round_trip_and_error_feedback(selector: str, values: str, block_size: int | None,
                                       zstd: bool, case: Any, ratio: float) -> None:
    delta, residual = case
    check_round_trip(make(selector, values, block_size, zstd, ratio), delta, residual)


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


def test_randk_support_same_on_every_device_and_no_indices() -> None:
    g = torch.Generator().manual_seed(2)
    shapes = {"x.lora_A.weight": (8, 48)}
    codec = make("randk", "fp32", None, False, ratio=0.05)  # exact: sent values stay != 0
    masks = []
    for _ in range(4):  # four devices, different deltas, same round
        delta = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
        enc = codec.encode(delta)
        assert set(enc.tensors) == {"x.lora_A.weight.val"}
        masks.append(codec.decode(enc.tensors, {}, shapes)["x.lora_A.weight"] != 0)
    assert all(torch.equal(m, masks[0]) for m in masks)
    assert int(masks[0].sum()) == topk_count(8 * 48, 0.05)
    later = get_codec("randk", **round_codec_params("randk", codec_params(codec), 0, 2))
    enc = later.encode({n: torch.randn(s, generator=g) for n, s in shapes.items()})
    assert not torch.equal(later.decode(enc.tensors, {}, shapes)["x.lora_A.weight"] != 0,
                           masks[0])


def codec_params(codec: Any) -> dict[str, Any]:
    return {"ratio": codec.ratio, "values": codec.values, "block_size": codec.block_size,
            "zstd": codec.zstd}


def test_index_encoding_chosen_by_size() -> None:
    codec = make("topk", "int8", None, False, ratio=0.5)
    delta = {"sparse": torch.randn(1000), "tiny": torch.randn(2), "one": torch.randn(1)}
    enc = make("topk", "int8", None, False, ratio=0.01).encode(delta)
    assert "sparse.idx.varint" in enc.tensors  # 10 of 1000: ~10 varint bytes vs 125
    enc = codec.encode(delta)
    assert "sparse.idx.bitmap" in enc.tensors  # 500 of 1000: bitmap 125 bytes
    assert "tiny.idx.bitmap" in enc.tensors or "tiny.idx.varint" in enc.tensors
    assert not any(n.startswith("one.idx") for n in enc.tensors)  # k == numel: no index


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


def test_round_codec_params_add_the_round_seed_to_randk_only() -> None:
    assert round_codec_params("randk", {"ratio": 0.1}, 5, 9) == {"ratio": 0.1,
                                                                 "seed": round_seed(5, 9)}
    assert round_codec_params("topk", {"ratio": 0.1}, 5, 9) == {"ratio": 0.1}


# ---------------------------------------------------------------------------- hostile

SHAPES: Shapes = {"w": (4, 25), "v": (3,)}


def _good(selector: str, values: str = "int8", zstd: bool = False,
          ratio: float = 0.1) -> tuple[Any, dict[str, torch.Tensor]]:
    codec = make(selector, values, None, zstd, ratio)
    g = torch.Generator().manual_seed(3)
    enc = codec.encode({n: torch.randn(s, generator=g) for n, s in SHAPES.items()})
    return codec, dict(enc.tensors)


def _reason(codec: Any, tensors: dict[str, Any], meta: Any = None) -> str:
    with pytest.raises(WireError) as info:
        codec.decode(tensors, {} if meta is None else meta, SHAPES)
    assert type(info.value) is WireError
    return info.value.reason


def test_good_fixture_decodes() -> None:
    for selector in ("topk", "randk"):
        codec, tensors = _good(selector)
        assert set(codec.decode(tensors, {}, SHAPES)) == set(SHAPES)


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"w.val": torch.zeros(9, dtype=torch.int8)}, "shape_mismatch"),
        ({"w.val": torch.zeros(10, dtype=torch.uint8)}, "bad_tensor"),
        ({"w.val": torch.full((10,), -128, dtype=torch.int8)}, "bad_value"),
        ({"w.scale": torch.tensor([-1.0])}, "bad_value"),
        ({"w.scale": torch.tensor([math.inf])}, "non_finite"),
        ({"w.scale": torch.ones(2)}, "shape_mismatch"),
        ({"w.idx.varint": torch.tensor([0x80], dtype=torch.uint8)}, "bad_varint"),
        ({"w.idx.bitmap": torch.zeros(13, dtype=torch.uint8)}, "unexpected_tensor"),
        ({"v.idx.varint": torch.tensor([0], dtype=torch.uint8)}, "unexpected_tensor"),
        ({"w.extra": torch.zeros(1)}, "unexpected_tensor"),
        ({ZSTD_TENSOR: torch.zeros(4, dtype=torch.uint8)}, "unexpected_tensor"),
        ({"w.val": "not a tensor"}, "bad_tensor"),
    ],
)
def test_topk_hostile(patch: dict[str, Any], reason: str) -> None:
    codec, tensors = _good("topk")
    assert "w.idx.varint" in tensors  # 10 of 100 positions: varint beats a 13-byte bitmap
    assert _reason(codec, {**tensors, **patch}) == reason


@pytest.mark.parametrize("part", ["w.val", "w.scale", "w.idx.varint", "v.val"])
def test_topk_missing_part(part: str) -> None:
    codec, tensors = _good("topk")
    del tensors[part]
    assert _reason(codec, tensors) == "missing_tensor"


def test_topk_bitmap_hostile() -> None:
    codec, tensors = _good("topk", ratio=0.5)
    bitmap = tensors["w.idx.bitmap"]
    assert bitmap.numel() == 13
    assert _reason(codec, {**tensors, "w.idx.bitmap": bitmap[:12]}) == "shape_mismatch"
    flipped = bitmap.clone()
    flipped[0] ^= 1  # one position more or less than k
    assert _reason(codec, {**tensors, "w.idx.bitmap": flipped}) == "bad_index"
    padded = bitmap.clone()
    padded[12] |= 0x80  # bit 103 lies past the 100 elements
    assert _reason(codec, {**tensors, "w.idx.bitmap": padded}) == "bad_index"


def test_randk_hostile() -> None:
    codec, tensors = _good("randk", values="int4")
    assert _reason(codec, {**tensors, "w.idx.varint": torch.zeros(1, dtype=torch.uint8)}) \
        == "unexpected_tensor"  # randk never carries indices
    packed = tensors["w.val"]
    assert _reason(codec, {**tensors, "w.val": packed[:-1]}) == "shape_mismatch"
    assert _reason(codec, {**tensors, "w.val": torch.zeros_like(packed)}) == "bad_value"
    assert _reason(codec, tensors, meta=[1]) == "bad_header"


def test_zstd_codec_hostile() -> None:
    codec, tensors = _good("topk", zstd=True)
    assert set(tensors) == {ZSTD_TENSOR}
    plain = decompress_body(tensors, codec.body_limit(SHAPES), 16)
    assert _reason(codec, plain) == "missing_tensor"  # zstd announced, plain body sent
    bad_inner = compress_body({**plain, "w.idx.varint": torch.tensor([0x80], dtype=torch.uint8)})
    assert _reason(codec, bad_inner) == "bad_varint"
    huge = compress_body({**plain, "junk": torch.zeros(codec.body_limit(SHAPES),
                                                       dtype=torch.uint8)})
    assert _reason(codec, huge) == "zstd_bomb"


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=40), st.sampled_from(["varint", "bitmap"]),
       st.binary(max_size=12), st.floats(width=32))
def test_random_bodies_never_crash(idx: bytes, kind: str, val: bytes, scale: float) -> None:
    codec = make("topk", "int4", None, False, ratio=0.1)
    tensors = {f"w.idx.{kind}": torch.tensor(list(idx), dtype=torch.uint8),
               "w.val": torch.tensor(list(val), dtype=torch.uint8),
               "w.scale": torch.tensor([scale]),
               "v.val": torch.tensor([0x9], dtype=torch.uint8), "v.scale": torch.ones(1)}
    try:
        out = codec.decode(tensors, {}, SHAPES)
    except WireError:
        return
    assert out["w"].shape == (4, 25) and bool(torch.isfinite(out["w"]).all())
