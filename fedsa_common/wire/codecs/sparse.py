"""``topk`` and ``randk``: a sparsifier, a value format, an index encoding, optional zstd.

The selection is per parameter tensor, exactly as if each were sent on its own: tensor
``i`` sends ``k_i = topk_count(numel_i, ratio)`` coordinates, its ``k_i`` largest
magnitudes (topk) or ``k_i`` positions drawn from the round's seed and its name (randk).
Only the wire layout is flat: the parameters are laid end to end in sorted-name order
(``fedsa_common.wire.codecs.layout``), ``K = sum k_i`` values are sent in all, and the body holds at
most three tensors for the whole update:

* ``val``: the K sent values in flat-position order (tensor by tensor, positions
  increasing within each); float32 [K] (fp32), float16 [K] (fp16), int8 [K] (int8) or
  uint8 [ceil(K/2)] (int4, two per byte); see ``values``.
* ``scale``: float32 for int8/int4, one per tensor (``block_size`` None) or one per block
  of ``block_size`` sent values within each tensor (blocks never span two tensors).
* topk only, and only when K < total: ``idx.varint`` or ``idx.bitmap`` (uint8) over flat
  positions, whichever is smaller; see ``indices``.  randk sends no index: the positions
  follow from the round's seed (memoised per layout, ratio and seed, since a hub decodes
  every update of a round against the same support).

Why flat: a regional hub decodes every update of every device, and per tensor the cost
was a dozen small operations and a ~100-byte safetensors header entry, whatever the
tensor's size (a third of a small update's bytes).  Flat, decoding validates, dequantizes
and scatters a whole update in a fixed number of operations and returns views of one
float32 vector (``Layout.split``), which the hub's running sum folds in with one addition.

With ``zstd`` the whole body above becomes one uint8 tensor ``zstd``; see ``zbody``.
``codec_meta`` is ``{}``: everything the decoder needs is in the announced parameters.
Both are lossy with error feedback: what is not sent, and the rounding error of what is,
stays in the device's residual and is added to the next round's delta.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedsa_common.wire.codecs.common import (
    EncodedDelta,
    accumulate,
    check_meta,
    check_ratio,
    require_tensor,
)
from fedsa_common.wire.codecs.indices import (
    INDEX_KINDS,
    INDEX_TENSORS,
    MAX_VARINT_BYTES,
    bitmap_len,
    check_counts,
    decode_support,
    encode_support,
)
from fedsa_common.wire.codecs.layout import Layout
from fedsa_common.wire.codecs.sparsify import SEED_LIMIT, randk_support, topk_count, topk_support
from fedsa_common.wire.codecs.values import (
    SCALE_TENSOR,
    VAL_TENSOR,
    VALUE_FORMATS,
    block_index,
    dequantize,
    is_scaled,
    quantize,
    value_bytes,
)
from fedsa_common.wire.codecs.zbody import compress_body, decompress_body
from fedsa_common.wire.errors import WireError

_INT32_MAX = 2**31 - 1
_ST_ENTRY_BYTES = 160  # safetensors header bytes per tensor, beyond its name (generous)
MAX_BODY_TENSORS = 3  # val, scale, one index


@dataclass(frozen=True, eq=False)
class Plan:
    """What the announced ratio implies for one layout: ``counts[i]`` values from tensor
    ``i``, ``k`` in all; ``bounds`` are the tensors' flat ranges (offsets, then total)."""

    layout: Layout
    counts: tuple[int, ...]
    k: int
    counts_np: np.ndarray
    bounds: np.ndarray

    @property
    def sends_all(self) -> bool:
        return self.k == self.layout.total


@lru_cache(maxsize=64)
def plan(layout: Layout, ratio: float) -> Plan:
    """The per-tensor counts of ``layout`` at ``ratio`` (memoised: a hub asks every update)."""
    counts = tuple(topk_count(n, ratio) for n in layout.numels)
    bounds = np.array([*layout.offsets, layout.total], dtype=np.int64)
    return Plan(layout, counts, sum(counts), np.array(counts, dtype=np.int64), bounds)


