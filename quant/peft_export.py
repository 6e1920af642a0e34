"""Adapters in peft's own format, for the Hugging Face ecosystem outside this kit.

A device's personalized model is the base plus LoRA (A and B, each global or its own, by the
algorithm) plus, for a classifier, its classification head.  peft writes exactly that with
``save_pretrained``: ``adapter_config.json`` (rank, alpha, target modules, the task type,
``SEQ_CLS`` with ``modules_to_save`` naming the head or ``CAUSAL_LM`` without one) and
``adapter_model.safetensors`` (LoRA tensors and any head), which
``peft.PeftModel.from_pretrained(base, dir)`` loads onto the same Hugging Face base
(``AutoModelForSequenceClassification`` or ``AutoModelForCausalLM``, as ``fedsa.json``'s
``task`` says).  So the
files are written by peft itself from a peft model rebuilt around the saved values, never by
hand-mapping key names, and stay whatever format the installed peft reads.

The model is rebuilt on a full-precision base: the adapter tensors do not depend on the
base's storage, and a loader picks its own (the sidecar ``fedsa.json`` names the precision
the device trained with and the bitsandbytes settings that reproduce its base exactly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedsa_common.federation.config import ModelSection, Task
from fedsa_common.process.atomic import write_json
from quant.adapters import AdapterModel, with_lora
from quant.base_model import load_base_model, quantization_config

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SIDECAR = "fedsa.json"


@dataclass(frozen=True)
class PeftExport:
    directory: Path
    config: Path
    weights: Path
    sidecar: Path
    tensors: int  # adapter tensors written (LoRA and any head)


def fp32_adapter(spec: ModelSection, num_labels: int,
                 values: Mapping[str, torch.Tensor]) -> AdapterModel:
    """The adapter model with ``values`` (every adapter tensor, by wire name) on an fp32 base,
    in eval mode (a causal model ignores ``num_labels``); ValueError names tensors that the
    model lacks or that are missing."""
    spec = spec.model_copy(update={"precision": "fp32"})
    base, tokenizer = load_base_model(spec.path, num_labels, "fp32", spec.task)
    adapter = AdapterModel(with_lora(base, spec), tokenizer, spec.max_length,
                           causal=spec.causal)
    missing = sorted(set(adapter.names) - set(values))
    unknown = sorted(set(values) - set(adapter.names))
    if missing or unknown:
        raise ValueError(f"saved parameters do not fit the model {spec.path!r}: missing "
                         f"{missing[:3]}, unknown {unknown[:3]}")
    adapter.set(values)
    adapter.model.eval()
    return adapter


def bnb_settings(precision: str, task: Task = "classification") -> dict[str, Any] | None:
    """The bitsandbytes settings of a ``task`` base at ``precision`` as a plain dict (None:
    none), for a loader to pass to ``transformers.BitsAndBytesConfig(**settings)``."""
    config = quantization_config(precision, task)  # type: ignore[arg-type]
    if config is None:
        return None
    keys = (("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype",
             "llm_int8_skip_modules") if config.load_in_4bit
            else ("load_in_8bit", "llm_int8_skip_modules"))
    out = {k: getattr(config, k) for k in keys}
    if "bnb_4bit_compute_dtype" in out:
        out["bnb_4bit_compute_dtype"] = str(out["bnb_4bit_compute_dtype"]).removeprefix("torch.")
    return out


def save_peft_adapter(adapter: AdapterModel, out: Path, *, base_name: str | None = None,
                      meta: Mapping[str, Any] | None = None) -> PeftExport:
    """Write ``adapter`` to the directory ``out`` with peft's ``save_pretrained``, the
    tokenizer beside it, and ``fedsa.json`` (``meta`` plus what a loader needs to know).

    ``base_name`` is recorded as ``base_model_name_or_path`` (e.g. a Hub id of the same
    weights); by default the local path the model was loaded from."""
    out = Path(out)
    config = adapter.model.peft_config["default"]
    if base_name is not None:
        config.base_model_name_or_path = base_name
    adapter.model.save_pretrained(str(out))
    adapter.tokenizer.save_pretrained(str(out))
    base = adapter.model.get_base_model()
    write_json(out / SIDECAR, {
        "format": "peft-lora",
        "task": "causal_lm" if adapter.causal else "classification",
        "base_model": config.base_model_name_or_path,
        "num_labels": None if adapter.causal else int(base.config.num_labels),
        "max_length": adapter.max_length,
        **dict(meta or {}),
    })
    return PeftExport(directory=out, config=out / ADAPTER_CONFIG, weights=out / ADAPTER_WEIGHTS,
                      sidecar=out / SIDECAR, tensors=len(adapter.params))
