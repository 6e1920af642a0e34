"""Optional zstd over the whole body of an update, decompressed within a hard bound.

The codec's wire tensors are serialised exactly as a message body would be (safetensors)
and compressed into one uint8 tensor named ``zstd``.  Compressing the body rather than
each tensor also squeezes the safetensors header, whose JSON names are most of a small
update.  The receiver never trusts the frame: it must declare its decompressed size, which
must not exceed a limit the receiver computes from the expected shapes (so a zip bomb is
refused before any memory is spent), it must be a single frame with nothing after it, and
the decompressed body gets every check a message body gets.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch
import zstandard
from torch import Tensor

from fedsa_common.wire.codecs.common import check_names, require_dtype, require_tensor
from fedsa_common.wire.envelope import pack_tensors, unpack_tensors
from fedsa_common.wire.errors import WireError

ZSTD_TENSOR = "zstd"
ZSTD_LEVEL = 3
MAX_WINDOW = 1 << 24  # refuse frames asking the decoder for a larger history buffer
_LOCAL = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor: building one allocates its whole workspace, which costs
    more than decompressing a small update; one object must not serve two threads at once."""
    d = getattr(_LOCAL, "decompressor", None)
    if d is None:
        d = _LOCAL.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return d


def compress_body(tensors: Mapping[str, Tensor], level: int = ZSTD_LEVEL) -> dict[str, Tensor]:
    """``{"zstd": uint8}`` holding the zstd frame of the tensors' safetensors body."""
    raw = pack_tensors(tensors)
    blob = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    return {ZSTD_TENSOR: torch.frombuffer(bytearray(blob), dtype=torch.uint8)}


def decompress_body(
    tensors: Mapping[str, Tensor], limit: int, max_tensors: int
) -> dict[str, Tensor]:
    """Inverse of :func:`compress_body` for untrusted input; raises only WireError.

    ``limit`` bounds the decompressed size: a frame declaring more is ``zstd_bomb``;
    anything else wrong with the frame is ``bad_zstd``.
    """
    check_names(tensors, {ZSTD_TENSOR})
    blob_t = require_tensor(ZSTD_TENSOR, tensors[ZSTD_TENSOR])
    require_dtype(ZSTD_TENSOR, blob_t, torch.uint8)
    if blob_t.dim() != 1:
        raise WireError("shape_mismatch", f"{ZSTD_TENSOR!r} must be 1-D")
    blob = blob_t.contiguous().numpy().tobytes()
    try:
        frame = zstandard.get_frame_parameters(blob)
    except zstandard.ZstdError as err:
        raise WireError("bad_zstd", f"frame header: {err}") from None
    if frame.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise WireError("bad_zstd", "frame does not declare its decompressed size")
    if frame.content_size > limit:
        raise WireError("zstd_bomb", f"declares {frame.content_size} bytes > limit {limit}")
    try:
        raw = _decompressor().decompress(
            blob, max_output_size=limit, allow_extra_data=False
        )
    except zstandard.ZstdError as err:
        raise WireError("bad_zstd", str(err)) from None
    return unpack_tensors(raw, max_tensors=max_tensors)
