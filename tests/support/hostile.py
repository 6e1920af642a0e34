"""Hostile payloads: valid wire messages broken the way an attacker or a buggy peer would
break them, and plain garbage.

Why a module of its own: the same generators drive the in-process fuzz tests (hypothesis
draws the seed of a ``random.Random``, so a failure names the seed that reproduces it) and
the integration fuzz that throws thousands of payloads at real hub processes, so both
exercise one catalogue of attacks.  Everything here is pure: templates and a ``Random`` in,
bytes out, no I/O.

The catalogue, by layer:

* bytes: bit flips, overwritten bytes, truncation, extension, insertion, deletion, a copied
  slice, corrupted length fields; pure random bytes, with and without a valid magic prefix.
* JSON headers (envelope header, safetensors header, raw JSON messages): fields set to
  wrong types, huge or negative numbers, ``NaN``/``Infinity``/``1e400``, lone surrogates,
  invalid UTF-8, duplicate keys, deep nesting near and past the recursion limit, unknown
  fields, removed fields, absurd nested values (``codec_params``, ``selected``, ...).
* tensors: other dtypes, truncated or extended data, absurd shapes (0-d, empty, extra
  dimensions), NaN/inf/huge/denormal values, integer extremes and out-of-range or unsorted
  indices, missing, renamed and extra tensors.
* safetensors body: forbidden dtype codes, bad or overlapping ``data_offsets``, absurd
  shapes, duplicate tensor names.
* frames: bad magic, truncated headers, ``idx >= total``, ``total == 0``, a frame index not
  matching its topic or not a canonical number, a total no message under the receiver's
  limit needs (limits below 16 MiB), a non-final frame smaller than any sender's.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedsa_common.wire.chunking import FRAME_HEADER_BYTES, FRAME_MAGIC, MSG_ID_BYTES
from fedsa_common.wire.envelope import ALLOWED_DTYPES, MAGIC, PROTOCOL_VERSION, pack_tensors

#: Every reason a hub counts refusals under on the paths hostile peers can reach (frames,
#: update and partial envelopes, codecs, intake rules, presence/ack JSON).  The fuzz tests
#: require each refusal to carry one of these: a new reason is a deliberate addition here.
WIRE_REASONS: frozenset[str] = frozenset({
    # frames and reassembly (fedsa_common.wire.chunking / transport)
    "frame_bad_topic", "frame_truncated", "frame_bad_magic", "frame_bad_total",
    "frame_bad_index", "frame_index_mismatch", "frame_total_implausible", "frame_too_small",
    "frame_inconsistent_total", "frame_inconsistent_size", "frame_conflicting_duplicate",
    "message_too_large",
    # envelope and headers (fedsa_common.wire.envelope / protocol)
    "bad_type", "too_large", "bad_magic", "truncated", "version", "bad_header", "bad_tensor",
    # codecs (fedsa_common.wire.codecs)
    "unknown_codec", "missing_tensor", "unexpected_tensor", "shape_mismatch", "non_finite",
    "bad_index", "bad_varint", "bad_value", "bad_zstd", "zstd_bomb",
    # intake and cloud rules (hub.intake / codec_check / regional / cloud)
    "wrong_federation", "wrong_region", "wrong_topic", "duplicate", "future", "stale", "late",
    "not_selected", "wrong_base_version", "unexpected_codec", "wrong_seed",
    "bad_codec_params", "too_many_samples", "norm_bound", "value_bound", "overflow",
    # downlink deltas (fedsa_common.wire.downlink / edge_client.downlink)
    "wrong_digest",
})

#: JSON values of the wrong type or an absurd size for any header field.
WEIRD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2, -(2**63), 2**53, 2**63, 2**64 + 1, 10**30, -(10**30),
    1.5, -0.0, 1e308, -1e308, 5e-324, "", "x", "\u00e9", "\x00", "a/b+#", "x" * 300,
    "1", "inf", "nan", "-1", [], {}, [None], {"": None}, [1, "a", {}], {"seed": -1},
)
#: Raw JSON tokens a well-behaved encoder never writes, spliced in as field values.
RAW_TOKENS: tuple[bytes, ...] = (
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b'"\\ud800"', b'"x\\udfff"',
    b'"\xff\xfe"', b'"\xc3"', b"01", b"0x1F", b"+1", b".5", b"1.", b"tru", b"nul", b"[",
    b"{", b'"', b"[1,]", b'{"a":1,}', b"9" * 190, b"-" + b"9" * 190, b"9" * 5000,
)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ALL_DTYPES = tuple(ALLOWED_DTYPES.values())
_FORBIDDEN_DTYPE_CODES = ("F64", "BOOL", "F8_E4M3", "C64", "I128", "f32", "", 3, None)


# --------------------------------------------------------------------------- bytes
def mutate_bytes(data: bytes, rng: random.Random, max_ops: int = 4) -> bytes:
    """1..max_ops random edits of ``data``: flips, overwrites, cuts, growth, splices."""
    out = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        op = rng.randrange(8)
        if op == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op == 2:
            del out[rng.randrange(len(out) + 1):]
        elif op == 3:
            out += random_bytes(rng, 1, 64)
        elif op == 4:
            at = rng.randrange(len(out) + 1)
            out[at:at] = random_bytes(rng, 1, 16)
        elif op == 5 and out:
            at = rng.randrange(len(out))
            del out[at : at + rng.randint(1, 16)]
        elif op == 6 and len(out) > 2:
            start = rng.randrange(len(out) - 1)
            piece = out[start : start + rng.randint(1, 32)]
            at = rng.randrange(len(out) + 1)
            out[at:at] = piece
        elif op == 7 and len(out) >= 8:
            # a length field's worth of bytes set to an extreme (0, max, or random)
            at = rng.randrange(len(out) - 3)
            out[at : at + 4] = rng.choice([b"\x00" * 4, b"\xff" * 4, random_bytes(rng, 4, 4)])
    return bytes(out)


def random_bytes(rng: random.Random, low: int = 0, high: int = 512) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(low, high)))


def garbage(rng: random.Random) -> bytes:
    """Random bytes, sometimes behind a valid envelope magic and version."""
    body = random_bytes(rng, 0, 300)
    choice = rng.randrange(3)
    if choice == 0:
        return body
    if choice == 1:
        return MAGIC + bytes([PROTOCOL_VERSION]) + body
    return MAGIC + bytes([rng.randrange(256)]) + body


# --------------------------------------------------------------------------- JSON
def _deep(depth: int, rng: random.Random) -> bytes:
    """Raw JSON nested ``depth`` levels (built as bytes: ``json.dumps`` would recurse)."""
    if rng.random() < 0.5:
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


class _Raw:
    """Raw JSON byte strings spliced in where a marker string stands after ``json.dumps``."""

    def __init__(self) -> None:
        self.tokens: dict[bytes, bytes] = {}

    def marker(self, token: bytes) -> str:
        text = f"\x01raw{len(self.tokens)}\x01"
        self.tokens[json.dumps(text).encode()] = token
        return text

    def splice(self, out: bytes) -> bytes:
        for marker, token in self.tokens.items():
            out = out.replace(marker, token)
        return out


def _mutate_value(value: Any, rng: random.Random, raw: _Raw) -> Any:
    """A weird replacement for ``value``; containers are sometimes edited inside."""
    if isinstance(value, dict) and value and rng.random() < 0.5:
        inner = dict(value)
        key = rng.choice(list(inner))
        if rng.random() < 0.3:
            del inner[key]
        else:
            inner[key] = _mutate_value(inner[key], rng, raw)
        return inner
    if isinstance(value, list) and value and rng.random() < 0.5:
        inner_list = list(value)
        i = rng.randrange(len(inner_list))
        inner_list[i] = _mutate_value(inner_list[i], rng, raw)
        if rng.random() < 0.3:
            inner_list.append(inner_list[i])  # a duplicate entry
        return inner_list
    if isinstance(value, int | float) and not isinstance(value, bool) and rng.random() < 0.5:
        return rng.choice([-value - 1, value + 1, value * 10**rng.randint(1, 200), -value,
                           float(value) + 0.5])
    if rng.random() < 0.2:
        return raw.marker(rng.choice(RAW_TOKENS))
    return rng.choice(WEIRD_VALUES)


_SURROGATES = (b'"\\ud800"', b'"a\\udfffb"', b'"\\udc80:1"')


def _same_type(value: Any, rng: random.Random, raw: _Raw) -> Any:
    """A replacement of the same JSON type (so schema validation may still pass) but an
    extreme value: the inputs that reach the code after validation."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([0, -1, value + 1, 2**31, 2**53, 2**63, 10 ** rng.randint(15, 200),
                           raw.marker(b"9" * rng.randint(17, 300))])
    if isinstance(value, float):
        return rng.choice([0.0, -0.0, 1e308, 5e-324, value * 1e30, raw.marker(b"1e400"),
                           raw.marker(b"-1e400"), raw.marker(b"NaN")])
    if isinstance(value, str):
        return rng.choice(["", "x" * 300, "\u00e9", "\x00", "a:1", value * 2,
                           raw.marker(rng.choice(_SURROGATES))])
    if isinstance(value, list):
        if not value or rng.random() < 0.2:
            return rng.choice([[], [raw.marker(rng.choice(_SURROGATES))], ["x"] * 50])
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = _same_type(out[i], rng, raw)
        if rng.random() < 0.3:
            out.append(out[i])  # a duplicate entry
        return out
    if isinstance(value, dict):
        out_d = dict(value)
        if not out_d or rng.random() < 0.3:
            out_d[raw.marker(rng.choice(_SURROGATES))] = 1
        else:
            key = rng.choice(list(out_d))
            out_d[key] = _same_type(out_d[key], rng, raw)
        return out_d
    return rng.choice(WEIRD_VALUES)


