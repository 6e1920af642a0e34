"""Which codec, with which parameters, a round accepts; and the check of what an update
declares (pure, no I/O).

A regional hub accepts exactly the codec the round announced, with the announced
parameters, or ``dense`` with none.  Decoding always uses the announced parameters, never
the header's, so an update cannot choose how the hub reads it.  For ``randk`` the
parameters include the round's seed, which the device derives from the same (federation
seed, round): an update whose declared seed is not the round's would scatter its values
onto the wrong coordinates and is refused as ``wrong_seed``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.codec import DeltaCodec, get_codec
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader


def announced_codec(header: AnnounceHeader) -> tuple[str, dict[str, Any]]:
    """(codec, parameters incl. the round's seed) that the announcement asks devices for."""
    try:
        config = FederationConfig.model_validate(header.config)
    except ValidationError as err:
        raise WireError("bad_header", f"announced config: {str(err)[:200]}") from None
    comp = config.fedsa_lora.compression
    return comp.codec, comp.round_codec_params(config.federation.seed, header.round)


def check_declared(header: UpdateHeader, codec: str,
                   params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters to decode ``header``'s update with; raises ``unexpected_codec``,
    ``wrong_seed`` or ``bad_codec_params`` when it declares anything but the round's codec
    (with exactly its parameters) or ``dense`` (with none)."""
    if header.codec == codec:
        expected = dict(params)
    elif header.codec == "dense":
        expected = {}
    else:
        raise WireError("unexpected_codec", f"{header.codec!r}, round announced {codec!r}")
    declared = header.codec_params
    if "seed" in expected and declared.get("seed") != expected["seed"]:
        raise WireError("wrong_seed", f"{declared.get('seed')!r} is not round "
                                      f"{header.round}'s seed")
    if declared != expected or _canonical(declared) != _canonical(expected):
        raise WireError("bad_codec_params", f"{_canonical(declared)[:200]} != announced "
                                            f"{_canonical(expected)[:200]}")
    return expected


def codec_for(name: str, params: Mapping[str, Any]) -> DeltaCodec:
    """The codec for announced parameters, built once per (name, parameters)."""
    try:
        return _build(name, _canonical(params))
    except ValueError as err:
        raise WireError("bad_codec_params", str(err)) from None


def _canonical(params: Mapping[str, Any]) -> str:
    """JSON with sorted keys: tells ``True`` from ``1`` and ``1.0`` from ``1``, which a
    dict comparison does not."""
    return json.dumps(params, sort_keys=True, default=str)


@lru_cache(maxsize=64)
def _build(name: str, params_json: str) -> DeltaCodec:
    return get_codec(name, **json.loads(params_json))
