"""How the values of the sent coordinates travel: fp32, fp16, int8 or packed int4.

int8 and int4 are symmetric: a scale per tensor (``block_size=None``) or per block of
``block_size`` consecutive sent values is ``max|v| / qmax`` and a value travels as
``round(v / scale)`` in ``[-qmax, qmax]`` (127 or 7), so the error of every sent value is at
most half its block's scale.  Smaller blocks cost 4 bytes of scale each but follow the
local magnitude, which matters most for int4.  int4 packs two values per byte, the first in
the low nibble, each stored as ``q + 8`` (1..15); an odd count leaves the last high nibble 0.
The receiver reconstructs exactly the float32 values the sender computed as sent, which
keeps the sender's error feedback exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fedsa_common.errors import WireError
from quant.codecs.common import require_dtype, require_finite, require_shape, require_tensor

ValueFormat = Literal["fp32", "fp16", "int8", "int4"]
VALUE_FORMATS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
QMAX: dict[str, int] = {"int8": 127, "int4": 7}
FP16_MAX = 65504.0
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
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
    """Scales sent for ``k`` values: one per tensor, or one per started block."""
    if k == 0:
        return 0
    return 1 if block_size is None else math.ceil(k / block_size)


def value_bytes(k: int, fmt: str) -> int:
    """Bytes of the ``.val`` tensor for ``k`` values."""
    return {"fp32": 4 * k, "fp16": 2 * k, "int8": k, "int4": (k + 1) // 2}[fmt]


def _blocks(values: Tensor, block_size: int | None) -> Tensor:
    """``values`` (1-D, k) zero-padded and reshaped to [num_blocks, block_len]."""
    k = values.numel()
    length = k if block_size is None else block_size
    n = num_blocks(k, block_size)
    padded = torch.zeros(n * length, dtype=values.dtype)
    padded[:k] = values
    return padded.reshape(n, length)


def _rescale(q: Tensor, scale: Tensor, block_size: int | None) -> Tensor:
    """float32 ``q * scale`` per block: the one formula both ends use (a single block, the
    common case, skips the padding)."""
    k = q.numel()
    if scale.numel() == 1:
        return q.to(torch.float32) * scale[0]
    return (_blocks(q.to(torch.float32), block_size) * scale[:, None]).reshape(-1)[:k]


def quantize(values: Tensor, fmt: str, block_size: int | None = None) -> Quantized:
    """Encode 1-D float32 ``values`` (device side; ValueError on misuse)."""
    if fmt not in VALUE_FORMATS:
        raise ValueError(f"unknown value format {fmt!r}; allowed: {', '.join(VALUE_FORMATS)}")
    values = values.to(torch.float32).reshape(-1)
    if fmt == "fp32":
        return Quantized(values.clone(), None, values.clone())
    if fmt == "fp16":
        half = values.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
        return Quantized(half, None, half.to(torch.float32))
    qmax = QMAX[fmt]
    blocks = _blocks(values, block_size)
    scale = blocks.abs().amax(dim=1) / qmax if blocks.numel() else torch.zeros(blocks.shape[0])
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(blocks / safe[:, None]).clamp_(-qmax, qmax)
    q = torch.where(scale[:, None] > 0, q, torch.zeros_like(q)).reshape(-1)[: values.numel()]
    q8 = q.to(torch.int8)
    wire = q8 if fmt == "int8" else pack_int4(q8)
    return Quantized(wire, scale.to(torch.float32), _rescale(q8, scale, block_size))


def pack_int4(q: Tensor) -> Tensor:
    """int8 values in [-7, 7] -> uint8, two per byte (first in the low nibble)."""
    nibbles = (q.to(torch.int16) + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, torch.zeros(1, dtype=torch.uint8)])
    pairs = nibbles.reshape(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(name: str, packed: Tensor, k: int) -> Tensor:
    """uint8 packed nibbles -> int8 values, refusing nibble 0 (-8, outside [-7, 7]) in a
    value position and anything but 0 in the padding nibble."""
    require_shape(name, packed, ((k + 1) // 2,))
    nibbles = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1)
    if k % 2 and int(nibbles[-1]) != 0:
        raise WireError("bad_value", f"{name!r}: padding nibble is not zero")
    nibbles = nibbles[:k]
    if k and bool((nibbles == 0).any()):
        raise WireError("bad_value", f"{name!r}: int4 value outside [-7, 7]")
    return (nibbles.to(torch.int16) - 8).to(torch.int8)


def dequantize(
    name: str, wire: object, scale: object, fmt: str, k: int, block_size: int | None
) -> Tensor:
    """Validate untrusted ``wire`` (and ``scale``) for ``k`` values; return float32 [k].

    Raises only WireError: wrong dtype or length, out-of-range integers, NaN/inf, a
    negative scale, or a product that overflows float32.
    """
    val_name, scale_name = f"{name}.val", f"{name}.scale"
    wire_t = require_tensor(val_name, wire)
    require_dtype(val_name, wire_t, _WIRE_DTYPE[fmt])
    if fmt in ("fp32", "fp16"):
        require_shape(val_name, wire_t, (k,))
        out = wire_t.to(torch.float32)
        require_finite(val_name, out)
        return out
    if fmt == "int8":
        require_shape(val_name, wire_t, (k,))
        if k and int(wire_t.min()) < -QMAX["int8"]:
            raise WireError("bad_value", f"{val_name!r}: int8 value -128 outside [-127, 127]")
        q = wire_t
    else:
        q = unpack_int4(val_name, wire_t, k)
    scale_t = require_tensor(scale_name, scale)
    require_dtype(scale_name, scale_t, torch.float32)
    require_shape(scale_name, scale_t, (num_blocks(k, block_size),))
    if scale_t.numel():
        # max/min propagate NaN; a scale above FLOAT32_MAX / qmax could overflow a value,
        # and no sender computes one (its scale is max|v| / qmax).
        low, high = float(scale_t.min()), float(scale_t.max())
        if not (math.isfinite(low) and math.isfinite(high)) or high * QMAX[fmt] > FLOAT32_MAX:
            raise WireError("non_finite", f"{scale_name!r} is NaN, inf or too large")
        if low < 0.0:
            raise WireError("bad_value", f"{scale_name!r} is negative")
    return _rescale(q, scale_t, block_size)
