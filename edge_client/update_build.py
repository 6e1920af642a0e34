"""Building a device's update message from a delta: the update steps (DP, the host's hooks),
the codec with its error-feedback residual, and the header.

Split out of edge_client/round_steps.py so that what a round sends is built by one piece of
code whether the delta was trained (``Device``, edge_client/device.py) or synthesised (the
light devices of a load run, edge_client/light.py), and so that building an update needs
neither the model nor the training stack (peft, transformers): a process hosting hundreds
of light devices imports torch and the wire formats only.

Pure: values in, values out (no MQTT, no files).  The order that matters lives here: DP
before the codec (its residual never holds more than the clipped update), a simulated
attack after DP (it poisons what an honest device would send), the sample count fixed
before the header (secure aggregation, applied by the caller afterwards, weighs by it).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from edge_client.round_hooks import RoundHooks
from edge_client.split_state import importance_report
from fedsa_common.federation.config import FederationConfig
from fedsa_common.privacy.dp import DpPlan, privatize_update, round_dp_plan
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.codecs.common import EncodedDelta
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader
from fedsa_common.wire.tensors import Tensors


def round_seed(seed: int, client: str, round_: int) -> int:
    """The seed of one device's round: different per device and round, the same on replay."""
    return (seed * 1_000_003 + zlib.crc32(client.encode()) * 31 + round_) % 2**31


@dataclass(frozen=True)
class Draft:
    """The update on its way out, as one update step hands it to the next."""

    delta: Tensors
    samples: int  # the sample count the header declares (the update's weight)
    dp_norm: float | None = None  # the norm before DP clipping (None without DP)


UpdateStep = Callable[[Draft], Draft]


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


class TrainFigures(Protocol):
    """What the update header reports of the round's local work (``TrainResult`` of
    edge_client/training.py for a trained update)."""

    @property
    def loss(self) -> float | None: ...

    @property
    def seconds(self) -> float: ...

    @property
    def importance(self) -> Mapping[str, float] | None: ...


def update_header(draft: Draft, announce: AnnounceHeader, federation: str, client: str,
                  region: str, config: FederationConfig, codec_params: dict[str, object],
                  encoded: EncodedDelta, result: TrainFigures, dp: DpPlan | None
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


def header_train_stats(config: FederationConfig, loss: float | None, seconds: float
                       ) -> dict[str, float | None]:
    """``train_loss`` and ``train_s`` for the update header: none under local DP, whose
    report must reveal nothing but the noised update (both depend on the device's data and
    would reach the broker and the hubs in the clear next to it)."""
    dp = config.fedsa_lora.privacy.differential_privacy
    if dp.enable and dp.mode == "local":
        return {"train_loss": None, "train_s": None}
    return {"train_loss": loss, "train_s": seconds}


@dataclass(frozen=True)
class PreparedUpdate:
    """A round's update before secure-aggregation masking and serialisation: its header,
    the encoded delta (with the codec's new residual), the draft the codec encoded (after
    DP and the hooks) and the round's DP plan."""

    header: UpdateHeader
    encoded: EncodedDelta
    draft: Draft
    dp: DpPlan | None


def prepare_update(draft: Draft, announce: AnnounceHeader, config: FederationConfig, *,
                   federation: str, client: str, region: str, residual: Tensors | None,
                   result: TrainFigures, hooks: RoundHooks) -> PreparedUpdate:
    """The round's update from the change of the shared tensors (``draft``): DP at the
    round's announced clip norm (adaptive clipping), then the hooks, then the codec with the
    error-feedback ``residual`` (None: none carried), then the header."""
    dp = round_dp_plan(config, announce.dp_clip_norm)
    draft = run_steps(draft, [dp_step(dp), hooks_step(hooks, announce.round)])
    codec_params, encoded = encode_update(draft, config, announce.round, residual)
    header = update_header(draft, announce, federation, client, region, config, codec_params,
                           encoded, result, dp)
    return PreparedUpdate(header, encoded, draft, dp)
