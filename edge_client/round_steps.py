"""The steps of one device round, each with one job; ``Device.train_round`` runs them in
order (edge_client/device.py), and keeps to itself what needs its session, its state
directory or its data.

1. plan the split (``plan_round``): which tensors are shared and which stay local this
   round, which the device trains, and the announced global values of the shared ones;
2. start values (``start_model``, ``own_shared_start``): the adapter at the round's global
   model, then shared tensors that were local here at their own value (adaptive split);
3. train (``train_shared``): the round's local training, at its seed and learning rate;
4. build the update: the trained change of the shared tensors (``shared_delta``), then
   ``prepare_update`` (edge_client/update_build.py, shared with the light devices of a load
   run): the update steps (DP, the hooks), the codec with its error-feedback residual and
   the header.  Secure-aggregation masking comes last, by ``DeviceSecAgg.masked_update``
   (edge_client/secagg_client.py), which holds the round's keys;
5. evaluate (``score_model``: accuracy, or for a causal language model exact match, loss
   and perplexity), the next local state (``next_state``) and the round's metrics
   (``round_metrics``).

Steps are pure (values in, values out: no MQTT, no files) except those that move the
adapter (``start_model``, ``train_shared``), which the caller runs under its model host's
lock.  Each is a function of its own so that the device reads as the sequence; the order
that matters in building the update (DP before the codec, a simulated attack after DP) is
kept in ``prepare_update``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from edge_client.causal import evaluate_causal
from edge_client.microbatch import MicroBatchPlanner
from edge_client.personalize import meta_for, proximal_for
from edge_client.schedule import local_steps_for, round_lr_scale
from edge_client.split_state import round_split, shared_start
from edge_client.state import DeviceState
from edge_client.training import StepInfo, TokenizedSplit, TrainResult, evaluate, train_steps
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role, trainable_names
from fedsa_common.wire.protocol import AnnounceHeader, Metrics
from fedsa_common.wire.tensors import Tensors
from quant.adapters import AdapterModel


# 1. plan the split --------------------------------------------------------------------
@dataclass(frozen=True)
class RoundPlan:
    shared: list[str]
    local: list[str]
    trainable: list[str]
    global_shared: dict[str, torch.Tensor]  # the announced values of ``shared``, float32

    @property
    def evaluates_global(self) -> bool:
        """Whether the round's global model is worth evaluating (``has_global_model``)."""
        return has_global_model(self.local, self.trainable)


def plan_round(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]],
               header: AnnounceHeader, tensors: Tensors, config: FederationConfig
               ) -> RoundPlan:
    """The announced split (adaptive or fixed), validated (``WireError`` when this device
    refuses it: see edge_client/split_state.py), and what the device trains."""
    shared, local = round_split(names, header.shared, tensors, shapes, config, header.round)
    return RoundPlan(shared, local, trainable_names(names, config.fedsa_lora.algorithm),
                     {n: tensors[n].to(torch.float32) for n in shared})


def has_global_model(local: list[str], trainable: list[str]) -> bool:
    """Whether the round's global parameters are a whole model, up to the device's head.

    True when no LoRA parameter the device trains stays local (fedit shares A and B; ffa
    shares B and keeps A frozen at the common seeded initialisation, identical on every
    device).  Then the announced global LoRA with this device's own head is worth evaluating
    as the "global" accuracy; under fedsa (B local) and local there is no such model.
    """
    trained = set(trainable)
    return not any(role(n) in ("lora_A", "lora_B") for n in local if n in trained)


# 2. start values ----------------------------------------------------------------------
def start_model(adapter: AdapterModel, plan: RoundPlan, local_values: Tensors) -> None:
    """Set the adapter to the round's global model (moves the adapter): this device's local
    tensors, the announced shared ones, and the round's trainable set."""
    adapter.set(local_values)
    adapter.set(plan.global_shared)
    adapter.set_trainable(plan.trainable)


