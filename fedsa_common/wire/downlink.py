"""How a receiver turns a downlink delta into the global shared parameters.

One function, used by the cloud when it defines the new global (hub/downlink.py) and by
every device that applies an announcement's delta (edge_client/downlink.py), so both
compute ``base + decode(delta)`` with the same operations in the same order, in float32,
and agree bit for bit (``fedsa_common.wire.protocol.params_digest`` lets a device check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader
from fedsa_common.wire.tensors import Tensors


def decode_delta(codec: str, params: Mapping[str, Any], meta: Mapping[str, Any],
                 tensors: Tensors, shapes: Mapping[str, tuple[int, ...]]
                 ) -> dict[str, torch.Tensor]:
    """The change an encoded delta carries (float32, names and shapes of ``shapes``).

    Raises WireError when it does not decode or its parameters do not build the codec
    (``bad_codec_params``)."""
    try:
        decoder = get_codec(codec, **dict(params))
    except WireError:
        raise
    except ValueError as err:
        raise WireError("bad_codec_params", str(err)[:200]) from None
    return decoder.decode(tensors, meta, shapes)


def announced_delta(header: AnnounceHeader, tensors: Tensors) -> dict[str, torch.Tensor]:
    """The change a delta announcement carries (``header.is_delta``), decoded."""
    if header.delta_codec is None or header.shapes is None:
        raise WireError("bad_header", "not a delta announcement")
    return decode_delta(header.delta_codec, header.delta_params or {},
                        header.delta_meta or {}, tensors,
                        {n: tuple(s) for n, s in header.shapes.items()})


def apply_delta(base: Tensors, codec: str, params: Mapping[str, Any], meta: Mapping[str, Any],
                tensors: Tensors, shapes: Mapping[str, tuple[int, ...]]
                ) -> dict[str, torch.Tensor]:
    """``base`` moved by the encoded delta (``codec`` with ``params``, its ``meta`` and body
    ``tensors``) of the tensors in ``shapes``.

    Raises WireError as ``decode_delta``, and ``shape_mismatch`` when ``base`` lacks a
    tensor or has another shape."""
    for name, shape in shapes.items():
        held = base.get(name)
        if held is None or tuple(held.shape) != tuple(shape):
            raise WireError("shape_mismatch", f"base of {name[:80]!r} missing or of another "
                                              "shape")
    decoded = decode_delta(codec, params, meta, tensors, shapes)
    return {n: (base[n].to(torch.float32) + decoded[n].to(torch.float32)).contiguous()
            for n in shapes}
