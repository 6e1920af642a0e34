"""Delta codecs: how a device's change to the shared LoRA parameters goes on the wire.

A device sends ``delta`` = (its shared parameters) - (the global version it trained
from). Codecs trade accuracy for bytes; lossy ones keep an error-feedback *residual* on
the device and add it to the next round's delta, so nothing is lost for good, only
delayed (the sum of what was sent tracks the sum of true deltas).

The implementation lives in ``fedsa_common.wire.codecs`` (one module per concern); this
module is the stable import point.  Everything is pure tensor code with no I/O. ``decode``
runs on the hub over untrusted tensors and raises only
:class:`~fedsa_common.wire.errors.WireError`; ``encode`` runs on the device over our own
tensors and raises plain ``ValueError``.

Wire layout per codec (tensor names in the envelope body, ``meta`` in the header as
``codec_meta``; ``N`` is a parameter name, k = ``topk_count(numel, ratio)`` per tensor):

* ``dense``: ``{N: float32 tensor}``; meta ``{}``.  Lossless; always accepted.
* ``topk_int8`` (original): ``N.idx`` (uint16, or int32 above 65,536 elements),
  ``N.val`` (int8 [k]), ``N.scale`` (float32 [1]); meta ``{"ratio": ratio}``.
* ``topk`` / ``randk`` (params ``ratio``, ``values`` fp32|fp16|int8|int4, ``block_size``,
  ``zstd``; randk also ``seed``): a *flat* layout, at most three tensors for the whole
  update.  The parameters are laid end to end in sorted-name order (``codecs.layout``);
  each tensor still sends its own k coordinates (its top-k, or its random-k from the seed)
  and K is their sum.  ``val``: the K values in flat-position order (float32/float16/int8
  [K], or uint8 [ceil(K/2)] for int4); ``scale`` (int8/int4 only): float32, one per tensor
  or per block of ``block_size`` values within a tensor; for topk when K < total one
  index over flat positions, ``idx.varint`` or ``idx.bitmap`` (uint8), whichever is
  smaller; randk sends no index.  With ``zstd`` the whole body is one uint8 tensor
  ``zstd``.  meta ``{}``.  Flat because a hub decodes every update of every device: per
  tensor, the cost was a dozen small operations and a ~100-byte safetensors header entry
  each; flat, a fixed number of operations per update, and the header entries are gone
  from the bytes.
"""

from __future__ import annotations

from fedsa_common.wire.codecs.common import DeltaCodec, EncodedDelta
from fedsa_common.wire.codecs.dense import DenseCodec
from fedsa_common.wire.codecs.registry import CODECS, SEEDED_CODECS, get_codec, round_codec_params
from fedsa_common.wire.codecs.sparse import RandKCodec, SparseCodec, TopKCodec
from fedsa_common.wire.codecs.sparsify import randk_support, round_seed, topk_count
from fedsa_common.wire.codecs.topk_int8 import UINT16_MAX_NUMEL, TopKInt8Codec, index_dtype
from fedsa_common.wire.codecs.values import VALUE_FORMATS

__all__ = [
    "CODECS",
    "SEEDED_CODECS",
    "UINT16_MAX_NUMEL",
    "VALUE_FORMATS",
    "DeltaCodec",
    "DenseCodec",
    "EncodedDelta",
    "RandKCodec",
    "SparseCodec",
    "TopKCodec",
    "TopKInt8Codec",
    "get_codec",
    "index_dtype",
    "randk_support",
    "round_codec_params",
    "round_seed",
    "topk_count",
]
