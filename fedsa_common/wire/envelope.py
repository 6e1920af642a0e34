"""The versioned container every fedsa-edge message travels in.

Layout (all of it untrusted on the receiving side)::

    b"FSA" | version: u8 | header_len: u32 big-endian | header: UTF-8 JSON object
           | body: safetensors bytes (possibly an empty tensor dict)

JSON carries the small, human-debuggable fields; safetensors carries tensors without
pickle, so decoding a message can never execute code. ``unpack`` checks every length and
dtype before trusting it and raises only :class:`~fedsa_common.wire.errors.WireError`, so a
hub can count and drop bad input without crashing.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from fedsa_common.wire.errors import WireError

PROTOCOL_VERSION = 1
MAGIC = b"FSA"

_LEN = struct.Struct(">I")
_PREFIX_LEN = len(MAGIC) + 1 + _LEN.size
_ST_LEN = struct.Struct("<Q")
#: Bytes of safetensors JSON header allowed per tensor, plus a fixed allowance: an entry is
#: ``"name":{"dtype":"F32","shape":[..],"data_offsets":[a,b]}``, under 200 bytes for the
#: longest PEFT names.  Parsing JSON costs time and memory in proportion to its length (a
#: 16 MB header: 1.4 s and 137 MiB), so its length is checked before any parsing.
ST_HEADER_BYTES_PER_TENSOR = 512
ST_HEADER_BASE_BYTES = 4096

#: safetensors dtype code -> torch dtype; anything else (float64, bool, fp8, ...) is
#: refused so peers never have to cope with dtypes the protocol does not use.
ALLOWED_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "I64": torch.int64,
}
_ALLOWED_TORCH = frozenset(ALLOWED_DTYPES.values())


@dataclass(frozen=True)
class Envelope:
    """A decoded message: JSON header plus named CPU tensors."""

    header: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def pack(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise ``header`` and ``tensors`` into one deterministic byte string.

    Determinism (sorted JSON keys, compact separators; safetensors orders tensors by
    dtype and name) means equal content gives equal bytes, which keeps digests and
    replay checks meaningful. Tensors are detached, moved to CPU and copied so that
    views sharing storage (which safetensors refuses) and GPU tensors both work.

    Raises ``TypeError``/``ValueError`` for local mistakes (non-JSON header, disallowed
    dtype); those are our bugs, not wire errors.
    """
    if not isinstance(header, Mapping):
        raise TypeError(f"header must be a mapping, got {type(header).__name__}")
    header_bytes = json.dumps(
        dict(header), sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
    ).encode("utf-8")
    if len(header_bytes) > 0xFFFFFFFF:
        raise ValueError("header too large for a u32 length field")
    body = pack_tensors(tensors)
    return MAGIC + bytes([PROTOCOL_VERSION]) + _LEN.pack(len(header_bytes)) + header_bytes + body


