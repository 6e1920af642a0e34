"""How the sent values travel: fp32, fp16, int8 or packed int4, for a whole update at once.

The sent values of every parameter tensor of an update are laid end to end, tensor by
tensor in the layout's (sorted name) order, in one wire tensor ``val``; ``counts`` says how
many belong to each tensor (its k).  int8 and int4 are symmetric with a float32 ``scale``
per tensor (``block_size=None``) or per block of ``block_size`` consecutive sent values
*within* a tensor (a tensor's last block may be shorter; blocks never span two tensors, so
each follows one tensor's magnitudes exactly as a per-tensor layout would).  A block's
scale is ``max|v| / qmax`` and a value travels as ``round(v / scale)`` in ``[-qmax, qmax]``
(127 or 7), so the error of every sent value is at most half its block's scale; a zero
block has scale 0 and sends zeros.  Smaller blocks cost 4 bytes of scale each but follow
the local magnitude, which matters most for int4.  int4 packs two values per byte, the
first in the low nibble, each stored as ``q + 8`` (1..15); an odd total leaves one padding
nibble, the very last one, which must be 0.

One flat tensor instead of one per parameter is what makes a hub's decode cheap: the
checks, the unpacking and the rescaling are a fixed number of tensor operations per
update, whatever the number of parameters, and the body has two or three safetensors
header entries instead of two or three per parameter.  The receiver reconstructs exactly
the float32 values the sender computed as sent (``q.to(float32) * scale[block]``, one
formula on both ends), which keeps the sender's error feedback exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fedsa_common.wire.codecs.common import (
    require_dtype,
    require_finite,
    require_shape,
    require_tensor,
)
from fedsa_common.wire.codecs.layout import segment_ids, segment_starts
from fedsa_common.wire.errors import WireError

ValueFormat = Literal["fp32", "fp16", "int8", "int4"]
VALUE_FORMATS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
QMAX: dict[str, int] = {"int8": 127, "int4": 7}
FP16_MAX = 65504.0
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
VAL_TENSOR = "val"
SCALE_TENSOR = "scale"
_WIRE_DTYPE: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "int8": torch.int8,
    "int4": torch.uint8,
}


@dataclass(frozen=True)
class Quantized:
    """``wire`` travels, ``scale`` travels for int8/int4, ``sent`` is what the receiver
    will reconstruct (float32, bit for bit)."""

    wire: Tensor
    scale: Tensor | None
    sent: Tensor


def is_scaled(fmt: str) -> bool:
    return fmt in QMAX


def num_blocks(k: int, block_size: int | None) -> int:
    """Scales sent for one tensor's ``k`` values: one per tensor, or one per started block."""
    if k == 0:
        return 0
    return 1 if block_size is None else math.ceil(k / block_size)


