"""Secure-aggregation messages in the fedsa envelope (JSON header, safetensors body).

Key, share and unmasking messages travel on the region's ``secagg/up/<client>`` and
``secagg/down/<client>`` topics (``Topics.secagg_up``/``secagg_down``) with the message
in the header's ``body`` (bytes as base64) and an empty tensor body.  The masked vector
itself travels as an ordinary update on ``update/<client>`` with codec ``secagg`` and one
int32 tensor ``y`` (the words' bits), so it gets the update path's persistence,
acknowledgement and resends.  Its header says ``num_samples: 1`` and no loss or time: the
real weight is inside the masked vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field

from fedsa_common.errors import WireError
from fedsa_common.protocol import NAME_RE, Header, UpdateHeader, decode_message, encode_message
from fedsa_common.secagg.fixed_point import from_wire, to_wire
from fedsa_common.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    Roster,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    to_json,
)

SECAGG_CODEC = "secagg"
Stage = Literal["advertise", "roster", "share_keys", "share_delivery", "unmask_request",
                "unmask_response"]
UP_STAGES = frozenset({"advertise", "share_keys", "unmask_response"})
MESSAGE_TYPES: dict[str, Any] = {
    "advertise": AdvertiseKeys,
    "roster": Roster,
    "share_keys": ShareKeys,
    "share_delivery": ShareDelivery,
    "unmask_request": UnmaskRequest,
    "unmask_response": UnmaskResponse,
}
Message = AdvertiseKeys | Roster | ShareKeys | ShareDelivery | UnmaskRequest | UnmaskResponse


class SecAggHeader(Header):
    """One secure-aggregation message; ``client`` is the device (sender going up,
    recipient going down)."""

    kind: Literal["secagg"] = "secagg"
    region: str = Field(pattern=NAME_RE)
    client: str = Field(pattern=NAME_RE)
    stage: Stage
    body: dict[str, Any]


def encode(federation: str, round_: int, region: str, client: str, stage: str,
           msg: Message) -> bytes:
    header = SecAggHeader(federation=federation, round=round_, region=region, client=client,
                          stage=stage, body=to_json(msg.to_dict()))
    return encode_message(header, {})


def decode(data: bytes, max_bytes: int) -> tuple[SecAggHeader, Message]:
    """Parse untrusted bytes; raises WireError (SecAggError for a bad body)."""
    header, env = decode_message(SecAggHeader, data, max_bytes=max_bytes)
    if env.tensors:
        raise WireError("unexpected_tensor", "secagg messages carry no tensors")
    msg = MESSAGE_TYPES[header.stage].from_dict(header.body)
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
