"""A personal classification head beside the shared one (FedRoD; Chen & Chao, ICLR 2022).

The model's logits are the shared head's plus the personal head's.  The two are trained
with separate losses, as FedRoD does: the shared model (the body's LoRA and the shared head)
with the loss of the shared logits alone, and the personal head with the loss of the sum,
the shared logits and the body's features held fixed.  Trained on the sum together, the
personal head would take over what the device's few texts can explain and the shared parts
would get little of the gradient: on the data-scarce bench (~32 texts a device) that cost
4.7 points (seed 0; docs/benchmarks.md, "A personal head").  Separate, the shared model
trains exactly as it would without a personal head, and the personal head learns only what
the shared logits leave wrong on this device's data.

The personal head is a module of the base model named ``PERSONAL_HEAD``, so its tensors
have the wire names ``personal_head.weight`` and ``.bias`` (role ``personal``: never
shared).  Logits are linear in both heads, so exports fold it into the shared head
(``fold_personal_head``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper

from fedsa_common.federation.split import PERSONAL_HEAD, role
from quant.base_model import HEAD_MODULES

FIELD = "fedsa_lora.personalization.personal_head"


class PersonalHead(torch.nn.Linear):
    """A linear head, initialised at zero (the model starts as the shared head's), that
    keeps the shared logits of the last training forward for ``generic_loss``."""

    def __init__(self, in_features: int, out_features: int, device: torch.device) -> None:
        super().__init__(in_features, out_features, dtype=torch.float32, device=device)
        torch.nn.init.zeros_(self.weight)
        torch.nn.init.zeros_(self.bias)
        self.shared_logits: torch.Tensor | None = None

    def add_to(self, module: torch.nn.Module, args: tuple, logits: torch.Tensor
               ) -> torch.Tensor:
        """Forward hook of the shared head: its logits plus this head's.  In a training
        forward the shared logits and this head's input (the body's features) enter the
        sum detached, so the loss of the sum trains this head only, and the shared logits
        are kept for the shared model's own loss."""
        features = args[0].to(torch.float32)
        if module.training and torch.is_grad_enabled():
            self.shared_logits = logits
            return logits.detach() + self(features.detach()).to(logits.dtype)
        return logits + self(features).to(logits.dtype)

    def generic_loss(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Cross-entropy of the last training forward's shared logits (what the shared
        model trains on), once; None when there was none."""
        logits, self.shared_logits = self.shared_logits, None
        if logits is None:
            return None
        return torch.nn.functional.cross_entropy(logits.float(), labels)


def _head_wrapper(model: PeftModel) -> ModulesToSaveWrapper:
    """The peft wrapper around the classifier's head (``modules_to_save``)."""
    for name in HEAD_MODULES:
        module = getattr(model.get_base_model(), name, None)
        if isinstance(module, ModulesToSaveWrapper):
            return module
    raise ValueError(f"{FIELD}: the model has no classification head among {HEAD_MODULES}")


def add_personal_head(model: PeftModel) -> PersonalHead:
    """Add a personal head beside the classifier's head.  Heads that are one linear layer
    only (BERT's and its relatives'): a head whose output is not linear in its input
    features (RoBERTa's dense + projection) would need a personal copy of its structure."""
    wrapper = _head_wrapper(model)
    head = wrapper.modules_to_save[wrapper.active_adapter]
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{FIELD}: supported for a classification head that is one linear "
                         f"layer, not {type(head).__name__}")
    personal = PersonalHead(head.in_features, head.out_features, head.weight.device)
    model.get_base_model().add_module(PERSONAL_HEAD, personal)
    wrapper.register_forward_hook(personal.add_to)
    return personal


def personal_head_of(model: torch.nn.Module) -> PersonalHead | None:
    """The model's personal head, if it has one."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    head = getattr(base, PERSONAL_HEAD, None)
    return head if isinstance(head, PersonalHead) else None


def fold_personal_head(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same model with the personal head added into the shared head: ``W x + b + W' x
    + b'`` is one head ``(W + W') x + (b + b')``.  What exports write (peft's format and
    ONNX know one head); values without a personal head are returned as they are."""
    out = {n: v for n, v in values.items() if role(n) != "personal"}
    for name, value in values.items():
        if role(name) != "personal":
            continue
        leaf = name.split(".")[-1]
        target = next((f"{h}.{leaf}" for h in HEAD_MODULES if f"{h}.{leaf}" in out), None)
        if target is None:
            raise ValueError(f"{name}: a personal head without a head to fold it into")
        out[target] = out[target] + value.to(out[target].dtype)
    return out
