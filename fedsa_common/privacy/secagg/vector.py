"""The flat vector a device masks: its A-delta (dense) or its random-k values (randk).

Masked vectors are summed coordinate by coordinate, so every device of a round must put
the same coordinate in the same slot.  ``dense`` sends every element; ``randk`` sends the
values at positions drawn from the round's shared seed (``fedsa_common.wire.codecs.sparsify``), the
same on every device, so the vector is just the concatenation of those values.  Top-k
codecs choose positions per device and cannot be summed while masked: they are refused.

Values travel as fixed-point words (``fixed_point``), so a codec's int8/int4/fp16 value
format and zstd do not apply; only the support (which positions) comes from the codec.
Parameters are laid out as the codecs lay them out (``fedsa_common.wire.codecs.layout``:
sorted names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedsa_common.wire.codecs.layout import Layout
from fedsa_common.wire.codecs.sparsify import randk_support, topk_count

SUPPORTED_CODECS: tuple[str, ...] = ("dense", "randk")


def _check_codec(codec: str) -> None:
    if codec not in SUPPORTED_CODECS:
        raise ValueError(f"secure aggregation requires codec randk or dense, not {codec!r}")


def travelling(shapes: Mapping[str, tuple[int, ...]], codec: str, params: Mapping[str, Any]
               ) -> tuple[Layout, Tensor | None]:
    """The parameters' flat layout (the codecs' own, ``fedsa_common.wire.codecs.layout``) and
    the sorted int64 positions in it that travel: None for dense (all of them), the round's random-k
    support of each tensor, shifted to its place in the flat vector, for randk."""
    _check_codec(codec)
    lay = Layout.of(shapes)
    if codec == "dense":
        return lay, None
    ratio, seed = float(params["ratio"]), int(params["seed"])
    parts = [offset + randk_support(numel, topk_count(numel, ratio), seed, name)
             for name, numel, offset in zip(lay.names, lay.numels, lay.offsets, strict=True)]
    return lay, torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def vector_length(shapes: Mapping[str, tuple[int, ...]], codec: str,
                  params: Mapping[str, Any]) -> int:
    lay, positions = travelling(shapes, codec, params)
    return lay.total if positions is None else int(positions.numel())


def _flat(delta: Mapping[str, Tensor], lay: Layout) -> Tensor:
    """float64 flat copy of ``delta``, whose names and shapes must be the layout's."""
    if set(delta) != set(lay.names):
        raise ValueError(f"delta names {sorted(delta)} differ from {sorted(lay.names)}")
    for name, shape in zip(lay.names, lay.shapes, strict=True):
        if tuple(delta[name].shape) != shape:
            raise ValueError(f"{name!r} shape {tuple(delta[name].shape)} != {shape}")
    return lay.flatten({n: t.detach().to("cpu") for n, t in delta.items()}, torch.float64)


def gather(delta: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], codec: str,
           params: Mapping[str, Any]) -> Tensor:
    """float64 flat vector of the travelling coordinates of ``delta`` (device side)."""
    lay, positions = travelling(shapes, codec, params)
    flat = _flat(delta, lay)
    return flat if positions is None else flat[positions]


def _expand(flat: Tensor, lay: Layout, positions: Tensor | None) -> Tensor:
    """The full float64 flat vector with ``flat`` at ``positions`` and zero elsewhere."""
    expected = lay.total if positions is None else int(positions.numel())
    if flat.numel() != expected:
        raise ValueError(f"vector of {flat.numel()} values, layout needs {expected}")
    if positions is None:
        return flat.to(torch.float64).clone()
    dense = lay.zeros(torch.float64)
    dense[positions] = flat.to(torch.float64)
    return dense


def scatter(flat: Tensor, shapes: Mapping[str, tuple[int, ...]], codec: str,
            params: Mapping[str, Any]) -> dict[str, Tensor]:
    """Inverse of :func:`gather`: float64 tensors of ``shapes``, zero where nothing travels
    (the hub expands the unmasked sum exactly as the randk decoder expands one update)."""
    lay, positions = travelling(shapes, codec, params)
    return lay.split(_expand(flat, lay, positions))


def residual(delta: Mapping[str, Tensor], sent: Tensor, shapes: Mapping[str, tuple[int, ...]],
             codec: str, params: Mapping[str, Any]) -> dict[str, Tensor]:
    """float32 error feedback: ``delta`` minus what was effectively sent (``sent`` is the
    flat vector of sent values, e.g. ``FixedPoint.sent``), per parameter."""
    lay, positions = travelling(shapes, codec, params)
    res = _flat(delta, lay) - _expand(sent, lay, positions)
    return lay.split(res.to(torch.float32))
