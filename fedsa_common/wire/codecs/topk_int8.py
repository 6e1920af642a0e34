"""``topk_int8``: the original codec (top-k, one int8 scale per tensor, raw indices).

Kept byte for byte so that existing federations, checkpoints and configurations go on
working; ``topk`` with ``values: int8`` sends the same values with smaller indices.

Per parameter ``N``: ``N.idx`` (1-D, uint16 if the tensor has <= 65536 elements else
int32, strictly increasing flat indices), ``N.val`` (1-D int8, same length), ``N.scale``
(float32, shape [1]); value = val * scale.  meta ``{"ratio": ratio}`` (informational).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedsa_common.wire.codecs.common import (
    EncodedDelta,
    accumulate,
    check_meta,
    check_names,
    check_ratio,
    require_tensor,
)
from fedsa_common.wire.codecs.layout import Layout, segment_ids
from fedsa_common.wire.codecs.sparsify import topk_count, topk_support
from fedsa_common.wire.errors import WireError

#: Largest tensor whose flat indices are sent as uint16 (indices 0..65535).
UINT16_MAX_NUMEL = 65_536
_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def index_dtype(numel: int) -> torch.dtype:
    """Wire dtype of ``topk_int8`` indices for a tensor of ``numel`` elements."""
    return torch.uint16 if numel <= UINT16_MAX_NUMEL else torch.int32


@dataclass(frozen=True)
class TopKInt8Codec:
    """Top-k sparsification + int8 quantisation with error feedback.

    Per tensor the ``k = topk_count(numel, ratio)`` largest-magnitude coordinates of
    ``delta + residual`` are sent as sorted flat indices and int8 values with one
    float32 scale (``max|v| / 127``); everything not sent, plus the rounding error of
    what was sent, becomes the new residual.
    """

    ratio: float = 0.1
    name: str = field(default="topk_int8", init=False)

    def __post_init__(self) -> None:
        check_ratio("topk_int8", self.ratio)

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
                raise ValueError(f"{name!r} has {numel} elements; int32 indices cannot address it")
            k = topk_count(numel, float(self.ratio))
            idx = topk_support(flat, k)
            picked = flat[idx]
            scale = picked.abs().max() / 127.0 if k else torch.zeros((), dtype=torch.float32)
            if float(scale) > 0.0:
                q = torch.round(picked / scale).clamp_(-127, 127).to(torch.int8)
            else:  # all picked values are zero (or the scale underflowed): send zeros
                q = torch.zeros(k, dtype=torch.int8)
            sent = q.to(torch.float32) * scale
            res = flat.clone()
            res[idx] = picked - sent
            wire[f"{name}.idx"] = idx.to(index_dtype(numel))
            wire[f"{name}.val"] = q
            wire[f"{name}.scale"] = scale.reshape(1).to(torch.float32)
            new_residual[name] = res.reshape(value.shape)
        return EncodedDelta(tensors=wire, meta={"ratio": float(self.ratio)}, residual=new_residual)

    def decode(
        self,
        tensors: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        expected_shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, Tensor]:
        """Validate every part, then dequantize and scatter the whole update at once (a
        fixed number of tensor operations, not a dozen per parameter)."""
        check_meta(meta)
        layout = Layout.of(expected_shapes)
        wire_names = {f"{n}.{part}" for n in layout.names for part in ("idx", "val", "scale")}
        check_names(tensors, wire_names)
        idxs, vals, scales = [], [], []
        for name, numel in zip(layout.names, layout.numels, strict=True):
            idx, val, scale = self._check_parts(name, numel, tensors)
            idxs.append(idx)
            vals.append(val)
            scales.append(scale)
        out = layout.zeros()
        if not layout.names:
            return layout.views(out)
        counts = torch.tensor([v.numel() for v in vals], dtype=torch.int64)
        val = torch.cat(vals)
        # the encoder clamps to [-127, 127]; -128 times a scale near FLOAT32_MAX / 127
        # would overflow to -inf, past the scale check below
        if val.numel() and int(val.min()) < -127:
            raise WireError("bad_value", "int8 value -128 outside [-127, 127]")
        scale = torch.cat(scales)
        # one scale per tensor; a huge finite one times 127 could overflow a value
        if not bool(torch.isfinite(scale).all()) or float(scale.max()) * 127.0 > _FLOAT32_MAX:
            raise WireError("non_finite", "a scale is NaN, inf or too large")
        if float(scale.min()) < 0.0:
            raise WireError("bad_tensor", "a scale is negative")
        seg = segment_ids(counts)
        same = all(i.dtype == idxs[0].dtype for i in idxs)  # uint16 and int32 may mix
        local = torch.cat(idxs if same else [i.to(torch.int64) for i in idxs]).to(torch.int64)
        numels = torch.tensor(layout.numels, dtype=torch.int64)
        if local.numel() and (int(local.min()) < 0 or bool((local >= numels[seg]).any())):
            bad = layout.names[int(seg[(local < 0) | (local >= numels[seg])][0])]
            raise WireError("bad_index", f"{bad}.idx out of range")
        positions = local + torch.tensor(layout.offsets, dtype=torch.int64)[seg]
        # in range per tensor, so increasing overall iff increasing within every tensor
        if positions.numel() > 1 and not bool((positions[1:] > positions[:-1]).all()):
            bad = layout.names[int(seg[1:][positions[1:] <= positions[:-1]][0])]
            raise WireError("bad_index", f"{bad}.idx not strictly increasing")
        out[positions] = val.to(torch.float32) * scale[seg]
        return layout.views(out)

    @staticmethod
    def _check_parts(name: str, numel: int, tensors: Mapping[str, Tensor]
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """One parameter's three wire tensors, with their dtypes and shapes checked."""
        idx = require_tensor(f"{name}.idx", tensors[f"{name}.idx"])
        val = require_tensor(f"{name}.val", tensors[f"{name}.val"])
        scale = require_tensor(f"{name}.scale", tensors[f"{name}.scale"])
        if idx.dtype != index_dtype(numel):
            raise WireError(
                "bad_tensor", f"{name}.idx dtype {idx.dtype}, expected {index_dtype(numel)}"
            )
        if val.dtype != torch.int8:
            raise WireError("bad_tensor", f"{name}.val dtype {val.dtype}, expected int8")
        if scale.dtype != torch.float32:
            raise WireError("bad_tensor", f"{name}.scale dtype {scale.dtype}, expected float32")
        if idx.dim() != 1 or val.dim() != 1 or idx.numel() != val.numel():
            raise WireError(
                "shape_mismatch",
                f"{name}: idx {tuple(idx.shape)} and val {tuple(val.shape)} must be equal 1-D",
            )
        if idx.numel() > numel:
            raise WireError("shape_mismatch", f"{name}: {idx.numel()} indices > {numel} elements")
        if tuple(scale.shape) != (1,):
            raise WireError("shape_mismatch", f"{name}.scale shape {tuple(scale.shape)} != (1,)")
        return idx, val, scale
