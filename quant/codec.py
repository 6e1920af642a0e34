"""Delta codecs: how a device's change to the shared LoRA parameters goes on the wire.

A device sends ``delta`` = (its shared parameters) - (the global version it trained
from). Codecs trade accuracy for bytes; lossy ones keep an error-feedback *residual* on
the device and add it to the next round's delta, so nothing is lost for good, only
delayed (the sum of what was sent tracks the sum of true deltas).

Everything here is pure tensor code with no I/O. ``decode`` runs on the hub over
untrusted tensors and raises only :class:`~fedsa_common.errors.WireError`; ``encode``
runs on the device over our own tensors and raises plain ``ValueError`` on misuse.

Wire layout per codec (tensor names in the envelope body, ``meta`` in the header as
``codec_meta``):

* ``dense``: ``{name: float32 tensor}``; meta ``{}``.
* ``topk_int8``: per parameter ``name``: ``name.idx`` (1-D, uint16 if the tensor has
  <= 65536 elements else int32, strictly increasing flat indices), ``name.val`` (1-D
  int8, same length), ``name.scale`` (float32, shape [1]); value = val * scale.
  meta ``{"ratio": ratio}`` (informational; decode does not need it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from fedsa_common.errors import WireError

#: Largest tensor whose flat indices are sent as uint16 (indices 0..65535).
UINT16_MAX_NUMEL = 65_536
_INT32_MAX = 2**31 - 1
_FLOAT_WIRE_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


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
    """A named encode/decode pair; see module docstring for the wire layouts."""

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


# --------------------------------------------------------------------------- helpers


def _accumulate(
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


def _check_meta(meta: Any) -> None:
    """``codec_meta`` comes from the JSON header; it must at least be an object."""
    if not isinstance(meta, Mapping):
        raise WireError("bad_header", f"codec_meta is {type(meta).__name__}, not an object")


def _check_names(received: Mapping[str, Any], expected: set[str]) -> None:
    """Exact name match: missing parts or extra tensors both reject the message."""
    missing = expected - set(received)
    if missing:
        raise WireError("missing_tensor", f"missing {sorted(missing)[:5]}")
    extra = set(received) - expected
    if extra:
        raise WireError("unexpected_tensor", f"unexpected {sorted(extra)[:5]}")


def _require_tensor(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise WireError("bad_tensor", f"{name!r} is {type(value).__name__}, not a tensor")
    return value


def _require_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise WireError("non_finite", f"{name!r} contains NaN or inf")


def topk_count(numel: int, ratio: float) -> int:
    """Number of coordinates ``topk_int8`` sends: ``max(1, ceil(ratio * numel))``.

    Capped at ``numel`` (0 for an empty tensor). The product is rounded to 9 decimals
    before ``ceil`` so float noise such as ``0.1 * 70 == 7.000000000000001`` yields 7,
    not 8.
    """
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(round(ratio * numel, 9))))


def index_dtype(numel: int) -> torch.dtype:
    """Wire dtype of ``topk_int8`` indices for a tensor of ``numel`` elements."""
    return torch.uint16 if numel <= UINT16_MAX_NUMEL else torch.int32


# ----------------------------------------------------------------------------- dense


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
        acc = _accumulate(delta, residual)
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
        _check_meta(meta)
        _check_names(tensors, set(expected_shapes))
        out: dict[str, Tensor] = {}
        for name, shape in expected_shapes.items():
            t = _require_tensor(name, tensors[name])
            if t.dtype not in _FLOAT_WIRE_DTYPES:
                raise WireError("bad_tensor", f"{name!r} has dtype {t.dtype}, expected float")
            if tuple(t.shape) != tuple(shape):
                raise WireError(
                    "shape_mismatch", f"{name!r} shape {tuple(t.shape)} != {tuple(shape)}"
                )
            value = t.detach().to("cpu", torch.float32).clone()
            _require_finite(name, value)
            out[name] = value
        return out


# ------------------------------------------------------------------------- topk_int8


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
        r = self.ratio
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 < r <= 1.0:
            raise ValueError(f"topk_int8 ratio must be a number in (0, 1], got {r!r}")

    def encode(
        self, delta: Mapping[str, Tensor], residual: Mapping[str, Tensor] | None = None
    ) -> EncodedDelta:
        acc = _accumulate(delta, residual)
        wire: dict[str, Tensor] = {}
        new_residual: dict[str, Tensor] = {}
        for name, value in acc.items():
            flat = value.reshape(-1)
            numel = flat.numel()
            if numel > _INT32_MAX:
                raise ValueError(f"{name!r} has {numel} elements; int32 indices cannot address it")
            k = topk_count(numel, float(self.ratio))
            idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
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
        _check_meta(meta)
        wire_names = {f"{n}.{part}" for n in expected_shapes for part in ("idx", "val", "scale")}
        _check_names(tensors, wire_names)
        return {
            name: self._decode_one(name, tuple(shape), tensors)
            for name, shape in expected_shapes.items()
        }

    @staticmethod
    def _decode_one(name: str, shape: tuple[int, ...], tensors: Mapping[str, Tensor]) -> Tensor:
        """Validate one parameter's three wire tensors and scatter them into a dense one."""
        numel = math.prod(shape)
        idx = _require_tensor(f"{name}.idx", tensors[f"{name}.idx"])
        val = _require_tensor(f"{name}.val", tensors[f"{name}.val"])
        scale = _require_tensor(f"{name}.scale", tensors[f"{name}.scale"])
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
        _require_finite(f"{name}.scale", scale)
        if float(scale[0]) < 0.0:
            raise WireError("bad_tensor", f"{name}.scale is negative")
        positions = idx.detach().to("cpu", torch.int64)
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= numel):
            raise WireError("bad_index", f"{name}.idx out of range [0, {numel})")
        if positions.numel() > 1 and not bool((positions[1:] > positions[:-1]).all()):
            raise WireError("bad_index", f"{name}.idx not strictly increasing")
        out = torch.zeros(numel, dtype=torch.float32)
        out[positions] = val.detach().to("cpu", torch.float32) * scale.detach().to("cpu")[0]
        _require_finite(name, out)  # a huge finite scale times 127 can overflow
        return out.reshape(shape)


# -------------------------------------------------------------------------- registry

_FACTORIES: dict[str, Any] = {"dense": DenseCodec, "topk_int8": TopKInt8Codec}
#: Names accepted by :func:`get_codec`.
CODECS: tuple[str, ...] = tuple(_FACTORIES)


def get_codec(name: str, **params: Any) -> DeltaCodec:
    """Build the codec called ``name``.

    Raises ``WireError("unknown_codec")`` for an unknown name, because the name usually
    comes from a message header; bad ``params`` are a configuration mistake and raise
    ``ValueError``.
    """
    factory = _FACTORIES.get(name) if isinstance(name, str) else None
    if factory is None:
        raise WireError("unknown_codec", f"{name!r} not in {CODECS}")
    try:
        codec: DeltaCodec = factory(**params)
    except TypeError as exc:  # unexpected keyword argument
        raise ValueError(f"bad parameters for codec {name!r}: {exc}") from None
    return codec
