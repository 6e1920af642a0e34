"""The flat vector a device masks: its A-delta (dense) or its random-k values (randk).

Masked vectors are summed coordinate by coordinate, so every device of a round must put
the same coordinate in the same slot.  ``dense`` sends every element; ``randk`` sends the
values at positions drawn from the round's shared seed (``quant.codecs.sparsify``), the
same on every device, so the vector is just the concatenation of those values.  Top-k
codecs choose positions per device and cannot be summed while masked: they are refused.

Values travel as fixed-point words (``fixed_point``), so a codec's int8/int4/fp16 value
format and zstd do not apply; only the support (which positions) comes from the codec.
Parameters are laid out in sorted name order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from quant.codecs.sparsify import randk_support, topk_count

SUPPORTED_CODECS: tuple[str, ...] = ("dense", "randk")


def _check_codec(codec: str) -> None:
    if codec not in SUPPORTED_CODECS:
        raise ValueError(f"secure aggregation requires codec randk or dense, not {codec!r}")


def _positions(name: str, numel: int, codec: str, params: Mapping[str, Any]) -> Tensor:
    """Sorted int64 positions of ``name`` that travel (all of them for dense)."""
    if codec == "dense":
        return torch.arange(numel)
    k = topk_count(numel, float(params["ratio"]))
    return randk_support(numel, k, int(params["seed"]), name)


def layout(shapes: Mapping[str, tuple[int, ...]], codec: str, params: Mapping[str, Any]
           ) -> list[tuple[str, tuple[int, ...], Tensor]]:
    """(name, shape, positions) in vector order."""
    _check_codec(codec)
    return [(n, tuple(shapes[n]), _positions(n, math.prod(shapes[n]), codec, params))
            for n in sorted(shapes)]


def vector_length(shapes: Mapping[str, tuple[int, ...]], codec: str,
                  params: Mapping[str, Any]) -> int:
    return sum(int(p.numel()) for _, _, p in layout(shapes, codec, params))


def gather(delta: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], codec: str,
           params: Mapping[str, Any]) -> Tensor:
    """float64 flat vector of the travelling coordinates of ``delta`` (device side)."""
    if set(delta) != set(shapes):
        raise ValueError(f"delta names {sorted(delta)} differ from {sorted(shapes)}")
    parts = []
    for name, shape, pos in layout(shapes, codec, params):
        t = delta[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{name!r} shape {tuple(t.shape)} != {shape}")
        parts.append(t.detach().to("cpu", torch.float64).reshape(-1)[pos])
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def scatter(flat: Tensor, shapes: Mapping[str, tuple[int, ...]], codec: str,
            params: Mapping[str, Any]) -> dict[str, Tensor]:
    """Inverse of :func:`gather`: float64 tensors of ``shapes``, zero where nothing travels
    (the hub expands the unmasked sum exactly as the randk decoder expands one update)."""
    out: dict[str, Tensor] = {}
    offset = 0
    for name, shape, pos in layout(shapes, codec, params):
        k = int(pos.numel())
        dense = torch.zeros(math.prod(shape), dtype=torch.float64)
        dense[pos] = flat[offset:offset + k].to(torch.float64)
        out[name] = dense.reshape(shape)
        offset += k
    if offset != flat.numel():
        raise ValueError(f"vector of {flat.numel()} values, layout needs {offset}")
    return out


def residual(delta: Mapping[str, Tensor], sent: Tensor, shapes: Mapping[str, tuple[int, ...]],
             codec: str, params: Mapping[str, Any]) -> dict[str, Tensor]:
    """float32 error feedback: ``delta`` minus what was effectively sent (``sent`` is the
    flat vector of sent values, e.g. ``FixedPoint.sent``), per parameter."""
    sent_dense = scatter(sent, shapes, codec, params)
    out: dict[str, Tensor] = {}
    for name, shape, pos in layout(shapes, codec, params):
        res = delta[name].detach().to("cpu", torch.float64).reshape(-1).clone()
        res[pos] -= sent_dense[name].reshape(-1)[pos]
        out[name] = res.reshape(shape).to(torch.float32)
    return out
