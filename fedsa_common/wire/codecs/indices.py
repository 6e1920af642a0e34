"""How top-k positions travel: delta-varint or bitmap over the whole update's flat vector.

Positions are *flat*: the parameter tensors are laid end to end in sorted-name order
(``fedsa_common.wire.codecs.layout``) and a position is an offset into that vector, so one
index tensor serves the whole update (one safetensors entry, a fixed number of operations to decode)
instead of one per parameter.  The selection itself stays per tensor; the index only says
where the picked coordinates lie.

* ``idx.varint``: the first position, then the gaps to each next position (>= 1), each as
  an unsigned LEB128 varint (7 bits per byte, low bits first, high bit = more bytes
  follow).  About one byte per position when positions are dense enough that gaps stay
  below 128.
* ``idx.bitmap``: ``ceil(total / 8)`` bytes, bit ``j`` of byte ``i`` (least significant
  first) set when position ``8 i + j`` is sent; the bits past ``total`` are zero.

The smaller of the two travels (the bitmap on a tie); when every coordinate is sent no
index travels at all.  Decoding validates everything a hostile sender controls: truncated,
overlong or non-canonical varints, zero gaps (positions not strictly increasing),
positions past the vector, bitmap length, padding bits, the total count, which must equal
the ``K`` the announced ratio implies, and (``check_counts``) the count in each tensor's
range, which must equal that tensor's ``k``: a position moved from one tensor into the
next would otherwise pass every other check.

The byte work is done in NumPy, whose per-call cost is a few times lower than torch's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fedsa_common.wire.errors import WireError

INDEX_KINDS: tuple[str, ...] = ("varint", "bitmap")
INDEX_TENSORS: dict[str, str] = {kind: f"idx.{kind}" for kind in INDEX_KINDS}
MAX_VARINT_BYTES = 5  # 35 bits: enough for any position of an int32-addressable vector


def varint_encode(values: Tensor) -> Tensor:
    """Non-negative int64 values -> concatenated unsigned LEB128 bytes (uint8)."""
    v = values.to(torch.int64).numpy()
    if v.size == 0:
        return torch.zeros(0, dtype=torch.uint8)
    if int(v.min()) < 0 or int(v.max()) >= 2 ** (7 * MAX_VARINT_BYTES):
        raise ValueError("varint values must be in [0, 2**35)")
    nbytes = np.ones_like(v)
    rest = v >> 7
    while rest.any():
        nbytes += rest > 0
        rest >>= 7
    starts = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for j in range(int(nbytes.max())):
        has = nbytes > j
        more = (nbytes[has] - 1 > j).astype(np.int64) << 7
        out[starts[has] + j] = ((v[has] >> (7 * j)) & 0x7F) | more
    return torch.from_numpy(out)


def varint_decode(name: str, data: Tensor, count: int) -> Tensor:
    """uint8 LEB128 bytes -> exactly ``count`` int64 values, every byte consumed."""
    raw = data.numpy()
    if raw.size == 0:
        if count:
            raise WireError("bad_index", f"{name!r}: 0 varints, expected {count}")
        return torch.zeros(0, dtype=torch.int64)
    if int(raw.max()) < 0x80:  # the common case: every value below 128, one byte each
        if raw.size != count:
            raise WireError("bad_index", f"{name!r}: {raw.size} varints, expected {count}")
        return torch.from_numpy(raw.astype(np.int64))
    b = raw.astype(np.int64)
    last = (b & 0x80) == 0
    if not last[-1]:
        raise WireError("bad_varint", f"{name!r}: truncated varint at the end")
    ends = np.flatnonzero(last)
    if ends.size != count:
        raise WireError("bad_index", f"{name!r}: {ends.size} varints, expected {count}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > MAX_VARINT_BYTES:
        raise WireError("bad_varint", f"{name!r}: varint longer than {MAX_VARINT_BYTES} bytes")
    if bool(((lengths > 1) & (b[ends] == 0)).any()):
        raise WireError("bad_varint", f"{name!r}: non-canonical varint (trailing zero byte)")
    which = np.cumsum(last) - last
    shift = 7 * (np.arange(b.size) - starts[which])
    return torch.from_numpy(np.add.reduceat((b & 0x7F) << shift, starts))


def bitmap_len(numel: int) -> int:
    return math.ceil(numel / 8)


def encode_support(support: Tensor, numel: int) -> tuple[str, Tensor] | None:
    """(kind, uint8 bytes) for sorted positions in a vector of ``numel`` elements, the
    smaller of the two encodings (bitmap on a tie: its size is fixed); None when every
    coordinate is sent."""
    if support.numel() == numel:
        return None
    gaps = torch.diff(support, prepend=torch.zeros(1, dtype=torch.int64))
    varint = varint_encode(gaps)
    if varint.numel() < bitmap_len(numel):
        return "varint", varint
    bits = np.zeros(bitmap_len(numel) * 8, dtype=np.uint8)
    bits[support.numpy()] = 1
    return "bitmap", torch.from_numpy(np.packbits(bits, bitorder="little"))


def decode_support(name: str, kind: str, data: Tensor, numel: int, k: int) -> Tensor:
    """Validated, strictly increasing int64 positions in ``[0, numel)``, exactly ``k``."""
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise WireError("bad_tensor", f"{name!r}: indices must be 1-D uint8")
    if kind == "varint":
        gaps = varint_decode(name, data, k).numpy()
        if k > 1 and int(gaps[1:].min()) < 1:
            raise WireError("bad_index", f"{name!r}: positions not strictly increasing")
        if k and int(gaps.max()) >= numel:  # also keeps the cumulative sum from overflowing
            raise WireError("bad_index", f"{name!r}: position out of range [0, {numel})")
        positions = np.cumsum(gaps)
        if k and int(positions[-1]) >= numel:
            raise WireError("bad_index", f"{name!r}: position out of range [0, {numel})")
        return torch.from_numpy(positions)
    if kind == "bitmap":
        if data.numel() != bitmap_len(numel):
            raise WireError(
                "shape_mismatch", f"{name!r}: bitmap of {data.numel()} bytes, "
                f"expected {bitmap_len(numel)}"
            )
        bits = np.unpackbits(data.numpy(), bitorder="little")
        if bits[numel:].any():
            raise WireError("bad_index", f"{name!r}: bitmap bits set past {numel}")
        positions = np.flatnonzero(bits[:numel])
        if positions.size != k:
            raise WireError("bad_index", f"{name!r}: {positions.size} positions, expected {k}")
        return torch.from_numpy(positions.astype(np.int64))
    raise WireError("bad_index", f"{name!r}: unknown index kind {kind!r}")


def check_counts(name: str, positions: Tensor, bounds: np.ndarray, counts: np.ndarray,
                 segments: Sequence[str] | None = None) -> None:
    """Refuse sorted ``positions`` unless exactly ``counts[i]`` lie in segment ``i``, which
    spans ``[bounds[i], bounds[i + 1])`` (``bounds`` int64, ``len(counts) + 1`` entries;
    ``segments`` names them in messages).  One search over the whole update, whatever the
    number of segments."""
    per_segment = np.diff(np.searchsorted(positions.numpy(), bounds))
    if not np.array_equal(per_segment, counts):
        bad = int(np.flatnonzero(per_segment != counts)[0])
        which = repr(segments[bad]) if segments is not None else f"segment {bad}"
        raise WireError("bad_index", f"{name!r}: {int(per_segment[bad])} positions in "
                        f"{which}, expected {int(counts[bad])}")
