"""Delta codecs, one concern per module.

``common`` (the codec protocol and the checks every decoder shares), ``sparsify`` (which
coordinates a device sends: top-k or a seeded random-k), ``values`` (fp32/fp16/int8/int4
with per-tensor or per-block scales), ``indices`` (delta-varint and bitmap index
encodings), ``zbody`` (optional bounded zstd over the whole body), ``dense`` and
``topk_int8`` (the two original codecs), ``sparse`` (the configurable top-k/random-k codec)
and ``registry`` (names -> codecs).  ``fedsa_common.wire.codec`` re-exports the public names.
"""
