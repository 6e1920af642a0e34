"""Personalization of local training (``fedsa_lora.personalization``).

* Proximal term (FedProx): ``mu * (w - global)`` is added to the gradient of every shared
  tensor, anchored at the round's announced global values, so a device on skewed data
  drifts less from the federation.  Local tensors (B under FedSA-LoRA, the head) are free.
* Local fine-tuning: after the round's update has been computed (the shared delta is
  already fixed and is not affected), ``finetune_steps`` more steps train only the
  device's *local* trainable tensors and its head on its own data, before it evaluates.
  This adapts B and the head to the freshly aggregated shared parameters the device will
  hold next.  While the head is shared (``share_head_rounds``) the fine-tuned head is only
  evaluated, not kept: the next round starts from the global head again (a shared head
  plus local fine-tuning, as FedBABU evaluates).
* Per-FedAvg (``meta: per_fedavg``, edge_client/meta.py): local training meta-trains for
  that fine-tuning, its inner step adapting the same tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from edge_client.meta import PerFedAvg
from edge_client.microbatch import MicroBatchPlanner
from edge_client.training import Proximal, TokenizedSplit, TrainResult, train_steps
from fedsa_common.federation.adaptive_split import head_names
from fedsa_common.federation.config import FederationConfig
from quant.adapters import AdapterModel


def proximal_for(config: FederationConfig, anchors: Mapping[str, torch.Tensor]
                 ) -> Proximal | None:
    """The proximal term of this round (None when mu is 0 or nothing is shared)."""
    mu = config.fedsa_lora.personalization.proximal_mu
    if mu <= 0 or not anchors:
        return None
    return Proximal(mu, {n: t.detach().to(torch.float32) for n, t in anchors.items()})


def adapted_names(local: Sequence[str], trainable: Sequence[str]) -> list[str]:
    """The tensors a device adapts on its own data before it evaluates: its local
    trainable tensors and its head (B and the head under fedsa)."""
    return sorted((set(local) | set(head_names(trainable))) & set(trainable))


def meta_for(config: FederationConfig, local: Sequence[str], trainable: Sequence[str]
             ) -> PerFedAvg | None:
    """This round's Per-FedAvg step (None unless ``meta: per_fedavg``): its inner step
    adapts what ``finetune_local`` adapts (edge_client/meta.py says why)."""
    personal = config.fedsa_lora.personalization
    if personal.meta != "per_fedavg":
        return None
    return PerFedAvg(personal.inner_lr, frozenset(adapted_names(local, trainable)))


def finetune_local(adapter: AdapterModel, data: TokenizedSplit, config: FederationConfig,
                   local: Sequence[str], trainable: Sequence[str], *, seed: int,
                   planner: MicroBatchPlanner | None = None) -> TrainResult | None:
    """Train only the local trainable tensors and the head for ``finetune_steps`` steps
    (None when there are no steps or no such tensors).  Leaves only those tensors
    trainable; the caller re-enables the rest."""
    steps = config.fedsa_lora.personalization.finetune_steps
    names = adapted_names(local, trainable)
    if steps <= 0 or not names:
        return None
    tr = config.training
    adapter.set_trainable(names)
    return train_steps(adapter, data, steps=steps, batch_size=tr.batch_size, lr=tr.lr,
                       head_lr=tr.head_lr, b_lr_ratio=tr.b_lr_ratio,
                       weight_decay=tr.weight_decay, seed=seed,
                       planner=planner, autocast=tr.autocast,
                       gradient_checkpointing=tr.gradient_checkpointing)
