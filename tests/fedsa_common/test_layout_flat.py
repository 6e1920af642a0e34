"""Decoded updates keep their flat vector (fedsa_common/wire/codecs/layout.py): whatever
reads a whole update (max|value|, the L2 norm, a running sum) gets exactly what it got name
by name, and a mapping changed after decoding never passes for its old vector."""

from __future__ import annotations

import pytest
import torch

from fedsa_common.privacy.dp import l2_norm
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.codecs.layout import FlatViews, Layout, flat_of
from hub.aggregation import RunningSum
from hub.aggregator import max_abs

SHAPES = {"b.lora_A.weight": (4, 6), "a.lora_A.weight": (3, 5), "c.lora_A.weight": (7,)}


def decoded(seed: int = 0) -> FlatViews:
    g = torch.Generator().manual_seed(seed)
    delta = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    codec = get_codec("topk", ratio=0.5, values="int8")
    enc = codec.encode(delta)
    out = codec.decode(enc.tensors, enc.meta, SHAPES)
    assert isinstance(out, FlatViews)
    return out


def test_every_decoder_returns_views_of_its_flat_vector() -> None:
    layout = Layout.of(SHAPES)
    g = torch.Generator().manual_seed(1)
    delta = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    for name, params in [("dense", {}), ("topk_int8", {"ratio": 0.5}),
                         ("topk", {"ratio": 0.5, "values": "int8"}),
                         ("randk", {"ratio": 0.5, "values": "int8", "seed": 3})]:
        codec = get_codec(name, **params)
        enc = codec.encode(delta)
        out = codec.decode(enc.tensors, enc.meta, SHAPES)
        flat = flat_of(out, layout)
        assert flat is not None, name
        assert torch.equal(flat, layout.flatten(dict(out))), name


def test_whole_update_reductions_equal_the_name_by_name_ones() -> None:
    out = decoded()
    plain = dict(out)  # a plain dict: the name-by-name path
    assert flat_of(plain) is None
    assert max_abs(out) == max_abs(plain)
    assert l2_norm(out) == l2_norm(plain)
    a, b = RunningSum.zeros(SHAPES), RunningSum.zeros(SHAPES)
    for seed in range(3):
        a.add(decoded(seed), 2.5)
        b.add(dict(decoded(seed)), 2.5)
    assert all(torch.equal(a.sums[n], b.sums[n]) for n in SHAPES)


def test_a_changed_mapping_drops_its_flat_vector() -> None:
    for change in [lambda d: d.__setitem__("a.lora_A.weight", torch.zeros(3, 5)),
                   lambda d: d.pop("c.lora_A.weight"),
                   lambda d: d.update({"c.lora_A.weight": torch.zeros(7)}),
                   lambda d: d.__delitem__("a.lora_A.weight"),
                   lambda d: d.setdefault("x", torch.zeros(1)),
                   lambda d: d.popitem(), lambda d: d.clear(),
                   lambda d: d.__ior__({"c.lora_A.weight": torch.zeros(7)})]:
        out = decoded()
        change(out)
        assert flat_of(out) is None
    out = decoded()
    out["a.lora_A.weight"].mul_(0.0)  # in place, through the view: the vector follows
    flat = flat_of(out)
    assert flat is not None and max_abs(out) == max_abs(dict(out))


def test_a_flat_vector_of_another_layout_is_not_taken() -> None:
    out = decoded()
    other = Layout.of({"a.lora_A.weight": (15,), "b.lora_A.weight": (24,),
                       "c.lora_A.weight": (7,)})
    assert flat_of(out, other) is None and flat_of(out, Layout.of(SHAPES)) is not None
    with pytest.raises(ValueError):  # the running sum then checks the names as before
        RunningSum.zeros({"z": (46,)}).add(out, 1.0)
