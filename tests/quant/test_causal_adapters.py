"""Causal language models through quant/: LoRA on each architecture's attention projections
when the configuration names none, no head among the adapter tensors, and the quantized base
with its output layer kept in full precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from fedsa_common.federation.config import FederationConfig, ModelSection
from fedsa_common.federation.split import role
from hub.cloud import initial_global
from quant.adapters import adapter_shapes, build_adapter_model


def causal_spec(path: str | Path, **lora: object) -> ModelSection:
    return ModelSection.model_validate(
        {"task": "causal_lm", "path": str(path), "max_length": 32, "lora": {"r": 4, **lora}})


@pytest.mark.parametrize(("config", "targets"), [
    (LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2), {"q_proj", "v_proj"}),
    (GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2), {"c_attn"}),
])
def test_unset_targets_are_the_architectures_attention_projections(
        tmp_path: Path, config: object, targets: set[str]) -> None:
    config.save_pretrained(tmp_path)  # type: ignore[attr-defined]
    shapes = adapter_shapes(causal_spec(tmp_path), 0)
    modules = {name.split(".")[-3] for name in shapes}
    assert modules == targets
    assert {role(n) for n in shapes} == {"lora_A", "lora_B"}  # no head
    assert len(shapes) == 2 * 2 * len(targets)  # A and B per target and layer


def test_targets_the_model_lacks_name_the_field(tmp_path: Path) -> None:
    LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules"):
        adapter_shapes(causal_spec(tmp_path, target_modules=["query"]), 0)


@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_tiny_causal_quantizes_its_layers_and_keeps_its_output_layer(precision: str) -> None:
    spec = causal_spec("tiny-causal").model_copy(update={"precision": precision})
    adapter = build_adapter_model(spec, 0, seed=3, init="b_random")
    assert adapter.causal
    assert adapter.shapes() == adapter_shapes(spec, 0)
    base = adapter.model.get_base_model()
    assert type(base.lm_head) is torch.nn.Linear  # not quantized
    kind = "Linear4bit" if precision == "nf4" else "Linear8bitLt"
    assert type(base.model.layers[0].mlp.down_proj).__name__ == kind
    ids = torch.tensor([[adapter.tokenizer.bos_token_id, 2000, 2001]])
    logits = adapter.model(input_ids=ids).logits
    assert logits.shape == (1, 3, adapter.tokenizer.vocab_size)
    assert torch.isfinite(logits).all()


def test_the_cloud_starts_from_the_lora_tensors_alone() -> None:
    config = FederationConfig.model_validate(
        {"model": {"task": "causal_lm", "path": "tiny-causal"}})
    start = initial_global(config)
    assert start and all(role(n) == "lora_A" for n in start)  # fedsa shares A only
    assert all(torch.count_nonzero(t) == 0 for t in start.values())  # b_random: A at zero
