"""The hubs' part of differential privacy (the math is in fedsa_common/privacy/dp.py).

Regional hubs admit every update (``IntakeDp``, an admission step, hub/aggregator.py)
with weight 1 (a device's ``num_samples`` would otherwise scale its influence, and the
sensitivity, without bound) and, in central mode, clip it again to ``clip_norm`` after
decoding: the bound on one device's contribution then holds whatever a device sends,
including codec rounding and the error-feedback residual.  The cloud adds the noise once
to the round's sum (central mode) and divides by the number of updates the round was
announced to wait for, never by the number that arrived (why: fedsa_common/privacy/dp.py), keeps
the privacy ledger, and states the epsilon spent in every round summary and its log.

Adaptive clipping (fedsa_common/privacy/dp_adaptive.py): the cloud announces each round's clip
norm (``dp_clip_norm``); devices and regional hubs clip to it; each device says whether its
update was within it, each region forwards how many of its updates were, and the cloud
noises their sum, moves the clip, and records the clip in the round summary, from which a
restarted cloud continues (``clip_from_history``).  The update sum is then noised at
``z_delta * C``; the ledger still records the configured ``z``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.privacy.dp import (
    DpPlan,
    PrivacyLedger,
    clip_update,
    dp_plan,
    noisy_mean,
    round_dp_plan,
)
from fedsa_common.privacy.dp import secure_generator as _secure_generator
from fedsa_common.privacy.dp_adaptive import adapt_clip, within_clip
from hub.aggregation import RunningSum
from hub.aggregator import Update

log = logging.getLogger("fedsa.hub.privacy")



@dataclass(frozen=True)
class IntakeDp:
    """A regional hub's DP admission step: unit weight, and the round's central clip norm
    (with adaptive clipping, the announced one); with adaptive clipping it also marks
    whether each update was within the clip, for its aggregator to count."""

    clip_norm: float | None  # None in local mode: the update is already noised
    adaptive: bool = False
    key: ClassVar[str] = "dp"

    def admit(self, update: Update) -> Update:
        """The update with weight 1 (its sample count is ignored), clipped in central mode.

        Adaptive clipping: the device clipped its update before encoding it, so what this
        hub decodes is within the clip however long the update was; the device's
        ``dp_unclipped`` says, and only an update that does not say (a device from before
        the field) is judged by the norm seen here.  A device that lies moves the count by
        its own one update, which the count's noise covers like any other device's."""
        if self.clip_norm is None:
            return replace(update, delta=dict(update.delta), weight=1.0)
        delta, norm = clip_update(update.delta, self.clip_norm)
        unclipped = None
        if self.adaptive:
            said = update.header.dp_unclipped
            unclipped = within_clip(norm, self.clip_norm) if said is None else said
        return replace(update, delta=delta, weight=1.0, unclipped=unclipped)

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"clip_norm": self.clip_norm, **({"adaptive": True} if self.adaptive else {})}, {}

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
                   ) -> IntakeDp:
        return cls(meta.get("clip_norm"), bool(meta.get("adaptive", False)))


def intake_dp(config: FederationConfig, announced_clip: float | None = None
              ) -> IntakeDp | None:
    """The DP step of a round of ``config`` announced with ``announced_clip`` (its
    ``dp_clip_norm``; None without DP)."""
    plan = round_dp_plan(config, announced_clip)
    if plan is None:
        return None
    if plan.mode == "local":
        return IntakeDp(None)
    return IntakeDp(plan.clip_norm, plan.adaptive is not None)


class CloudPrivacy:
    """The cloud's accounting and noise; every method is a no-op without DP.

    A round's sampling rate is 1 unless the configuration opts into amplification by
    sampling (central mode with ``population``); then it is the fraction of online devices
    selected when the round was announced (the probability that a given device was asked),
    or, for a round announced before a restart of the cloud, the selected count over the
    devices online when it closes.
    """

    def __init__(self, plan: DpPlan | None, history: Iterable[Mapping[str, Any]] = ()) -> None:
        history = list(history)
        self.plan = plan
        self.ledger: PrivacyLedger | None = plan.ledger(history) if plan is not None else None
        self.rates: dict[int, float] = {}
        self._generator: torch.Generator | None = None
        # adaptive clipping: the clip norm of the next (or in-flight) round
        self.clip_norm: float | None = (clip_from_history(plan.clip_norm, history)
                                        if plan is not None and plan.adaptive is not None
                                        else None)

    @classmethod
    def for_config(cls, config: FederationConfig, history: Iterable[Mapping[str, Any]] = ()
                   ) -> CloudPrivacy:
        privacy = cls(dp_plan(config), history)
        plan = privacy.plan
        if plan is not None:
            how = (f"calibrated for epsilon {plan.epsilon:g} over {plan.rounds} rounds at "
                   f"sample rate {plan.sample_rate:.3g}" if plan.calibrated else "as configured")
            log.info("differential privacy: %s mode, clip norm %g, noise multiplier %.4g (%s), "
                     "delta %g; epsilon spent so far %.4g", plan.mode, plan.clip_norm,
                     plan.noise_multiplier, how, plan.delta, privacy.epsilon)
            if plan.adaptive is not None:
                ac = plan.adaptive
                log.info("adaptive clipping: target quantile %g, clip_lr %g, count noise std "
                         "%g; the updates' noise multiplier is %.4g so that with the count "
                         "they spend what %.4g does; clip norm of the next round %.4g",
                         ac.target_quantile, ac.clip_lr, ac.count_stddev, ac.update_multiplier,
                         ac.noise_multiplier, privacy.clip_norm)
        return privacy

    @property
    def epsilon(self) -> float:
        return self.ledger.epsilon if self.ledger is not None else 0.0

    def note_sampling(self, rnd: int, selected: int, online: int) -> None:
        if self.plan is not None:
            self.rates[rnd] = sample_rate(selected, online)

    def mean(self, total: RunningSum, selected: int) -> dict[str, torch.Tensor]:
        """The round's mean update.  Central mode adds N(0, (z C)^2) to the sum and divides
        by the round's fixed denominator (from the ``selected`` count it announced), so
        neither the noise scale nor the step reveals how many updates arrived."""
        if self.plan is None or self.plan.mode == "local" or total.count == 0:
            return total.mean()
        std = self.plan.at_clip(self.clip_norm).central_noise_std
        return noisy_mean(total.sums, self.plan.denominator(selected), std, self.generator)

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = _secure_generator()
        return self._generator

    def close_round(self, rnd: int, selected: int, online: int, applied: bool,
                    unclipped: int = 0, arrived: int = 0) -> dict[str, float]:
        """Record the round's step and return the summary's ``dp_*`` fields ({} without DP).

        Central mode spends budget only when a noised aggregate was released (the step was
        applied).  Local mode charges every round: a selected device's noised report has
        left the device whether or not the cloud used it.  With adaptive clipping a released
        round also releases the noised fraction of its ``arrived`` updates that were within
        the clip (``unclipped`` of them) and moves the clip for the next round; a round that
        released nothing keeps it.
        """
        if self.plan is None or self.ledger is None:
            return {}
        plan = self.plan
        fields: dict[str, float] = {}
        if self.clip_norm is not None:
            fields = self.adapt(rnd, plan.denominator(selected) if selected else 1, applied,
                                unclipped, arrived)
        rate = (self.rates.pop(rnd, sample_rate(selected, online)) if plan.subsampled
                else 1.0)
        fields["dp_delta"] = plan.delta
        if applied or plan.mode == "local":
            self.ledger.record(plan.noise_multiplier, rate)
            fields.update(dp_noise_multiplier=plan.noise_multiplier, dp_sample_rate=rate)
        eps = self.ledger.epsilon
        fields["dp_epsilon"] = eps
        log.info("round %d: epsilon spent %.4g (delta %g; %.4g for two datasets of a device "
                 "known to take part)", rnd, eps, plan.delta, self.ledger.replace_one_epsilon)
        if eps > plan.epsilon:
            log.warning("round %d: epsilon spent %.4g exceeds the configured epsilon %g", rnd,
                        eps, plan.epsilon)
        return fields

    def adapt(self, rnd: int, denominator: int, applied: bool, unclipped: int, arrived: int
              ) -> dict[str, float]:
        """The adaptive-clipping step of a closed round (fedsa_common/privacy/dp_adaptive.py): the
        summary's ``dp_clip_norm``, ``dp_unclipped_fraction`` and ``dp_next_clip_norm``."""
        assert self.plan is not None and self.plan.adaptive is not None
        assert self.clip_norm is not None
        ac, clip = self.plan.adaptive, self.clip_norm
        fields = {"dp_clip_norm": clip, "dp_next_clip_norm": clip}
        if applied and arrived:
            self.clip_norm, fraction = adapt_clip(clip, unclipped, arrived, denominator, ac,
                                                  self.generator)
            fields.update(dp_unclipped_fraction=fraction, dp_next_clip_norm=self.clip_norm)
            log.info("round %d: clip norm %.4g -> %.4g (noised fraction of updates within "
                     "it %.3f, target %g)", rnd, clip, self.clip_norm, fraction,
                     ac.target_quantile)
        return fields


def clip_from_history(first: float, history: Iterable[Mapping[str, Any]]) -> float:
    """The clip norm a (restarted) cloud announces next: the last round summary's
    ``dp_next_clip_norm``, or ``first`` (the configured ``clip_norm``) before any round."""
    clip = first
    for rec in history:
        nxt = rec.get("dp_next_clip_norm")
        if nxt is not None:
            clip = float(nxt)
    return clip


def sample_rate(selected: int, online: int) -> float:
    """The probability that a given online device was selected (1 when all were)."""
    if selected <= 0:
        return 1.0
    return min(1.0, selected / max(selected, online))
