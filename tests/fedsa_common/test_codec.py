"""Tests for delta codecs: round trips, error feedback and hostile decode input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsa_common.wire.codec import CODECS, DenseCodec, TopKInt8Codec, get_codec, topk_count
from fedsa_common.wire.envelope import pack, unpack
from fedsa_common.wire.errors import WireError

Shapes = dict[str, tuple[int, ...]]


def _delta(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.0.lora_A": torch.randn(4, 16, generator=g),
        "layer.0.lora_B": torch.randn(16, 4, generator=g) * 1e-3,
        "bias": torch.randn(7, generator=g),
    }


def _shapes(delta: dict[str, torch.Tensor]) -> Shapes:
    return {n: tuple(t.shape) for n, t in delta.items()}


def _reason(codec: Any, tensors: dict[str, torch.Tensor], shapes: Shapes, meta: Any = None) -> str:
    with pytest.raises(WireError) as info:
        codec.decode(tensors, {} if meta is None else meta, shapes)
    assert type(info.value) is WireError
    return info.value.reason


# ------------------------------------------------------------------------------ registry


def test_registry() -> None:
    assert set(CODECS) == {"dense", "topk_int8", "topk", "randk"}
    assert get_codec("dense").name == "dense"
    codec = get_codec("topk_int8", ratio=0.5)
    assert codec.name == "topk_int8"
    assert isinstance(codec, TopKInt8Codec) and codec.ratio == 0.5
    assert get_codec("topk_int8").ratio == 0.1  # type: ignore[attr-defined]


def test_unknown_codec() -> None:
    with pytest.raises(WireError) as info:
        get_codec("zstd")
    assert info.value.reason == "unknown_codec"


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_bad_ratio(ratio: Any) -> None:
    with pytest.raises(ValueError) as info:
        get_codec("topk_int8", ratio=ratio)
    assert not isinstance(info.value, WireError)


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        get_codec("dense", ratio=0.5)
    with pytest.raises(ValueError):
        get_codec("topk_int8", k=3)


# --------------------------------------------------------------------------------- dense


def test_dense_round_trip_exact() -> None:
    delta = _delta()
    delta["half"] = torch.randn(3, 3).to(torch.float16)
    codec = DenseCodec()
    enc = codec.encode(delta)
    assert enc.meta == {}
    assert all(t.dtype == torch.float32 for t in enc.tensors.values())
    env = unpack(pack({"codec_meta": enc.meta}, enc.tensors))
    out = codec.decode(env.tensors, env.header["codec_meta"], _shapes(delta))
    for name, d in delta.items():
        assert out[name].dtype == torch.float32
        assert torch.equal(out[name], d.float())
        assert torch.equal(enc.residual[name], torch.zeros(d.shape))


def test_dense_flushes_residual() -> None:
    delta = _delta()
    residual = {n: torch.full_like(t, 0.25) for n, t in delta.items()}
    enc = DenseCodec().encode(delta, residual)
    for name in delta:
        assert torch.equal(enc.tensors[name], delta[name] + 0.25)
        assert not enc.residual[name].any()


def test_dense_hostile() -> None:
    codec = DenseCodec()
    shapes: Shapes = {"a": (2, 3), "b": (4,)}
    good = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert set(codec.decode(good, {}, shapes)) == {"a", "b"}
    assert _reason(codec, {"a": good["a"]}, shapes) == "missing_tensor"
    assert _reason(codec, {**good, "c": torch.zeros(1)}, shapes) == "unexpected_tensor"
    assert _reason(codec, {**good, "a": torch.zeros(3, 2)}, shapes) == "shape_mismatch"
    assert _reason(codec, {**good, "b": torch.zeros(4, dtype=torch.int32)}, shapes) == "bad_tensor"
    for bad in (float("nan"), float("inf"), -float("inf")):
        b = torch.zeros(4)
        b[2] = bad
        assert _reason(codec, {**good, "b": b}, shapes) == "non_finite"
    assert _reason(codec, good, shapes, meta=[1]) == "bad_header"


def test_encode_rejects_local_mistakes() -> None:
    delta = {"a": torch.zeros(3)}
    for codec in (DenseCodec(), TopKInt8Codec()):
        with pytest.raises(ValueError):
            codec.encode(delta, {"b": torch.zeros(3)})
        with pytest.raises(ValueError):
            codec.encode(delta, {"a": torch.zeros(4)})
        with pytest.raises(ValueError):
            codec.encode({"a": torch.tensor([1.0, float("nan")])})


# ----------------------------------------------------------------------------- topk_int8


def _check_identity(
    delta: dict[str, torch.Tensor], old: dict[str, torch.Tensor] | None, ratio: float
) -> None:
    """decoded + new_residual == delta + old_residual; per sent coordinate err <= scale/2."""
    codec = TopKInt8Codec(ratio=ratio)
    enc = codec.encode(delta, old)
    decoded = codec.decode(enc.tensors, enc.meta, _shapes(delta))
    for name, d in delta.items():
        acc = d.float() + (old[name] if old is not None else 0.0)
        res = enc.residual[name]
        assert res.dtype == torch.float32 and res.shape == d.shape
        tol = 1e-5 * float(acc.abs().max()) + 1e-30
        assert torch.allclose(decoded[name] + res, acc, rtol=0.0, atol=tol)
        idx = enc.tensors[f"{name}.idx"].to(torch.int64)
        scale = float(enc.tensors[f"{name}.scale"][0])
        assert len(idx) == topk_count(d.numel(), ratio)
        err = (decoded[name].reshape(-1)[idx] - acc.reshape(-1)[idx]).abs()
        if len(idx):
            assert float(err.max()) <= scale / 2 * (1 + 1e-5) + 1e-30
        # sent coordinates dominate unsent ones in magnitude
        mask = torch.ones(d.numel(), dtype=torch.bool)
        mask[idx] = False
        if mask.any() and len(idx):
            flat = acc.reshape(-1).abs()
            assert float(flat[idx].min()) >= float(flat[mask].max())


_floats = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32).map(
    lambda x: 0.0 if abs(x) < 1e-6 else x
)


@st.composite
def _delta_and_residual(
    draw: st.DrawFn,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    n = draw(st.integers(1, 3))
    delta: dict[str, torch.Tensor] = {}
    residual: dict[str, torch.Tensor] = {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=3)))
        numel = math.prod(shape)
        values = st.lists(_floats, min_size=numel, max_size=numel)
        delta[f"p{i}"] = torch.tensor(draw(values)).reshape(shape)
        residual[f"p{i}"] = torch.tensor(draw(values)).reshape(shape)
    return delta, (residual if draw(st.booleans()) else None)


@settings(max_examples=150, deadline=None)
@given(_delta_and_residual(), st.floats(0.01, 1.0))
def test_topk_error_feedback_identity(case: Any, ratio: float) -> None:
    delta, residual = case
    _check_identity(delta, residual, ratio)


def test_topk_ratio_one_reconstructs_within_half_scale() -> None:
    delta = _delta()
    codec = TopKInt8Codec(ratio=1.0)
    enc = codec.encode(delta)
    env = unpack(pack({"codec_meta": enc.meta}, enc.tensors))
    out = codec.decode(env.tensors, env.header["codec_meta"], _shapes(delta))
    for name, d in delta.items():
        scale = float(enc.tensors[f"{name}.scale"][0])
        assert scale == pytest.approx(float(d.abs().max()) / 127, rel=1e-6)
        assert len(enc.tensors[f"{name}.idx"]) == d.numel()
        assert float((out[name] - d).abs().max()) <= scale / 2 * (1 + 1e-5)


def test_topk_all_zero_delta() -> None:
    delta = {"z": torch.zeros(5, 5)}
    enc = TopKInt8Codec(ratio=0.2).encode(delta)
    assert float(enc.tensors["z.scale"][0]) == 0.0
    out = TopKInt8Codec().decode(enc.tensors, enc.meta, {"z": (5, 5)})
    assert not out["z"].any() and not enc.residual["z"].any()


def test_topk_converges_with_constant_delta() -> None:
    delta = _delta(1)
    codec = TopKInt8Codec(ratio=0.1)
    residual: dict[str, torch.Tensor] | None = None
    sent_total = {n: torch.zeros_like(t) for n, t in delta.items()}
    rounds = 200
    for _ in range(rounds):
        enc = codec.encode(delta, residual)
        out = codec.decode(enc.tensors, enc.meta, _shapes(delta))
        residual = enc.residual
        for name in delta:
            sent_total[name] += out[name]
    assert residual is not None
    for name, d in delta.items():
        true_total = d * rounds
        # the gap between cumulative sent and cumulative true delta IS the residual
        assert torch.allclose(sent_total[name] + residual[name], true_total, atol=1e-3 * rounds)
        # and it stays bounded: well below the cumulative signal
        bound = 20 * float(d.abs().max())
        assert float(residual[name].abs().max()) <= bound
        rel = float((sent_total[name] - true_total).norm() / true_total.norm())
        assert rel < 0.1


@pytest.mark.parametrize(
    ("numel", "ratio", "k"),
    [
        (100, 0.1, 10),
        (101, 0.1, 11),
        (70, 0.1, 7),
        (5, 0.01, 1),
        (64, 1.0, 64),
        (3, 0.5, 2),
        (0, 0.5, 0),
    ],
)
def test_topk_count(numel: int, ratio: float, k: int) -> None:
    assert topk_count(numel, ratio) == k


def test_topk_k_per_tensor_and_sorted() -> None:
    delta = {"a": torch.randn(10, 10), "b": torch.randn(3), "c": torch.randn(7, 3)}
    enc = TopKInt8Codec(ratio=0.25).encode(delta)
    for name, expected_k in {"a": 25, "b": 1, "c": 6}.items():
        idx = enc.tensors[f"{name}.idx"].to(torch.int64)
        assert len(idx) == expected_k
        assert len(enc.tensors[f"{name}.val"]) == expected_k
        assert bool((idx[1:] > idx[:-1]).all())
        assert enc.tensors[f"{name}.val"].dtype == torch.int8
        assert enc.tensors[f"{name}.scale"].dtype == torch.float32
        assert enc.tensors[f"{name}.scale"].shape == (1,)
    assert set(enc.tensors) == {f"{n}.{p}" for n in delta for p in ("idx", "val", "scale")}


def test_topk_index_dtype_threshold() -> None:
    delta = {"small": torch.randn(256, 256), "big": torch.randn(65537)}
    codec = TopKInt8Codec(ratio=0.01)
    enc = codec.encode(delta)
    assert enc.tensors["small.idx"].dtype == torch.uint16
    assert enc.tensors["big.idx"].dtype == torch.int32
    out = codec.decode(unpack(pack({}, enc.tensors)).tensors, enc.meta, _shapes(delta))
    assert out["small"].shape == (256, 256) and out["big"].shape == (65537,)


# ------------------------------------------------------------------------ topk hostile


def _topk_good() -> tuple[dict[str, torch.Tensor], Shapes]:
    return (
        {
            "w.idx": torch.tensor([0, 3, 5], dtype=torch.uint16),
            "w.val": torch.tensor([1, -127, 5], dtype=torch.int8),
            "w.scale": torch.tensor([0.5]),
        },
        {"w": (2, 3)},
    )


def test_topk_decode_good_fixture() -> None:
    tensors, shapes = _topk_good()
    out = TopKInt8Codec().decode(tensors, {}, shapes)
    assert torch.equal(out["w"], torch.tensor([[0.5, 0.0, 0.0], [-63.5, 0.0, 2.5]]))


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"w.idx": torch.tensor([0, 3, 6], dtype=torch.uint16)}, "bad_index"),
        ({"w.idx": torch.tensor([0, 5, 3], dtype=torch.uint16)}, "bad_index"),
        ({"w.idx": torch.tensor([0, 3, 3], dtype=torch.uint16)}, "bad_index"),
        ({"w.idx": torch.tensor([0, 3], dtype=torch.uint16)}, "shape_mismatch"),
        ({"w.idx": torch.tensor([[0, 3, 5]], dtype=torch.uint16)}, "shape_mismatch"),
        ({"w.idx": torch.tensor([0, 3, 5], dtype=torch.int32)}, "bad_tensor"),
        ({"w.idx": torch.tensor([0, 3, 5], dtype=torch.int64)}, "bad_tensor"),
        ({"w.idx": torch.tensor([0.0, 3.0, 5.0])}, "bad_tensor"),
        ({"w.val": torch.tensor([1, 2, 3], dtype=torch.int16)}, "bad_tensor"),
        ({"w.val": torch.tensor([1.0, 2.0, 3.0])}, "bad_tensor"),
        ({"w.scale": torch.tensor([float("nan")])}, "non_finite"),
        ({"w.scale": torch.tensor([float("inf")])}, "non_finite"),
        ({"w.scale": torch.tensor([-1.0])}, "bad_tensor"),
        ({"w.scale": torch.tensor([0.5, 0.5])}, "shape_mismatch"),
        ({"w.scale": torch.tensor(0.5)}, "shape_mismatch"),
        ({"w.scale": torch.tensor([0.5], dtype=torch.float16)}, "bad_tensor"),
        ({"w.scale": torch.tensor([3e38])}, "non_finite"),
        ({"w.extra": torch.zeros(1)}, "unexpected_tensor"),
        ({"v.idx": torch.zeros(1, dtype=torch.uint16)}, "unexpected_tensor"),
        ({"w.val": "not a tensor"}, "bad_tensor"),
    ],
)
def test_topk_hostile(patch: dict[str, Any], reason: str) -> None:
    tensors, shapes = _topk_good()
    assert _reason(TopKInt8Codec(), {**tensors, **patch}, shapes) == reason


def test_topk_too_many_indices() -> None:
    tensors = {
        "w.idx": torch.arange(7).to(torch.uint16),
        "w.val": torch.ones(7, dtype=torch.int8),
        "w.scale": torch.tensor([1.0]),
    }
    assert _reason(TopKInt8Codec(), tensors, {"w": (2, 3)}) == "shape_mismatch"


def test_topk_high_uint16_index_is_unsigned() -> None:
    tensors = {
        "w.idx": torch.tensor([3, 65535]).to(torch.uint16),
        "w.val": torch.ones(2, dtype=torch.int8),
        "w.scale": torch.tensor([1.0]),
    }
    out = TopKInt8Codec().decode(tensors, {}, {"w": (256, 256)})
    assert float(out["w"][255, 255]) == 1.0 and float(out["w"].sum()) == 2.0
    assert _reason(TopKInt8Codec(), tensors, {"w": (65535,)}) == "bad_index"


def test_topk_negative_int32_index() -> None:
    tensors = {
        "w.idx": torch.tensor([-1, 4], dtype=torch.int32),
        "w.val": torch.ones(2, dtype=torch.int8),
        "w.scale": torch.tensor([1.0]),
    }
    assert _reason(TopKInt8Codec(), tensors, {"w": (70_000,)}) == "bad_index"


@pytest.mark.parametrize("part", ["idx", "val", "scale"])
def test_topk_missing_part(part: str) -> None:
    tensors, shapes = _topk_good()
    del tensors[f"w.{part}"]
    assert _reason(TopKInt8Codec(), tensors, shapes) == "missing_tensor"


def test_topk_missing_parameter_and_bad_meta() -> None:
    tensors, shapes = _topk_good()
    assert _reason(TopKInt8Codec(), tensors, {**shapes, "v": (3,)}) == "missing_tensor"
    assert _reason(TopKInt8Codec(), tensors, shapes, meta="x") == "bad_header"


@settings(max_examples=150, deadline=None)
@given(
    idx=st.lists(st.integers(0, 65535), max_size=8),
    val=st.lists(st.integers(-128, 127), max_size=8),
    scale=st.floats(allow_nan=True, allow_infinity=True, width=32),
)
def test_topk_random_decode_never_crashes(idx: list[int], val: list[int], scale: float) -> None:
    tensors = {
        "w.idx": torch.tensor(idx, dtype=torch.int64).to(torch.uint16),
        "w.val": torch.tensor(val, dtype=torch.int8),
        "w.scale": torch.tensor([scale], dtype=torch.float32),
    }
    try:
        out = TopKInt8Codec().decode(tensors, {}, {"w": (4, 5)})
    except WireError:
        return
    assert out["w"].shape == (4, 5) and bool(torch.isfinite(out["w"]).all())


def test_topk_int8_minus_128_with_a_huge_scale_is_refused_not_minus_inf() -> None:
    """-128 is never sent (the encoder clamps to +-127), and with the largest scale the
    scale check allows (FLOAT32_MAX / 127) it would decode to -inf."""
    huge = float(torch.finfo(torch.float32).max) / 127.5  # 127 x: finite; 128 x: inf
    tensors = {
        "w.idx": torch.tensor([0, 3]).to(torch.uint16),
        "w.val": torch.tensor([127, -128], dtype=torch.int8),
        "w.scale": torch.tensor([huge], dtype=torch.float32),
    }
    assert _reason(TopKInt8Codec(), tensors, {"w": (4, 5)}) == "bad_value"
    tensors["w.val"] = torch.tensor([127, -127], dtype=torch.int8)
    out = TopKInt8Codec().decode(tensors, {}, {"w": (4, 5)})
    assert bool(torch.isfinite(out["w"]).all())


def test_topk_index_past_its_tensor_is_refused_even_inside_the_update() -> None:
    """Decoding lays all tensors end to end; an index just past tensor ``a`` would land on
    ``b``'s first element of the flat vector, and must still be refused."""
    tensors = {
        "a.idx": torch.tensor([0, 6]).to(torch.uint16),
        "a.val": torch.ones(2, dtype=torch.int8),
        "a.scale": torch.tensor([1.0]),
        "b.idx": torch.tensor([1]).to(torch.uint16),
        "b.val": torch.ones(1, dtype=torch.int8),
        "b.scale": torch.tensor([1.0]),
    }
    shapes = {"a": (2, 3), "b": (4,)}
    assert _reason(TopKInt8Codec(), tensors, shapes) == "bad_index"
    tensors["a.idx"] = torch.tensor([0, 5]).to(torch.uint16)
    out = TopKInt8Codec().decode(tensors, {}, shapes)
    assert out["a"].flatten().tolist() == [1, 0, 0, 0, 0, 1]
    assert out["b"].tolist() == [0, 1, 0, 0]


def test_topk_int8_values_sends_the_same_update_as_topk_int8() -> None:
    """``topk`` with int8 values and per-tensor scales chooses and rounds exactly as the
    original ``topk_int8`` (only the index encoding and the layout differ), so a federation
    learns the same with either and the benchmark of one stands for the other's accuracy."""
    delta = _delta(4)
    residual = {n: torch.randn(t.shape, generator=torch.Generator().manual_seed(5)) * 0.1
                for n, t in delta.items()}
    old, new = TopKInt8Codec(ratio=0.2), get_codec("topk", ratio=0.2, values="int8")
    enc_old, enc_new = old.encode(delta, residual), new.encode(delta, residual)
    shapes = _shapes(delta)
    dec_old = old.decode(unpack(pack({}, enc_old.tensors)).tensors, enc_old.meta, shapes)
    dec_new = new.decode(unpack(pack({}, enc_new.tensors)).tensors, enc_new.meta, shapes)
    for name in delta:
        assert torch.equal(dec_old[name], dec_new[name])
        assert torch.equal(enc_old.residual[name], enc_new.residual[name])
    assert len(pack({}, enc_new.tensors)) < len(pack({}, enc_old.tensors))