def own_shared_start(plan: RoundPlan, own_local: Tensors) -> dict[str, torch.Tensor]:
    """Adaptive split: a shared tensor that was local here starts from its own value."""
    return shared_start([n for n in plan.shared if n in own_local], plan.global_shared,
                        own_local)


# 3. train -----------------------------------------------------------------------------
def train_shared(adapter: AdapterModel, data: TokenizedSplit, config: FederationConfig,
                 plan: RoundPlan, *, round_: int, seed: int,
                 planner: MicroBatchPlanner | None,
                 on_step: Callable[[StepInfo], None] | None) -> TrainResult:
    """The round's local training (moves the adapter): the configured steps at the round's
    learning-rate scale, pulled towards the global shared values under FedProx, as
    Per-FedAvg steps under ``personalization.meta``."""
    tr = config.training
    scale = round_lr_scale(config.round_lr_decay, round_, tr.round_lr_floor)
    return train_steps(adapter, data, steps=local_steps_for(tr, len(data)),
                       batch_size=tr.batch_size, lr=tr.lr * scale,
                       head_lr=tr.head_lr * scale if tr.head_lr else None,
                       b_lr_ratio=tr.b_lr_ratio, weight_decay=tr.weight_decay, seed=seed,
                       planner=planner, autocast=tr.autocast,
                       on_step=on_step, proximal=proximal_for(config, plan.global_shared),
                       importance=config.fedsa_lora.adaptive_split.importance_based,
                       warmup_steps=tr.warmup_steps, lr_schedule=tr.lr_schedule,
                       gradient_checkpointing=tr.gradient_checkpointing,
                       meta=meta_for(config, plan.local, plan.trainable))


# 4. build the update ------------------------------------------------------------------
def shared_delta(new_shared: Tensors, plan: RoundPlan) -> dict[str, torch.Tensor]:
    """What training changed of the shared tensors: the update before any update step."""
    return {n: new_shared[n] - plan.global_shared[n] for n in plan.shared}


# 5. next local state ------------------------------------------------------------------
def next_state(state: DeviceState, announce: AnnounceHeader, config: FederationConfig,
               new_local: Tensors, residual: Tensors) -> DeviceState:
    """The device's state after the round: its new local tensors and codec residual, the
    round and version it trained on, and the configuration they belong to."""
    return replace(state, local=dict(new_local), residual=dict(residual),
                   last_round=announce.round, base_version=announce.version,
                   config_hash=announce.config_hash, state_hash=config.state_digest())


@dataclass(frozen=True)
class Score:
    """How well the adapter does on the device's held-out split: a classifier's accuracy;
    a causal model's exact match as ``accuracy``, with its mean answer-token loss and its
    perplexity."""

    accuracy: float
    loss: float | None = None
    perplexity: float | None = None


def score_model(adapter: AdapterModel, data: TokenizedSplit, config: FederationConfig,
                planner: MicroBatchPlanner | None) -> Score:
    """Evaluate the adapter as it is now on ``data`` (the device's test split)."""
    tr = config.training
    if adapter.causal:
        s = evaluate_causal(adapter, data, tr.eval_batch_size, planner=planner,
                            autocast=tr.autocast)
        return Score(s.exact_match, s.loss, s.perplexity)
    return Score(evaluate(adapter, data, tr.eval_batch_size, planner=planner,
                          autocast=tr.autocast))


def round_metrics(announce: AnnounceHeader, federation: str, client: str, region: str, *,
                  score: Score, n_test: int, result: TrainResult, bytes_down: int,
                  global_score: Score | None) -> Metrics:
    """The round's metrics report (``bytes_up`` is added once the update is sent)."""
    return Metrics(federation=federation, client=client, region=region,
                   round=announce.round, accuracy=score.accuracy, n_test=n_test,
                   train_loss=result.loss, train_s=result.seconds, bytes_down=bytes_down,
                   global_accuracy=global_score.accuracy if global_score else None,
                   loss=score.loss, perplexity=score.perplexity)
