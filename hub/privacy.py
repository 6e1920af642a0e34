"""The hubs' part of differential privacy (the math is in fedsa_common/dp.py).

Regional hubs admit every update (``IntakeDp``, an admission step, hub/aggregator.py)
with weight 1 (a device's ``num_samples`` would otherwise scale its influence, and the
sensitivity, without bound) and, in central mode, clip it again to ``clip_norm`` after
decoding: the bound on one device's contribution then holds whatever a device sends,
including codec rounding and the error-feedback residual.  The cloud adds the noise once
to the round's sum (central mode) and divides by the number of updates the round was
announced to wait for, never by the number that arrived (why: fedsa_common/dp.py), keeps
the privacy ledger, and states the epsilon spent in every round summary and its log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from fedsa_common.config import FederationConfig
from fedsa_common.dp import DpPlan, PrivacyLedger, clip_update, dp_plan, noisy_mean
from fedsa_common.dp import secure_generator as _secure_generator
from hub.aggregation import RunningSum
from hub.aggregator import Update

log = logging.getLogger("fedsa.hub.privacy")



@dataclass(frozen=True)
class IntakeDp:
    """A regional hub's DP admission step: unit weight, and the central clip norm."""

    clip_norm: float | None  # None in local mode: the update is already noised
    key: ClassVar[str] = "dp"

    def admit(self, update: Update) -> Update:
        """The update with weight 1 (its sample count is ignored), clipped in central mode."""
        delta = (dict(update.delta) if self.clip_norm is None
                 else clip_update(update.delta, self.clip_norm)[0])
        return replace(update, delta=delta, weight=1.0)

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"clip_norm": self.clip_norm}, {}

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
                   ) -> IntakeDp:
        return cls(meta.get("clip_norm"))


def intake_dp(config: FederationConfig) -> IntakeDp | None:
    """The DP step of a round of ``config`` (None without DP)."""
    dp = config.fedsa_lora.privacy.differential_privacy
    if not dp.enable:
        return None
    return IntakeDp(dp.clip_norm if dp.mode == "central" else None)


class CloudPrivacy:
    """The cloud's accounting and noise; every method is a no-op without DP.

    A round's sampling rate is 1 unless the configuration opts into amplification by
    sampling (central mode with ``population``); then it is the fraction of online devices
    selected when the round was announced (the probability that a given device was asked),
    or, for a round announced before a restart of the cloud, the selected count over the
    devices online when it closes.
    """

    def __init__(self, plan: DpPlan | None, history: Iterable[Mapping[str, Any]] = ()) -> None:
        self.plan = plan
        self.ledger: PrivacyLedger | None = plan.ledger(history) if plan is not None else None
        self.rates: dict[int, float] = {}
        self._generator: torch.Generator | None = None

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
        if self._generator is None:
            self._generator = _secure_generator()
        return noisy_mean(total.sums, self.plan.denominator(selected), self.plan.noise_std,
                          self._generator)

    def close_round(self, rnd: int, selected: int, online: int, applied: bool
                    ) -> dict[str, float]:
        """Record the round's step and return the summary's ``dp_*`` fields ({} without DP).

        Central mode spends budget only when a noised aggregate was released (the step was
        applied).  Local mode charges every round: a selected device's noised report has
        left the device whether or not the cloud used it.
        """
        if self.plan is None or self.ledger is None:
            return {}
        plan = self.plan
        rate = (self.rates.pop(rnd, sample_rate(selected, online)) if plan.subsampled
                else 1.0)
        fields: dict[str, float] = {"dp_delta": plan.delta}
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


def sample_rate(selected: int, online: int) -> float:
    """The probability that a given online device was selected (1 when all were)."""
    if selected <= 0:
        return 1.0
    return min(1.0, selected / max(selected, online))