def pack_tensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """The body of a message: ``tensors`` as deterministic safetensors bytes.

    Public so that a codec can build a body of its own (and compress it) with exactly the
    checks a message body gets.
    """
    body_tensors: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r} is {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dtype not in _ALLOWED_TORCH:
            raise ValueError(f"tensor {name!r} has disallowed dtype {tensor.dtype}")
        body_tensors[name] = tensor.detach().to("cpu").contiguous().clone()
    return _st_save(body_tensors)


def unpack_tensors(body: bytes, *, max_tensors: int = 4096) -> dict[str, torch.Tensor]:
    """Parse an untrusted safetensors body as ``unpack`` does; raises only WireError."""
    return _parse_body(bytes(body), max_tensors=max_tensors)


def max_tensor_header_bytes(max_tensors: int) -> int:
    """The longest safetensors JSON header a body of ``max_tensors`` tensors may have."""
    return ST_HEADER_BASE_BYTES + ST_HEADER_BYTES_PER_TENSOR * max_tensors


def unpack(
    data: bytes,
    *,
    max_bytes: int = 8_000_000,
    max_header_bytes: int = 65_536,
    max_tensors: int = 4096,
) -> Envelope:
    """Parse and validate an untrusted message; raise :class:`WireError` on any defect.

    Cheap checks (size, magic, version, lengths) run before any JSON or tensor parsing so
    that hostile input costs as little as possible.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("bad_type", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise WireError("too_large", f"{len(data)} bytes > limit {max_bytes}")
    if not MAGIC.startswith(data[: len(MAGIC)]):
        raise WireError("bad_magic", repr(data[: len(MAGIC)]))
    if len(data) < _PREFIX_LEN:
        raise WireError("truncated", f"{len(data)} bytes is shorter than the fixed prefix")
    version = data[len(MAGIC)]
    if version != PROTOCOL_VERSION:
        raise WireError("version", f"got protocol version {version}, expected {PROTOCOL_VERSION}")
    (header_len,) = _LEN.unpack_from(data, len(MAGIC) + 1)
    if header_len > max_header_bytes:
        raise WireError("bad_header", f"header length {header_len} > limit {max_header_bytes}")
    header_end = _PREFIX_LEN + header_len
    if len(data) < header_end:
        have = len(data) - _PREFIX_LEN
        raise WireError("truncated", f"header needs {header_len} bytes, have {have}")
    header = _parse_header(data[_PREFIX_LEN:header_end])
    tensors = _parse_body(data[header_end:], max_tensors=max_tensors)
    return Envelope(header=header, tensors=tensors)


def _reject_constant(token: str) -> Any:
    """Refuse NaN/Infinity, which are not JSON and which ``pack`` never writes."""
    raise ValueError(f"non-standard JSON constant {token}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse duplicate keys, which different parsers would resolve differently."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _finite_float(token: str) -> float:
    """Refuse number literals that overflow to infinity (``1e400``): a disguised Infinity."""
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token[:20]} overflows a float")
    return value


def _check_strings(obj: Any) -> None:
    """Refuse strings that are not valid Unicode text: JSON's ``\\ud800`` escape decodes to a
    lone surrogate, which every later UTF-8 encode (logs, state files, a summary sent on)
    would fail on, far from here.  Iterative, so depth costs no recursion."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                item.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def loads_strict(raw: bytes) -> Any:
    """Strict JSON decode of untrusted bytes: UTF-8 only (also inside ``\\u`` escapes), no
    NaN/Infinity (spelled out or overflowing), no duplicate keys.  Raises ``ValueError`` or
    ``RecursionError`` (deep nesting) on bad input; callers turn both into a WireError."""
    obj = json.loads(
        raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float,
        object_pairs_hook=_no_duplicates,
    )
    # UTF-8 decoding already refuses encoded surrogates, so a lone one can only come from a
    # \u escape: without any, the walk (a hub's main cost per small header) has nothing to find
    if b"\\u" in raw:
        _check_strings(obj)
    return obj


def _parse_header(raw: bytes) -> dict[str, Any]:
    """Decode the JSON header; deep nesting (RecursionError) counts as bad input too."""
    try:
        header = loads_strict(raw)
    except (ValueError, RecursionError) as exc:
        raise WireError("bad_header", f"invalid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("bad_header", f"header is {type(header).__name__}, not an object")
    return header


def _parse_body(body: bytes, *, max_tensors: int) -> dict[str, torch.Tensor]:
    """Pre-check the safetensors header ourselves, then let safetensors do the rest.

    The pre-check gives precise reasons (truncated / too_large / bad_tensor) and rejects
    an oversized JSON header before parsing it, and too many tensors or forbidden dtypes
    before any tensor memory is allocated.
    """
    if len(body) < _ST_LEN.size:
        raise WireError("truncated", "body shorter than the safetensors length prefix")
    (st_header_len,) = _ST_LEN.unpack_from(body, 0)
    if st_header_len > len(body) - _ST_LEN.size:
        raise WireError("truncated", "safetensors header runs past the end of the message")
    if st_header_len > max_tensor_header_bytes(max_tensors):
        raise WireError("too_large", f"safetensors header of {st_header_len} bytes > limit "
                        f"{max_tensor_header_bytes(max_tensors)} for {max_tensors} tensors")
    try:
        st_header = loads_strict(body[_ST_LEN.size : _ST_LEN.size + st_header_len])
    except (ValueError, RecursionError) as exc:
        raise WireError("bad_tensor", f"invalid safetensors header: {exc}") from None
    if not isinstance(st_header, dict):
        raise WireError("bad_tensor", "safetensors header is not an object")
    entries = {k: v for k, v in st_header.items() if k != "__metadata__"}
    if len(entries) > max_tensors:
        raise WireError("too_large", f"{len(entries)} tensors > limit {max_tensors}")
    data_len = len(body) - _ST_LEN.size - st_header_len
    for name, info in entries.items():
        if not isinstance(info, dict):
            raise WireError("bad_tensor", f"tensor {name!r}: entry is not an object")
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise WireError("bad_tensor", f"tensor {name!r}: dtype {dtype!r} not allowed")
        offsets = info.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise WireError("bad_tensor", f"tensor {name!r}: malformed data_offsets")
        if offsets[1] > data_len:
            raise WireError("truncated", f"tensor {name!r} data runs past the end of the message")
    try:
        loaded = _st_load(body)
    except Exception as exc:  # safetensors raises several types; all mean "bad body"
        raise WireError("bad_tensor", f"safetensors rejected body: {exc}") from None
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in loaded.items():
        if tensor.dtype not in _ALLOWED_TORCH:  # defence in depth; pre-check covers it
            raise WireError("bad_tensor", f"tensor {name!r}: dtype {tensor.dtype} not allowed")
        # Copy out of the (read-only) message buffer so callers may mutate freely.
        tensors[name] = tensor.clone()
    return tensors
