"""``dense``: lossless float32, the codec every hub accepts whatever the round announced."""

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
    require_shape,
    require_tensor,
)
from fedsa_common.wire.codecs.layout import Layout
from fedsa_common.wire.errors import WireError

_FLOAT_WIRE_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


@dataclass(frozen=True)
class DenseCodec:
    """Lossless float32 codec.

    It sends ``delta + residual`` and always returns a zero residual (same shapes): with
    nothing lost there is nothing to feed back, and flushing any residual left by a
    previous lossy codec keeps ``sent + residual == delta + old_residual`` uniform
    across codecs.
    """

    name: str = field(default="dense", init=False)

    def encode(
        self, delta: Mapping[str, Tensor], residual: Mapping[str, Tensor] | None = None
    ) -> EncodedDelta:
        acc = accumulate(delta, residual)
        return EncodedDelta(
            tensors=acc,
            meta={},
            residual={n: torch.zeros_like(t) for n, t in acc.items()},
        )

    def decode(
        self,
        tensors: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        expected_shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, Tensor]:
        check_meta(meta)
        layout = Layout.of(expected_shapes)
        check_names(tensors, set(layout.names))
        parts: list[Tensor] = []
        for name, shape in zip(layout.names, layout.shapes, strict=True):
            t = require_tensor(name, tensors[name])
            if t.dtype not in _FLOAT_WIRE_DTYPES:
                raise WireError("bad_tensor", f"{name!r} has dtype {t.dtype}, expected float")
            require_shape(name, t, shape)
            parts.append(t.reshape(-1) if t.dtype == torch.float32 else
                         t.reshape(-1).to(torch.float32))
        flat = torch.cat(parts) if parts else layout.zeros()  # a copy: callers may mutate
        if not bool(torch.isfinite(flat).all()):
            bad = next(n for n, v in layout.split(flat).items() if not bool(v.isfinite().all()))
            raise WireError("non_finite", f"{bad!r} contains NaN or inf")
        return layout.views(flat)
