"""Base-model loading (bitsandbytes) and LoRA adapters; the delta codecs are wire formats
and live in ``fedsa_common.wire.codec`` below this package."""