@lru_cache(maxsize=64)
def randk_flat_support(layout: Layout, ratio: float, seed: int) -> Tensor:
    """Flat sorted int64 positions of the random-k support of every tensor of ``layout``.

    Memoised, since every update of a round is decoded against it; the tensor is shared,
    so callers only index with it.
    """
    p = plan(layout, ratio)
    parts = [randk_support(numel, k, seed, name) + offset for name, numel, offset, k in
             zip(layout.names, layout.numels, layout.offsets, p.counts, strict=True)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


@dataclass(frozen=True, kw_only=True)
class SparseCodec:
    """What ``topk`` and ``randk`` share; subclasses choose the support."""

    ratio: float = 0.1
    values: str = "int8"
    block_size: int | None = None
    zstd: bool = False
    name: str = field(default="sparse", init=False)
    sends_indices: bool = field(default=True, init=False)  # randk: positions from the seed

    def __post_init__(self) -> None:
        check_ratio(self.name, self.ratio)
        if self.values not in VALUE_FORMATS:
            raise ValueError(f"{self.name} values must be one of {VALUE_FORMATS}, "
                             f"got {self.values!r}")
        bs = self.block_size
        if bs is not None:
            if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
                raise ValueError(f"{self.name} block_size must be a positive integer or None, "
                                 f"got {bs!r}")
            if not is_scaled(self.values):
                raise ValueError(f"{self.name} block_size applies to int8/int4 values only")
        if not isinstance(self.zstd, bool):
            raise ValueError(f"{self.name} zstd must be true or false, got {self.zstd!r}")

    # -- what subclasses decide ------------------------------------------------------
    def support(self, flat: Tensor | None, numel: int, k: int, name: str) -> Tensor:
        """Sorted int64 positions to send of one tensor; ``flat`` is None when decoding."""
        raise NotImplementedError

    def flat_support(self, flat: Tensor | None, p: Plan) -> Tensor:
        """Sorted int64 flat positions of the whole update: each tensor's support, shifted
        by its offset (``flat`` is the update's flat vector, None when decoding)."""
        layout = p.layout
        parts = []
        for name, numel, offset, k in zip(layout.names, layout.numels, layout.offsets,
                                          p.counts, strict=True):
            part = None if flat is None else flat[offset:offset + numel]
            local = torch.arange(numel) if k == numel else self.support(part, numel, k, name)
            parts.append(local + offset)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    # -- encode (device) -------------------------------------------------------------
    def encode(
        self, delta: Mapping[str, Tensor], residual: Mapping[str, Tensor] | None = None
    ) -> EncodedDelta:
        acc = accumulate(delta, residual)
        layout = Layout.of({n: tuple(t.shape) for n, t in acc.items()})
        if layout.total > _INT32_MAX:
            raise ValueError(f"{layout.total} elements in all; too many to address")
        p = plan(layout, float(self.ratio))
        flat = layout.flatten(acc)  # a fresh vector: becomes the new residual in place
        positions = None if p.sends_all else self.flat_support(flat, p)
        picked = flat if positions is None else flat[positions]
        q = quantize(picked, self.values, self.block_size, p.counts)
        if positions is None:
            flat -= q.sent
        else:
            flat[positions] = picked - q.sent
        wire: dict[str, Tensor] = {VAL_TENSOR: q.wire}
        if q.scale is not None:
            wire[SCALE_TENSOR] = q.scale
        if self.sends_indices and positions is not None:
            encoded = encode_support(positions, layout.total)
            if encoded is not None:
                wire[INDEX_TENSORS[encoded[0]]] = encoded[1]
        if self.zstd:
            wire = compress_body(wire)
        return EncodedDelta(tensors=wire, meta={}, residual=layout.split(flat))

    # -- decode (hub, untrusted input) -----------------------------------------------
    def decode(
        self,
        tensors: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        expected_shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, Tensor]:
        """Validate the whole update, then dequantize and scatter it at once: a fixed
        number of tensor operations, whatever the number of parameters."""
        check_meta(meta)
        layout = Layout.of(expected_shapes)
        if layout.total > _INT32_MAX:
            raise WireError("too_large", f"{layout.total} elements in all; too many to address")
        p = plan(layout, float(self.ratio))
        if self.zstd:
            tensors = decompress_body(tensors, self._body_limit(p),
                                      max_tensors=MAX_BODY_TENSORS)
        index_key = self._check_names(tensors, p)
        sent = dequantize(tensors[VAL_TENSOR], tensors.get(SCALE_TENSOR), self.values,
                          p.counts, self.block_size)
        out = layout.zeros()
        if p.sends_all:
            out.copy_(sent)
        else:
            out[self._decode_support(tensors, index_key, p)] = sent
        return layout.views(out)

    def _decode_support(self, tensors: Mapping[str, Tensor], index_key: str | None,
                        p: Plan) -> Tensor:
        if not self.sends_indices:
            return self.flat_support(None, p)
        assert index_key is not None  # _check_names requires one
        kind = index_key.removeprefix("idx.")
        positions = decode_support(index_key, kind, require_tensor(index_key,
                                                                   tensors[index_key]),
                                   p.layout.total, p.k)
        check_counts(index_key, positions, p.bounds, p.counts_np, p.layout.names)
        return positions

    def _check_names(self, tensors: Mapping[str, Any], p: Plan) -> str | None:
        """Exactly ``val``, ``scale`` when scaled, and one index kind when an index is due;
        returns the index's name."""
        required = {VAL_TENSOR, SCALE_TENSOR} if is_scaled(self.values) else {VAL_TENSOR}
        missing = required - set(tensors)
        if missing:
            raise WireError("missing_tensor", f"missing {sorted(missing)}")
        index_key = None
        if self.sends_indices and not p.sends_all:
            present = [INDEX_TENSORS[kind] for kind in INDEX_KINDS
                       if INDEX_TENSORS[kind] in tensors]
            if not present:
                raise WireError("missing_tensor", "missing the index")
            if len(present) > 1:
                raise WireError("unexpected_tensor", "two indices")
            index_key = present[0]
        if len(tensors) != len(required) + (index_key is not None):
            extra = set(tensors) - required - {index_key}
            raise WireError("unexpected_tensor", f"unexpected {sorted(extra)[:5]}")
        return index_key

    def body_limit(self, expected_shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Largest body a well-formed update of these shapes can have (bounds zstd)."""
        return self._body_limit(plan(Layout.of(expected_shapes), float(self.ratio)))

    def _body_limit(self, p: Plan) -> int:
        total = 1024 + value_bytes(p.k, self.values) + 3 * (16 + _ST_ENTRY_BYTES)
        if is_scaled(self.values):
            total += 4 * block_index(p.counts, self.block_size)[1]
        if self.sends_indices and not p.sends_all:
            total += max(MAX_VARINT_BYTES * p.k, bitmap_len(p.layout.total))
        return total


@dataclass(frozen=True, kw_only=True)
class TopKCodec(SparseCodec):
    """The k largest magnitudes of each tensor of ``delta + residual``; positions travel
    as one flat index."""

    name: str = field(default="topk", init=False)

    def support(self, flat: Tensor | None, numel: int, k: int, name: str) -> Tensor:
        if flat is None:
            raise ValueError("top-k positions come from the values, not from a seed")
        return topk_support(flat, k)


@dataclass(frozen=True, kw_only=True)
class RandKCodec(SparseCodec):
    """k coordinates of each tensor drawn from the round's seed, the same on every device
    of the round; no indices travel.  ``seed`` is the round's (``sparsify.round_seed``)."""

    seed: int
    name: str = field(default="randk", init=False)
    sends_indices: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT:
            raise ValueError(f"randk seed must be an integer in [0, 2**63), got {s!r}")

    def support(self, flat: Tensor | None, numel: int, k: int, name: str) -> Tensor:
        return randk_support(numel, k, self.seed, name)

    def flat_support(self, flat: Tensor | None, p: Plan) -> Tensor:
        return randk_flat_support(p.layout, float(self.ratio), self.seed)
