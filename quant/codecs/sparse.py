"""``topk`` and ``randk``: a sparsifier, a value format, an index encoding, optional zstd.

Per parameter ``N`` (k = ``topk_count(numel, ratio)``) the body holds:

* ``N.val``: the k sent values in position order; float32 [k] (fp32), float16 [k]
  (fp16), int8 [k] (int8) or uint8 [ceil(k/2)] (int4, two per byte); see ``values``.
* ``N.scale``: float32 [blocks] for int8/int4 (one per tensor, or one per block of
  ``block_size`` sent values).
* topk only, and only when k < numel: ``N.idx.varint`` or ``N.idx.bitmap`` (uint8),
  whichever is smaller for this tensor; see ``indices``.  randk sends no index: the
  positions follow from the round's seed.

With ``zstd`` the whole body above becomes one uint8 tensor ``zstd``; see ``zbody``.
``codec_meta`` is ``{}``: everything the decoder needs is in the announced parameters.
Both are lossy with error feedback: what is not sent, and the rounding error of what is,
stays in the device's residual and is added to the next round's delta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedsa_common.errors import WireError
from quant.codecs.common import (
    EncodedDelta,
    accumulate,
    check_meta,
    check_ratio,
    require_tensor,
)
from quant.codecs.indices import (
    INDEX_KINDS,
    MAX_VARINT_BYTES,
    bitmap_len,
    decode_support,
    encode_support,
)
from quant.codecs.sparsify import SEED_LIMIT, randk_support, topk_count, topk_support
from quant.codecs.values import (
    VALUE_FORMATS,
    dequantize,
    is_scaled,
    num_blocks,
    quantize,
    value_bytes,
)
from quant.codecs.zbody import compress_body, decompress_body

_INT32_MAX = 2**31 - 1
_ST_ENTRY_BYTES = 160  # safetensors header bytes per tensor, beyond its name (generous)


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
        """Sorted int64 positions to send; ``flat`` is None on the decoding side."""
        raise NotImplementedError

    # -- encode (device) -------------------------------------------------------------
    def encode(
        self, delta: Mapping[str, Tensor], residual: Mapping[str, Tensor] | None = None
    ) -> EncodedDelta:
        acc = accumulate(delta, residual)
        wire: dict[str, Tensor] = {}
        new_residual: dict[str, Tensor] = {}
        for name, value in acc.items():
            flat = value.reshape(-1)
            numel = flat.numel()
            if numel > _INT32_MAX:
                raise ValueError(f"{name!r} has {numel} elements; too many to address")
            k = topk_count(numel, float(self.ratio))
            positions = torch.arange(numel) if k == numel else self.support(flat, numel, k, name)
            picked = flat[positions]
            q = quantize(picked, self.values, self.block_size)
            res = flat.clone()
            res[positions] = picked - q.sent
            wire[f"{name}.val"] = q.wire
            if q.scale is not None:
                wire[f"{name}.scale"] = q.scale
            if self.sends_indices:
                encoded = encode_support(positions, numel)
                if encoded is not None:
                    wire[f"{name}.idx.{encoded[0]}"] = encoded[1]
            new_residual[name] = res.reshape(value.shape)
        if self.zstd:
            wire = compress_body(wire)
        return EncodedDelta(tensors=wire, meta={}, residual=new_residual)

    # -- decode (hub, untrusted input) -----------------------------------------------
    def decode(
        self,
        tensors: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        expected_shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, Tensor]:
        check_meta(meta)
        if self.zstd:
            tensors = decompress_body(tensors, self.body_limit(expected_shapes),
                                      max_tensors=3 * len(expected_shapes) + 1)
        self._check_names(tensors, expected_shapes)
        out: dict[str, Tensor] = {}
        for name, shape in expected_shapes.items():
            numel = math.prod(shape)
            k = topk_count(numel, float(self.ratio))
            positions = self._decode_support(name, tensors, numel, k)
            sent = dequantize(name, tensors[f"{name}.val"], tensors.get(f"{name}.scale"),
                              self.values, k, self.block_size)
            flat = torch.zeros(numel, dtype=torch.float32)
            flat[positions] = sent
            out[name] = flat.reshape(shape)
        return out

    def _decode_support(self, name: str, tensors: Mapping[str, Tensor], numel: int,
                        k: int) -> Tensor:
        if k == numel:
            return torch.arange(numel)
        if not self.sends_indices:
            return self.support(None, numel, k, name)
        for kind in INDEX_KINDS:
            key = f"{name}.idx.{kind}"
            if key in tensors:
                return decode_support(key, kind, require_tensor(key, tensors[key]), numel, k)
        raise WireError("missing_tensor", f"{name}: no index")  # _check_names prevents it

    def _check_names(self, tensors: Mapping[str, Any],
                     expected_shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Exactly the parts each parameter needs; one index kind when an index is due."""
        allowed: set[str] = set()
        for name, shape in expected_shapes.items():
            required = [f"{name}.val"] + ([f"{name}.scale"] if is_scaled(self.values) else [])
            missing = [r for r in required if r not in tensors]
            if missing:
                raise WireError("missing_tensor", f"missing {missing}")
            allowed.update(required)
            numel = math.prod(shape)
            if self.sends_indices and topk_count(numel, float(self.ratio)) < numel:
                kinds = [f"{name}.idx.{kind}" for kind in INDEX_KINDS]
                present = [key for key in kinds if key in tensors]
                if not present:
                    raise WireError("missing_tensor", f"missing index of {name!r}")
                if len(present) > 1:
                    raise WireError("unexpected_tensor", f"two indices for {name!r}")
                allowed.update(present)
        extra = set(tensors) - allowed
        if extra:
            raise WireError("unexpected_tensor", f"unexpected {sorted(extra)[:5]}")

    def body_limit(self, expected_shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Largest body a well-formed update of these shapes can have (bounds zstd)."""
        total = 1024
        for name, shape in expected_shapes.items():
            numel = math.prod(shape)
            k = topk_count(numel, float(self.ratio))
            total += value_bytes(k, self.values) + 4 * num_blocks(k, self.block_size)
            if self.sends_indices:
                total += max(MAX_VARINT_BYTES * k, bitmap_len(numel))
            total += 3 * (len(name.encode()) + _ST_ENTRY_BYTES)
        return total


@dataclass(frozen=True, kw_only=True)
class TopKCodec(SparseCodec):
    """The k largest magnitudes of ``delta + residual``; positions travel as indices."""

    name: str = field(default="topk", init=False)

    def support(self, flat: Tensor | None, numel: int, k: int, name: str) -> Tensor:
        if flat is None:
            raise ValueError("top-k positions come from the values, not from a seed")
        return topk_support(flat, k)


@dataclass(frozen=True, kw_only=True)
class RandKCodec(SparseCodec):
    """k coordinates drawn from the round's seed, the same on every device of the round;
    no indices travel.  ``seed`` is the round's (``sparsify.round_seed``)."""

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
