"""The shapes benchmarks/causal_memory.py builds its 0.5B-1B models from: they must be the
real models' (its memory figures stand for Qwen2.5-0.5B and Llama-3.2-1B), and the formula's
parameter counts must be what transformers and peft actually build.  Models are built on
the meta device: no weights are allocated."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM

from benchmarks.causal_memory import SHAPES, Shape, model_config, predicted_peak_mb
from fedsa_common.federation.config import ModelSection
from quant.adapters import with_lora

IDS = {"bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0}
PUBLISHED = {"qwen2.5-0.5b": 494_032_768, "llama-3.2-1b": 1_235_814_400}  # model cards


def meta_model(shape: Shape) -> torch.nn.Module:
    """As loaded: from_pretrained ties the output layer to the embedding; a meta build does
    not until asked."""
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(model_config(shape, IDS))
    model.tie_weights()
    return model


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_shapes_have_the_published_parameter_count(name: str) -> None:
    built = sum(p.numel() for p in meta_model(SHAPES[name]).parameters())  # tied: once
    assert abs(built - PUBLISHED[name]) <= 0.01 * PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_formula_counts_what_transformers_and_peft_build(name: str) -> None:
    shape = SHAPES[name]
    model = meta_model(shape)
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.startswith("model.layers."))
    assert shape.linear_parameters() == linear
    peft = with_lora(model, ModelSection(task="causal_lm", path="tiny-causal"))
    lora = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert shape.lora_parameters(8) == lora


def test_prediction_orders_precisions_and_checkpointing() -> None:
    shape = SHAPES["qwen2.5-0.5b"]
    got = {p: predicted_peak_mb(shape, p, 1, 256, False, runtime_mb=400)
           for p in ("fp32", "int8", "nf4")}
    assert got["fp32"]["pred_weights_mb"] == round(shape.parameters() * 4 / 2**20)
    assert got["nf4"]["predicted_mb"] < got["int8"]["predicted_mb"] < got["fp32"]["predicted_mb"]
    on = predicted_peak_mb(shape, "nf4", 1, 256, True, runtime_mb=400)
    assert on["pred_activations_mb"] < got["nf4"]["pred_activations_mb"]
    four = predicted_peak_mb(shape, "nf4", 4, 256, False, runtime_mb=400)
    assert four["pred_activations_mb"] == pytest.approx(4 * got["nf4"]["pred_activations_mb"],
                                                        abs=2)
