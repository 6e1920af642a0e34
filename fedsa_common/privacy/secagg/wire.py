"""Secure-aggregation messages in the fedsa envelope (JSON header, safetensors body).

Key, share, consistency and unmasking messages travel on the region's
``secagg/up/<client>`` and ``secagg/down/<client>`` topics (``Topics.secagg_up``/
``secagg_down``): the header names federation, round, region, client and stage, and the
message itself is the envelope's body, one uint8 tensor ``msg`` holding its JSON (bytes as
base64).  Why the body and not the header: a roster or share delivery grows linearly with
the region (about 350 bytes a device for a signed roster), and the envelope's JSON header
is capped at 64 KiB, which a region of about 445 devices already exceeded; the body is
bounded only by the message limit and is split into broker-sized frames like any
update.  The body is parsed as strict JSON (``envelope.loads_strict``), never unpickled,
after its size was checked (``MAX_BODY_BYTES``).  The masked vector
itself travels as an ordinary update on ``update/<client>`` with codec ``secagg`` and one
int32 tensor ``y`` (the words' bits), so it gets the update path's persistence,
acknowledgement and resends.  Its header says ``num_samples: 1`` and no loss or time: the
real weight is inside the masked vector.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field

from fedsa_common.privacy.secagg.fixed_point import from_wire, to_wire
from fedsa_common.privacy.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    MaskingSet,
    Roster,
    ShareCheck,
    ShareDelivery,
    ShareKeys,
    SurvivorSet,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    to_json,
)
from fedsa_common.privacy.secagg.params import MAX_ROSTER, VSS_MAX_ROSTER
from fedsa_common.wire.envelope import loads_strict
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import NAME_RE, Header, UpdateHeader, decode_message, encode_message

SECAGG_CODEC = "secagg"
Stage = Literal["advertise", "roster", "share_keys", "share_delivery", "share_check",
                "masking_set", "survivors", "survivor_signature", "unmask_request",
                "unmask_response"]
UP_STAGES = frozenset({"advertise", "share_keys", "share_check", "survivor_signature",
                       "unmask_response"})
MESSAGE_TYPES: dict[str, Any] = {
    "advertise": AdvertiseKeys,
    "roster": Roster,
    "share_keys": ShareKeys,
    "share_delivery": ShareDelivery,
    "share_check": ShareCheck,
    "masking_set": MaskingSet,
    "survivors": SurvivorSet,
    "survivor_signature": SurvivorSignature,
    "unmask_request": UnmaskRequest,
    "unmask_response": UnmaskResponse,
}
Message = (AdvertiseKeys | Roster | ShareKeys | ShareDelivery | ShareCheck | MaskingSet
           | SurvivorSet | SurvivorSignature | UnmaskRequest | UnmaskResponse)
BODY_TENSOR = "msg"
#: The largest message body: a signed roster of ``MAX_ROSTER`` devices is about 350 bytes of
#: JSON a device (ids, two keys, signing key, certificate, signature in base64); 1 KiB a
#: device leaves room for long ids.  A share delivery of a round with VSS also carries
#: every dealer's Feldman commitments, ``2t`` points of 32 bytes (47 bytes of JSON each, 48
#: allowed), the same list to every member: ``96 * n * t`` bytes at most, quadratic in the
#: region; VSS stops at ``VSS_MAX_ROSTER`` (8.6 MB at most, under a device's 16 MB limit).
VSS_BODY_BYTES = 96 * VSS_MAX_ROSTER * VSS_MAX_ROSTER
MAX_BODY_BYTES = 1024 * MAX_ROSTER + 4096 + VSS_BODY_BYTES


class SecAggHeader(Header):
    """One secure-aggregation message; ``client`` is the device (sender going up,
    recipient going down)."""

    kind: Literal["secagg"] = "secagg"
    region: str = Field(pattern=NAME_RE)
    client: str = Field(pattern=NAME_RE)
    stage: Stage


def encode(federation: str, round_: int, region: str, client: str, stage: str,
           msg: Message) -> bytes:
    header = SecAggHeader(federation=federation, round=round_, region=region, client=client,
                          stage=stage)
    body = json.dumps(to_json(msg.to_dict()), separators=(",", ":")).encode()
    return encode_message(header, {BODY_TENSOR: torch.frombuffer(bytearray(body),
                                                                 dtype=torch.uint8)})


def decode(data: bytes, max_bytes: int) -> tuple[SecAggHeader, Message]:
    """Parse untrusted bytes; raises WireError (SecAggError for a bad body)."""
    header, env = decode_message(SecAggHeader, data, max_bytes=max_bytes)
    if set(env.tensors) != {BODY_TENSOR}:
        raise WireError("unexpected_tensor", f"secagg messages carry one {BODY_TENSOR!r} "
                        f"tensor, got {sorted(env.tensors)[:5]}")
    body = env.tensors[BODY_TENSOR]
    if body.dtype != torch.uint8 or body.dim() != 1:
        raise WireError("bad_tensor", f"{BODY_TENSOR!r} must be a 1-D uint8 tensor")
    if body.numel() > MAX_BODY_BYTES:
        raise WireError("too_large", f"secagg body of {body.numel()} bytes > {MAX_BODY_BYTES}")
    try:
        raw = loads_strict(body.numpy().tobytes())
    except (ValueError, RecursionError) as err:
        raise WireError("bad_body", f"secagg body is not JSON: {str(err)[:100]}") from None
    msg = MESSAGE_TYPES[header.stage].from_dict(raw)
    sender = getattr(msg, "client", None)
    if sender is not None and sender != header.client:
        raise WireError("wrong_client", f"{sender} in a message of {header.client}")
    return header, msg


def masked_tensors(msg: MaskedInput) -> dict[str, torch.Tensor]:
    return {"y": to_wire(msg.y)}


def masked_input(header: UpdateHeader, tensors: Mapping[str, Any], words: int) -> MaskedInput:
    """The masked vector inside an update with codec ``secagg`` (untrusted)."""
    if header.codec != SECAGG_CODEC:
        raise WireError("wrong_codec", f"{header.codec!r}: secure aggregation expects "
                        f"{SECAGG_CODEC!r}")
    if set(tensors) != {"y"}:
        raise WireError("unexpected_tensor", f"expected only 'y', got {sorted(tensors)[:5]}")
    y = tensors["y"]
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int32 or tuple(y.shape) != (words,):
        raise WireError("bad_tensor", f"'y' must be int32 of shape ({words},)")
    return MaskedInput(header.client, from_wire(y))