def mutate_json(obj: Mapping[str, Any], rng: random.Random, max_ops: int = 3) -> bytes:
    """Serialise ``obj`` after 1..max_ops field mutations, some only expressible as raw bytes
    (non-standard tokens, invalid UTF-8, duplicate keys, nesting past the parser's limit)."""
    fields = dict(obj)
    raw = _Raw()
    dup: list[bytes] = []
    if fields and rng.random() < 0.4:  # one extreme value of the right type
        key = rng.choice(list(fields))
        fields[key] = _same_type(fields[key], rng, raw)
        return raw.splice(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    for _ in range(rng.randint(1, max_ops)):
        keys = list(fields)
        op = rng.randrange(7)
        if op <= 1 and keys:
            key = rng.choice(keys)
            fields[key] = _mutate_value(fields[key], rng, raw)
        elif op == 2 and keys:
            del fields[rng.choice(keys)]
        elif op == 3:
            fields[rng.choice(["extra", "__proto__", "kind", "proto", "\u00e9", ""])] = (
                rng.choice(WEIRD_VALUES))
        elif op == 4 and keys:
            fields[rng.choice(keys)] = raw.marker(rng.choice(RAW_TOKENS))
        elif op == 5 and keys:
            key = rng.choice(keys)
            dup.append(json.dumps(key).encode() + b":" + json.dumps(
                rng.choice(WEIRD_VALUES)).encode())
        elif keys:
            # nesting around the recursion limit: some parse, some must fail cleanly
            depth = rng.choice([50, 500, 900, 990, 1100, 5000])
            fields[rng.choice(keys)] = raw.marker(_deep(depth, rng))
    out = raw.splice(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    if dup and out.endswith(b"}") and len(out) > 2:
        out = out[:-1] + b"," + b",".join(dup) + b"}"
    return out


# --------------------------------------------------------------------------- tensors
def _poison_float(t: torch.Tensor, rng: random.Random) -> torch.Tensor:
    flat = t.reshape(-1).clone()
    if flat.numel():
        flat[rng.randrange(flat.numel())] = rng.choice(
            [math.nan, math.inf, -math.inf, 3e38, -3e38, 65504.0, 1e-45, -0.0])
    return flat.reshape(t.shape)


def _poison_int(t: torch.Tensor, rng: random.Random, bound: int) -> torch.Tensor:
    flat = t.reshape(-1).clone()
    if flat.numel():
        info = torch.iinfo(flat.dtype)
        value = rng.choice([info.min, info.max, 0, -1, bound, bound + 1, bound - 1])
        flat[rng.randrange(flat.numel())] = max(info.min, min(info.max, value))
    if flat.numel() > 1 and rng.random() < 0.3:
        flat = flat.to(torch.int64).flip(0).to(t.dtype)  # unsorted positions (no uint16 flip)
    return flat.reshape(t.shape)


def mutate_tensors(tensors: Mapping[str, torch.Tensor], rng: random.Random,
                   max_ops: int = 3) -> dict[str, torch.Tensor]:
    """1..max_ops edits of a tensor dict: dtype, length, shape, values, names."""
    out = {n: t.clone() for n, t in tensors.items()}
    for _ in range(rng.randint(1, max_ops)):
        if not out:
            out[rng.choice(["x", "zstd", "a.val"])] = torch.zeros(rng.randint(0, 8))
            continue
        name = rng.choice(list(out))
        t = out[name]
        op = rng.randrange(9)
        if op == 0:
            out[name] = t.to(rng.choice(_ALL_DTYPES))
        elif op == 1:
            out[name] = t.reshape(-1)[: rng.randint(0, max(0, t.numel() - 1))].clone()
        elif op == 2:
            out[name] = torch.cat([t.reshape(-1), t.reshape(-1)[: rng.randint(1, 64)]])
        elif op == 3:
            shape = rng.choice([(), (0,), (1, t.numel()), (t.numel(), 1), (1, 0, 3),
                                (*t.shape, 1)])
            if math.prod(shape) == t.numel():
                out[name] = t.reshape(shape)
            else:
                out[name] = torch.zeros(shape, dtype=t.dtype)
        elif op == 4:
            if t.dtype in _FLOAT_DTYPES:
                out[name] = _poison_float(t, rng)
            else:
                out[name] = _poison_int(t, rng, bound=rng.choice([t.numel(), 2**16, 2**31 - 1]))
        elif op == 5:
            del out[name]
        elif op == 6:
            out[name + rng.choice([".x", ".idx.varint", ".idx.bitmap", ".scale", ".val"])] = t
        elif op == 7:
            out[rng.choice(["x", "zstd", name.split(".")[0]])] = t.clone()
        else:
            noise = [rng.randrange(256) for _ in range(rng.randint(0, 64))]
            out[name] = torch.tensor(noise, dtype=torch.uint8).to(t.dtype)
    return out


def mutate_body(body: bytes, rng: random.Random) -> bytes:
    """Edit a safetensors body's own JSON header: dtype codes, offsets, shapes, names."""
    if len(body) < 8:
        return mutate_bytes(body, rng)
    (n,) = struct.unpack_from("<Q", body)
    try:
        header = json.loads(body[8 : 8 + n])
    except ValueError:
        return mutate_bytes(body, rng)
    data = body[8 + n :]
    names = [k for k in header if k != "__metadata__"]
    extra = b""
    if names:
        name = rng.choice(names)
        entry = dict(header[name])
        op = rng.randrange(5)
        if op == 0:
            entry["dtype"] = rng.choice(_FORBIDDEN_DTYPE_CODES)
        elif op == 1:
            start, end = entry["data_offsets"]
            entry["data_offsets"] = rng.choice([
                [end, start], [-1, end], [start, len(data) + 1], [0, 2**64], [start],
                [start, end, 0], ["0", end], [0, 0]])
        elif op == 2:
            entry["shape"] = rng.choice([[2**40], [-1], [], ["a"], [0], [1, 2**62], None])
        elif op == 3:
            extra = b',' + json.dumps(name).encode() + b":" + json.dumps(entry).encode()
        else:
            header["__metadata__"] = rng.choice([{"a": 1}, [], "x", {"a": "b"}])
        header[name] = entry
    blob = json.dumps(header, separators=(",", ":")).encode()
    if extra:
        blob = blob[:-1] + extra + b"}"
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


# --------------------------------------------------------------------------- envelopes
def envelope(header_json: bytes, body: bytes) -> bytes:
    """An envelope around arbitrary header bytes and body (no checks: that is the point)."""
    return MAGIC + bytes([PROTOCOL_VERSION]) + struct.pack(">I", len(header_json)) + \
        header_json + body


def _canonical(header: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(header), sort_keys=True, separators=(",", ":")).encode()


def hostile_message(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                    rng: random.Random) -> bytes:
    """One hostile variant of the message (header, tensors); see the module docstring."""
    strategies: list[Callable[[], bytes]] = [
        lambda: envelope(mutate_json(header, rng), pack_tensors(tensors)),
        lambda: envelope(_canonical(header), pack_tensors(mutate_tensors(tensors, rng))),
        lambda: envelope(_canonical(header), mutate_body(pack_tensors(tensors), rng)),
        lambda: mutate_bytes(envelope(_canonical(header), pack_tensors(tensors)), rng),
        lambda: envelope(mutate_json(header, rng),
                         pack_tensors(mutate_tensors(tensors, rng))),
        lambda: garbage(rng),
    ]
    weights = [4, 6, 2, 3, 1, 1]
    return rng.choices(strategies, weights)[0]()


def hostile_json(obj: Mapping[str, Any], rng: random.Random) -> bytes:
    """A hostile variant of a raw JSON message (presence, metrics, acks)."""
    choice = rng.randrange(4)
    if choice <= 1:
        return mutate_json(obj, rng)
    if choice == 2:
        return mutate_bytes(_canonical(obj), rng)
    return random_bytes(rng, 1, 200)


# --------------------------------------------------------------------------- frames
def msg_id(rng: random.Random) -> bytes:
    """A frame message id drawn from ``rng`` (reproducible, unlike a sender's random id)."""
    return bytes(rng.randrange(256) for _ in range(MSG_ID_BYTES))


def frame(payload: bytes, idx: int = 0, total: int = 1, mid: bytes | None = None) -> bytes:
    """One chunking frame (see ``fedsa_common.wire.chunking``) with any idx/total, unchecked."""
    mid = os.urandom(MSG_ID_BYTES) if mid is None else mid
    return struct.pack(">4s16sHH", FRAME_MAGIC, mid, idx, total) + payload


#: Frame defects that a receiver must refuse outright (each is counted, never kept).
FRAME_DEFECTS: tuple[str, ...] = (
    "bad_magic", "short", "idx_ge_total", "total_zero", "topic_idx_mismatch", "bad_topic",
    "implausible_total", "tiny_nonfinal",
)


def broken_frame(payload: bytes, rng: random.Random, defect: str | None = None
                 ) -> tuple[str, bytes]:
    """(topic suffix, frame) with one defect from ``FRAME_DEFECTS`` that a receiver refuses
    at once; the suffix is the frame-index level of the topic it must be published on."""
    defect = defect or rng.choice(FRAME_DEFECTS)
    mid = msg_id(rng)
    good = frame(payload, mid=mid)
    if defect == "bad_magic":
        return "0", bytes([good[0] ^ 0xFF]) + good[1:]
    if defect == "short":
        return "0", good[: rng.randrange(1, FRAME_HEADER_BYTES)]  # empty frames are ignored
    if defect == "idx_ge_total":
        total = rng.randint(1, 5)
        idx = rng.randint(total, 0xFFFF)
        return str(idx), frame(payload, idx, total, mid)
    if defect == "total_zero":
        return "0", frame(payload, 0, 0, mid)
    if defect == "topic_idx_mismatch":
        return str(rng.randint(1, 9)), good
    if defect == "bad_topic":
        return rng.choice(["x", "-1", "00", "1.0", "65536", "\u0661"]), good
    if defect == "implausible_total":
        return "0", frame(payload + b"\x00" * 300, 0, 0xFFFF, mid)
    # a non-final frame of a multi-frame message carrying fewer bytes than any sender would
    return "0", frame(payload[:100], 0, rng.randint(2, 5), mid)
