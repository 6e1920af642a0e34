"""The steps of one device round, each with one job; ``Device.train_round`` runs them in
order (edge_client/device.py), and keeps to itself what needs its session, its state
directory or its data.

1. plan the split (``plan_round``): which tensors are shared and which stay local this
   round, which the device trains, and the announced global values of the shared ones;
2. start values (``start_model``, ``own_shared_start``): the adapter at the round's global
   model, then shared tensors that were local here at their own value (adaptive split);
3. train (``train_shared``): the round's local training, at its seed and learning rate;
4. build the update: the trained change of the shared tensors (``shared_delta``) through the
   update steps (``dp_step``: clip and noise, ``hooks_step``: what a simulated device does
   to it), then the codec with its error-feedback residual (``encode_update``) and the
   header (``update_header``).  Secure-aggregation masking comes last, by
   ``DeviceSecAgg.masked_update`` (edge_client/secagg_client.py), which holds the round's
   keys;
5. evaluate (``score_model``: accuracy, or for a causal language model exact match, loss
   and perplexity), the next local state (``next_state``) and the round's metrics
   (``round_metrics``).

Steps are pure (values in, values out: no MQTT, no files) except those that move the
adapter (``start_model``, ``train_shared``), which the caller runs under its model host's
lock.  Each is a function of its own so that the device reads as the sequence, and so that
the order that matters is in one place: DP before the codec (its residual never holds more
than the clipped update), a simulated attack after DP (it poisons what an honest device
would send), the sample count fixed before masking (secure aggregation weighs by it).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from edge_client.causal import evaluate_causal
from edge_client.microbatch import MicroBatchPlanner
from edge_client.personalize import proximal_for
from edge_client.round_hooks import RoundHooks
from edge_client.schedule import local_steps_for, round_lr_scale
from edge_client.split_state import importance_report, round_split, shared_start
from edge_client.state import DeviceState
from edge_client.training import StepInfo, TokenizedSplit, TrainResult, evaluate, train_steps
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role, trainable_names
from fedsa_common.privacy.dp import DpPlan, privatize_update
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.codecs.common import EncodedDelta
from fedsa_common.wire.protocol import AnnounceHeader, Metrics, UpdateHeader
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


def round_seed(seed: int, client: str, round_: int) -> int:
    """The seed of one device's round: different per device and round, the same on replay."""
    return (seed * 1_000_003 + zlib.crc32(client.encode()) * 31 + round_) % 2**31


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
    learning-rate scale, pulled towards the global shared values under FedProx."""
    tr = config.training
    scale = round_lr_scale(tr.round_lr_decay, round_)
    return train_steps(adapter, data, steps=local_steps_for(tr, len(data)),
                       batch_size=tr.batch_size, lr=tr.lr * scale,
                       head_lr=tr.head_lr * scale if tr.head_lr else None,
                       b_lr_ratio=tr.b_lr_ratio, weight_decay=tr.weight_decay, seed=seed,
                       planner=planner, autocast=tr.autocast,
                       on_step=on_step, proximal=proximal_for(config, plan.global_shared),
                       importance=config.fedsa_lora.adaptive_split.importance_based,
                       warmup_steps=tr.warmup_steps, lr_schedule=tr.lr_schedule,
                       gradient_checkpointing=tr.gradient_checkpointing)


# 4. build the update ------------------------------------------------------------------
@dataclass(frozen=True)
class Draft:
    """The update on its way out, as one update step hands it to the next."""

    delta: Tensors
    samples: int  # the sample count the header declares (the update's weight)
    dp_norm: float | None = None  # the norm before DP clipping (None without DP)


UpdateStep = Callable[[Draft], Draft]


def shared_delta(new_shared: Tensors, plan: RoundPlan) -> dict[str, torch.Tensor]:
    """What training changed of the shared tensors: the update before any update step."""
    return {n: new_shared[n] - plan.global_shared[n] for n in plan.shared}


def dp_step(plan: DpPlan | None) -> UpdateStep:
    """DP: clip (local mode: and noise) to the round's plan; keeps the norm before it."""
    def step(draft: Draft) -> Draft:
        delta, norm = privatize_update(draft.delta, plan)
        return replace(draft, delta=delta, dp_norm=norm)
    return step


def hooks_step(hooks: RoundHooks, round_: int) -> UpdateStep:
    """What the device's hooks make of the update (a simulated attack; a real device's
    hooks leave it as it is)."""
    def step(draft: Draft) -> Draft:
        delta, samples = hooks.after_update(round_, draft.delta, draft.samples)
        return replace(draft, delta=delta, samples=samples)
    return step


def run_steps(draft: Draft, steps: Sequence[UpdateStep]) -> Draft:
    for step in steps:
        draft = step(draft)
    return draft


def encode_update(draft: Draft, config: FederationConfig, round_: int,
                  residual: Tensors | None) -> tuple[dict[str, object], EncodedDelta]:
    """The round's codec parameters (randk: the round's shared seed, derived here and by
    the hub from the same values) and the encoded delta with its new residual."""
    comp = config.fedsa_lora.compression
    params = comp.round_codec_params(config.federation.seed, round_)
    return params, get_codec(comp.codec, **params).encode(draft.delta, residual)


def update_header(draft: Draft, announce: AnnounceHeader, federation: str, client: str,
                  region: str, config: FederationConfig, codec_params: dict[str, object],
                  encoded: EncodedDelta, result: TrainResult, dp: DpPlan | None
                  ) -> UpdateHeader:
    """The update's header: identity, base version, codec, declared samples, the training
    figures the configuration lets the device report, and (adaptive clipping) whether its
    update was within the round's clip norm."""
    return UpdateHeader(
        federation=federation, round=announce.round, client=client, region=region,
        base_version=announce.version, codec=config.fedsa_lora.compression.codec,
        codec_params=codec_params, codec_meta=encoded.meta, num_samples=draft.samples,
        **header_train_stats(config, result.loss, result.seconds),
        importance=importance_report(result.importance),
        dp_unclipped=dp.unclipped(draft.dp_norm) if dp is not None else None,
    )


def header_train_stats(config: FederationConfig, loss: float, seconds: float
                       ) -> dict[str, float | None]:
    """``train_loss`` and ``train_s`` for the update header: none under local DP, whose
    report must reveal nothing but the noised update (both depend on the device's data and
    would reach the broker and the hubs in the clear next to it)."""
    dp = config.fedsa_lora.privacy.differential_privacy
    if dp.enable and dp.mode == "local":
        return {"train_loss": None, "train_s": None}
    return {"train_loss": loss, "train_s": seconds}


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