def value_bytes(k: int, fmt: str) -> int:
    """Bytes of the ``val`` tensor for ``k`` values in all."""
    return {"fp32": 4 * k, "fp16": 2 * k, "int8": k, "int4": (k + 1) // 2}[fmt]


def _counts(counts: Sequence[int] | int | None, k: int) -> tuple[int, ...]:
    if counts is None:
        return (k,)
    if isinstance(counts, int):
        return (counts,)
    return tuple(int(c) for c in counts)


@lru_cache(maxsize=256)
def block_index(counts: tuple[int, ...], block_size: int | None) -> tuple[Tensor, int]:
    """(block of each of the ``sum(counts)`` values (int64), number of blocks): tensor ``i``
    holds ``counts[i]`` consecutive values and ``num_blocks(counts[i], block_size)`` blocks.

    Memoised: a hub decodes every update of a round with the same counts.  The tensor is
    shared; callers only index with it.
    """
    c = torch.tensor(counts, dtype=torch.int64)
    if block_size is None:
        per_tensor = (c > 0).to(torch.int64)
    else:
        per_tensor = (c + block_size - 1) // block_size
    seg = segment_ids(c)
    block = segment_starts(per_tensor)[seg]
    if block_size is not None:
        block = block + (torch.arange(seg.numel()) - segment_starts(c)[seg]) // block_size
    return block, int(per_tensor.sum())


def quantize(values: Tensor, fmt: str, block_size: int | None = None,
             counts: Sequence[int] | int | None = None) -> Quantized:
    """Encode 1-D float32 ``values``, ``counts[i]`` of them from tensor ``i`` (one tensor
    when ``counts`` is None); device side, ValueError on misuse."""
    if fmt not in VALUE_FORMATS:
        raise ValueError(f"unknown value format {fmt!r}; allowed: {', '.join(VALUE_FORMATS)}")
    values = values.to(torch.float32).reshape(-1)
    cts = _counts(counts, values.numel())
    if sum(cts) != values.numel() or min(cts, default=0) < 0:
        raise ValueError(f"counts {cts[:5]} do not add up to {values.numel()} values")
    if fmt == "fp32":
        return Quantized(values.clone(), None, values.clone())
    if fmt == "fp16":
        half = values.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
        return Quantized(half, None, half.to(torch.float32))
    qmax = QMAX[fmt]
    block, n_blocks = block_index(cts, block_size)
    amax = torch.zeros(n_blocks, dtype=torch.float32).scatter_reduce_(
        0, block, values.abs(), "amax")
    scale = amax / qmax
    per_value = scale[block]
    safe = torch.where(per_value > 0, per_value, torch.ones_like(per_value))
    q = torch.round(values / safe).clamp_(-qmax, qmax)
    q8 = torch.where(per_value > 0, q, torch.zeros_like(q)).to(torch.int8)
    wire = q8 if fmt == "int8" else pack_int4(q8)
    return Quantized(wire, scale, _rescale(q8, scale, block))


def _rescale(q: Tensor, scale: Tensor, block: Tensor) -> Tensor:
    """float32 ``q * scale`` of each value's block: the one formula both ends use."""
    return q.to(torch.float32) * scale[block]


def pack_int4(q: Tensor) -> Tensor:
    """int8 values in [-7, 7] -> uint8, two per byte (first in the low nibble)."""
    nibbles = (q.to(torch.int16) + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, torch.zeros(1, dtype=torch.uint8)])
    pairs = nibbles.reshape(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


# every byte's two values (low nibble first), each nibble - 8; nibble 0 decodes to -8
_INT4_PAIRS = (np.stack([np.arange(256) & 15, np.arange(256) >> 4], axis=1) - 8).astype(np.int8)


def unpack_int4(packed: Tensor, k: int, name: str = VAL_TENSOR) -> Tensor:
    """uint8 packed nibbles -> ``k`` int8 values, refusing nibble 0 (-8, outside [-7, 7]) in
    a value position and anything but 0 in the padding nibble.  A table lookup in NumPy:
    a handful of operations for the whole update."""
    require_shape(name, packed, ((k + 1) // 2,))
    q = _INT4_PAIRS[packed.numpy()].reshape(-1)
    if k % 2 and int(q[-1]) != -8:
        raise WireError("bad_value", f"{name!r}: padding nibble is not zero")
    q = q[:k]
    if k and int(q.min()) == -8:
        raise WireError("bad_value", f"{name!r}: int4 value outside [-7, 7]")
    return torch.from_numpy(q)


def dequantize(wire: object, scale: object, fmt: str, counts: Sequence[int] | int,
               block_size: int | None) -> Tensor:
    """Validate untrusted ``val`` (and ``scale``) for ``counts[i]`` values of tensor ``i``;
    return float32 [sum(counts)].

    Raises only WireError: wrong dtype or length, out-of-range integers, NaN/inf, a
    negative scale, or a product that overflows float32.  A fixed number of tensor
    operations, whatever the number of tensors.
    """
    cts = _counts(counts, 0)
    k = sum(cts)
    wire_t = require_tensor(VAL_TENSOR, wire)
    require_dtype(VAL_TENSOR, wire_t, _WIRE_DTYPE[fmt])
    if fmt in ("fp32", "fp16"):
        require_shape(VAL_TENSOR, wire_t, (k,))
        out = wire_t.to(torch.float32)
        require_finite(VAL_TENSOR, out)
        return out
    if fmt == "int8":
        require_shape(VAL_TENSOR, wire_t, (k,))
        if k and int(wire_t.min()) < -QMAX["int8"]:
            raise WireError("bad_value", f"{VAL_TENSOR!r}: int8 value -128 outside [-127, 127]")
        q = wire_t
    else:
        q = unpack_int4(wire_t, k)
    block, n_blocks = block_index(cts, block_size)
    scale_t = require_tensor(SCALE_TENSOR, scale)
    require_dtype(SCALE_TENSOR, scale_t, torch.float32)
    require_shape(SCALE_TENSOR, scale_t, (n_blocks,))
    if n_blocks:
        # max/min propagate NaN; a scale above FLOAT32_MAX / qmax could overflow a value,
        # and no sender computes one (its scale is max|v| / qmax).
        low, high = float(scale_t.min()), float(scale_t.max())
        if not (math.isfinite(low) and math.isfinite(high)) or high * QMAX[fmt] > FLOAT32_MAX:
            raise WireError("non_finite", f"{SCALE_TENSOR!r} is NaN, inf or too large")
        if low < 0.0:
            raise WireError("bad_value", f"{SCALE_TENSOR!r} is negative")
    return _rescale(q, scale_t, block)
