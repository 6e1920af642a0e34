"""LoRA adapters on the quantized base, addressed by stable wire names.

Every party must agree on the starting point of the shared parameters, so adapter
initialisation is a pure function of (federation seed, parameter name, shape) rather than of
whatever the global torch RNG happened to hold: the cloud computes the initial global A from
shapes alone, and each device computes the same values for itself.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.utils import ModulesToSaveWrapper
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerBase,
)

from fedsa_common.federation.config import LoraInit, ModelSection
from fedsa_common.federation.split import role
from quant.base_model import HEAD_MODULES, load_base_model, resolve_model_path
from quant.personal_head import PersonalHead, add_personal_head, personal_head_of


def wire_name(param_name: str) -> str:
    """``base_model.model.x.lora_A.default.weight`` -> ``x.lora_A.weight``."""
    name = param_name.removeprefix("base_model.model.")
    return ".".join(p for p in name.split(".") if p not in ("default", "modules_to_save"))


def lora_config(spec: ModelSection) -> LoraConfig:
    """LoRA on the configured targets; a classifier's head trains in full
    (``modules_to_save``), a causal model has none.  A causal model's unset targets are
    left to peft, which picks its architecture's attention projections."""
    return LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.target_modules,
        modules_to_save=None if spec.causal else list(HEAD_MODULES),
        task_type="CAUSAL_LM" if spec.causal else "SEQ_CLS",
    )


def with_lora(base: torch.nn.Module, spec: ModelSection) -> PeftModel:
    """``get_peft_model`` whose failure to find targets names the field that sets them."""
    try:
        return get_peft_model(base, lora_config(spec))
    except ValueError as err:
        if "target_modules" in str(err) or "not found in the base model" in str(err):
            model_type = getattr(base.config, "model_type", "?")
            raise ValueError(f"model.lora.target_modules: {err} (model type {model_type!r}; "
                             f"name the attention projections, e.g. [q_proj, v_proj])"
                             ) from None
        raise


def init_adapter_values(
    shapes: Mapping[str, tuple[int, ...]], seed: int, init: LoraInit = "a_random"
) -> dict[str, torch.Tensor]:
    """Deterministic initial adapter values, each from its own seeded generator: head
    weight N(0, 0.02) and bias zero, a personal head zero (the device starts from the
    shared head alone); under ``a_random`` A as peft does (Kaiming-uniform,
    a=sqrt(5)) and B zero; under ``b_random`` A zero and B uniform with the bound peft gives
    A (1/sqrt(width), the width being B's rows), so the adapter's first steps are as large
    as under peft's init rather than r/width times larger."""
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        t = torch.zeros(shape, dtype=torch.float32)
        g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        r = role(name)
        if r == "lora_A" and init == "a_random":
            torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)
        elif r == "lora_B" and init == "b_random":
            bound = 1.0 / math.sqrt(shape[0])
            t.uniform_(-bound, bound, generator=g)
        elif r == "head" and name.endswith("weight"):
            t.normal_(0.0, 0.02, generator=g)
        out[name] = t
    return out


def adapter_shapes(spec: ModelSection, num_labels: int) -> dict[str, tuple[int, ...]]:
    """Adapter parameter shapes without loading weights (built on the meta device)."""
    from accelerate import init_empty_weights

    path = resolve_model_path(spec.path)
    with init_empty_weights():
        if spec.causal:
            base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        else:
            base = AutoModelForSequenceClassification.from_config(
                AutoConfig.from_pretrained(path, num_labels=num_labels))
        model = with_lora(base, spec)
    return {
        wire_name(n): tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad
    }


class AdapterModel:
    """A quantized base with LoRA whose adapter tensors can be read and swapped by wire name.

    Swapping is what lets one process host several virtual devices over one base: only the
    adapter and head tensors differ between them.
    """

    def __init__(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, max_length: int,
                 causal: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.causal = causal  # a causal language model (no head) rather than a classifier
        self.params: dict[str, torch.nn.Parameter] = {
            wire_name(n): p for n, p in model.named_parameters() if p.requires_grad
        }
        self.personal_head: PersonalHead | None = personal_head_of(model)

    def generic_loss(self, labels: torch.Tensor) -> torch.Tensor | None:
        """With a personal head, the shared model's own loss on the last training forward
        (quant/personal_head.py says why it is separate); None without one."""
        return None if self.personal_head is None else self.personal_head.generic_loss(labels)

    @property
    def names(self) -> list[str]:
        return sorted(self.params)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    def get(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        keys = self.names if names is None else names
        return {n: self.params[n].detach().to(torch.float32).clone() for n in keys}

    @torch.no_grad()
    def set(self, values: Mapping[str, torch.Tensor]) -> None:
        for name, value in values.items():
            param = self.params[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))

    def set_trainable(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name, param in self.params.items():
            param.requires_grad_(name in keep)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.params.items() if p.requires_grad}

    def enable_all(self) -> None:
        self.set_trainable(self.params)


def keep_4bit_layout_trainable(model: torch.nn.Module) -> None:
    """bitsandbytes (0.50) repacks 4-bit weights into an inference-only CPU layout on the
    first eval-mode forward on AVX512-BF16 CPUs and never packs them back, after which
    training through the layer fails.  Devices alternate training and evaluation, so the
    repacking is switched off."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _floating_inputs_to_fp32(_module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def keep_head_fp32(model: torch.nn.Module) -> None:
    """Train the head in fp32 on an fp16/bf16 base, as peft already does for LoRA.

    Its trainable copy would otherwise be half precision: AdamW's eps (1e-8) underflows to
    zero in fp16, so parameters without gradient get 0/0 = NaN updates, and small bf16
    updates round away.  The head's input is cast up to match."""
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            for head in module.modules_to_save.values():
                head.float()
                head.register_forward_pre_hook(_floating_inputs_to_fp32)


def set_gradient_checkpointing(model: PeftModel, on: bool) -> None:
    """Switch activation checkpointing of the base's layers on or off (training only).

    On, each transformer layer keeps only its input for backward and recomputes its
    activations there: the training peak drops from all layers' activations to one layer's
    plus the layer inputs, for one more forward pass of compute.  Non-reentrant checkpointing
    (torch's recommended kind) replays dropout with the same random state, so gradients are
    those without it, and needs no input that requires grad.  Evaluation is unaffected
    (transformers checkpoints in training mode only)."""
    base = model.get_base_model()
    if on == base.is_activation_checkpointing:
        return
    if on:
        base.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.activation_checkpointing_disable()
        base.disable_input_require_grads()  # enable's hook (needed by reentrant checkpoints)


def build_adapter_model(spec: ModelSection, num_labels: int, seed: int,
                        init: LoraInit = "a_random", *,
                        personal_head: bool = False) -> AdapterModel:
    """The device's model (a causal model ignores ``num_labels``), with a personal head
    when asked (``add_personal_head``); activation checkpointing is off here and chosen per
    training run (``set_gradient_checkpointing``, from ``training.gradient_checkpointing``)."""
    base, tokenizer = load_base_model(spec.path, num_labels, spec.precision, spec.task)
    keep_4bit_layout_trainable(base)
    if spec.precision in ("nf4", "fp4", "int8"):
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = with_lora(base, spec)
    if spec.precision in ("fp16", "bf16"):
        keep_head_fp32(model)
    if personal_head:
        add_personal_head(model)
    adapter = AdapterModel(model, tokenizer, spec.max_length, causal=spec.causal)
    adapter.set(init_adapter_values(adapter.shapes(), seed, init))
    return adapter
