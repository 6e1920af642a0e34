"""First-order Per-FedAvg (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020) as a local step
(``fedsa_lora.personalization.meta: per_fedavg``).

Per-FedAvg trains the federation's parameters θ to be a good starting point for one step of
adaptation on a device's own data: it minimises ``f_i(θ - α ∇f_i(θ))`` rather than
``f_i(θ)``.  Its first-order version takes two mini-batches per local step:

1. the inner step, on a copy: ``θ' = θ - α ∇L(θ; D1)``;
2. the outer gradient ``∇L(θ'; D2)``, evaluated at θ' but applied to θ by the round's
   optimizer at its normal rates (the Hessian term of the exact meta-gradient is dropped).

Which tensors the inner step moves: the ones the device adapts before it evaluates, i.e.
``finetune_local``'s set (its local trainable tensors and the head: B and the head under
FedSA-LoRA, the head under FedIT and FFA).  Per-FedAvg's point is that the adaptation it
meta-trains for is the one the device then performs (``finetune_steps`` after the
update), so the inner step mirrors it; moving the shared A too would train for an
adaptation that never happens.  The outer gradient is applied to every trainable tensor:
the shared ones (A, a shared head) are the meta-learned start whose delta is uploaded as
usual; the local B has no other training within the round and learns its pre-adaptation
value the same way, which the fine-tuning then adapts.

The inner rate of each tensor is α times its rate's ratio to the LoRA rate (``head_lr /
lr`` for the head, ``b_lr_ratio`` for B), as the fine-tuning trains them, and does not
follow the round's decay or schedule: the adaptation at evaluation does not either.

Everything here works on parameters and ``.grad`` only, so micro-batching, gradient
checkpointing and the out-of-memory retry of edge_client/training.py are untouched: the
two backward passes are its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class PerFedAvg:
    """The meta step's settings: the inner rate α (of the LoRA tensors) and the tensors
    the inner step adapts."""

    inner_lr: float
    adapted: frozenset[str]

    def inner_rates(self, rates: Mapping[str, float], lr: float) -> dict[str, float]:
        """Each adapted tensor's inner rate: α scaled like its optimizer rate ``rates[n]``
        relative to the LoRA rate ``lr`` (tensors not in ``rates`` are not trained)."""
        return {n: self.inner_lr * rates[n] / lr for n in sorted(self.adapted) if n in rates}


def inner_values(values: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
                 rates: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """θ' = θ - rate * grad for each tensor in ``rates`` that has a gradient."""
    return {n: values[n] - rate * grads[n].to(values[n].dtype)
            for n, rate in rates.items() if n in grads}


def meta_backward(params: Mapping[str, torch.nn.Parameter], rates: Mapping[str, float],
                  inner: Callable[[], object], outer: Callable[[], T]) -> T:
    """One first-order meta step's gradients: ``inner()`` leaves ∇L(θ; D1) in ``.grad``;
    the tensors in ``rates`` then move to θ', all gradients are cleared, ``outer()``
    leaves ∇L(θ'; D2) in ``.grad`` (for every trainable tensor, with the adapted ones at
    θ'), and the adapted tensors return to θ.  Returns what ``outer()`` returns; the
    caller's optimizer then applies the gradient to θ."""
    inner()
    grads = {n: p.grad for n, p in params.items() if p.grad is not None}
    with torch.no_grad():
        saved = {n: params[n].detach().clone() for n in rates if n in grads}
        for n, value in inner_values(saved, grads, rates).items():
            params[n].copy_(value)
    for p in params.values():
        p.grad = None
    try:
        return outer()
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)
