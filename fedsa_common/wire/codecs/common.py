"""What every codec shares: the encode result, the codec protocol, and input checks.

Decoders run on the hub over untrusted tensors and raise only
:class:`~fedsa_common.wire.errors.WireError`; encoders run on the device over our own tensors
and raise plain ``ValueError`` on misuse (a bug or a misconfiguration, not an attack).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from fedsa_common.wire.errors import WireError


@dataclass(frozen=True)
class EncodedDelta:
    """Result of encoding one delta.

    ``tensors`` go into the envelope body, ``meta`` into the header as ``codec_meta``,
    ``residual`` stays on the device (float32, same names and shapes as the delta).
    """

    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    residual: dict[str, Tensor]


class DeltaCodec(Protocol):
    """A named encode/decode pair; see ``fedsa_common.wire.codec`` for the wire layouts."""

    name: str

    def encode(
        self, delta: Mapping[str, Tensor], residual: Mapping[str, Tensor] | None = None
    ) -> EncodedDelta: ...

    def decode(
        self,
        tensors: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        expected_shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, Tensor]: ...


def accumulate(
    delta: Mapping[str, Tensor], residual: Mapping[str, Tensor] | None
) -> dict[str, Tensor]:
    """Return float32 ``delta + residual`` per name (error feedback), validating inputs.

    The residual must have exactly the delta's names and shapes: a mismatch means the
    device's state is out of sync with its model, which should fail loudly, not silently
    drop or invent error.
    """
    if residual is not None and set(residual) != set(delta):
        raise ValueError(
            f"residual names {sorted(residual)} differ from delta names {sorted(delta)}"
        )
    acc: dict[str, Tensor] = {}
    for name, d in delta.items():
        value = d.detach().to("cpu", torch.float32).clone()
        if residual is not None:
            r = residual[name]
            if tuple(r.shape) != tuple(d.shape):
                raise ValueError(f"residual {name!r} shape {tuple(r.shape)} != {tuple(d.shape)}")
            value += r.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"delta + residual for {name!r} is not finite")
        acc[name] = value
    return acc


def check_meta(meta: Any) -> None:
    """``codec_meta`` comes from the JSON header; it must at least be an object."""
    if not isinstance(meta, Mapping):
        raise WireError("bad_header", f"codec_meta is {type(meta).__name__}, not an object")


def check_names(received: Mapping[str, Any], expected: set[str]) -> None:
    """Exact name match: missing parts or extra tensors both reject the message."""
    missing = expected - set(received)
    if missing:
        raise WireError("missing_tensor", f"missing {sorted(missing)[:5]}")
    extra = set(received) - expected
    if extra:
        raise WireError("unexpected_tensor", f"unexpected {sorted(extra)[:5]}")


def require_tensor(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise WireError("bad_tensor", f"{name!r} is {type(value).__name__}, not a tensor")
    return value


def require_dtype(name: str, value: Tensor, dtype: torch.dtype) -> None:
    if value.dtype != dtype:
        raise WireError("bad_tensor", f"{name!r} dtype {value.dtype}, expected {dtype}")


def require_shape(name: str, value: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(value.shape) != shape:
        raise WireError("shape_mismatch", f"{name!r} shape {tuple(value.shape)} != {shape}")


def require_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise WireError("non_finite", f"{name!r} contains NaN or inf")


def check_ratio(codec: str, ratio: Any) -> None:
    """A sparsity ratio is a real number in (0, 1]; bools and strings are mistakes."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"{codec} ratio must be a number in (0, 1], got {ratio!r}")
