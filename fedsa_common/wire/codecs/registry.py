"""Codec names -> codecs, and the per-round parameters a device sends and a hub expects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedsa_common.wire.codecs.common import DeltaCodec
from fedsa_common.wire.codecs.dense import DenseCodec
from fedsa_common.wire.codecs.sparse import RandKCodec, TopKCodec
from fedsa_common.wire.codecs.sparsify import round_seed
from fedsa_common.wire.codecs.topk_int8 import TopKInt8Codec
from fedsa_common.wire.errors import WireError

_FACTORIES: dict[str, Any] = {
    "dense": DenseCodec,
    "topk_int8": TopKInt8Codec,
    "topk": TopKCodec,
    "randk": RandKCodec,
}
#: Names accepted by :func:`get_codec`.
CODECS: tuple[str, ...] = tuple(_FACTORIES)
#: Codecs whose parameters include the round's shared seed.
SEEDED_CODECS: frozenset[str] = frozenset({"randk"})


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
    except TypeError as exc:  # unexpected or missing keyword argument
        raise ValueError(f"bad parameters for codec {name!r}: {exc}") from None
    return codec


def round_codec_params(
    codec: str, params: Mapping[str, Any], federation_seed: int, round_: int
) -> dict[str, Any]:
    """``params`` as sent in round ``round_``: seeded codecs get the round's seed.

    The device builds its codec from this and the hub computes the same to check the
    update's declared parameters, so both ends derive the seed the same way.
    """
    out = dict(params)
    if codec in SEEDED_CODECS:
        out["seed"] = round_seed(federation_seed, round_)
    return out
