"""Differential privacy of the shared-parameter updates: clipping, Gaussian noise, and
(epsilon, delta) accounting (pure; no I/O).

The unit of privacy is a **device** (all of its data), not an example: each device's delta
of the shared parameters is clipped to L2 norm ``C`` (``clip_norm``), which bounds how far
one device can move a round's sum.  Gaussian noise is then added either

* once at the cloud to the sum of the round's clipped updates (``central``, DP-FedAvg,
  McMahan et al. 2018): std ``z * C``, and the noised sum is divided by a **fixed
  denominator** ``m``, the number of updates the round was announced to wait for (the
  selected devices, or ``clients_per_round`` under over-selection), not by the number of
  updates that arrived; or
* on each device to its own clipped update (``local``): std ``z * C``; a device's report
  must hide *any* change of its data, so two reports can differ by the diameter of the
  clipping ball, ``2 C``, and the accountant sees the noise multiplier ``z / 2``.  What the
  hubs compute from the reports (the mean over the updates that arrived) is
  post-processing, so the denominator does not matter there.

Why a fixed denominator in central mode, and not ``(S + N) / n`` with ``n`` the updates
that arrived accounted under replace-one adjacency (sensitivity ``2 C``): both are correct,
but replace-one needs twice the noise for the same epsilon (z 3.61 instead of 1.80 for the
quickstart's epsilon 8 over 8 rounds), which doubles the noise on every released model.
With ``n`` in the denominator the add/remove analysis does not hold, because removing a
device changes ``n`` and with it the scale of the noise on the release (one round's noise
estimates ``n`` to three digits).  With ``m`` fixed when the round is announced, before any
update exists, adding or removing one device's contribution moves the released step by at
most ``C / m`` and nothing else about the release depends on it, so the accountant sees
``z`` (sensitivity ``C``).  The price is a step shrunk by ``n / m`` when devices drop out
(McMahan et al. accept the same bias).  What the guarantee does **not** hide: *that* a
device was selected and contributed (announcements name the selected devices, summaries
the applied updates, and a round below quorum releases nothing).  Given that metadata, the
figure for telling apart two arbitrary datasets of a device known to take part is the
replace-one one, ``PrivacyLedger.replace_one_epsilon`` (the accountant at ``z / 2``), which
the cloud logs next to the add/remove figure.

The epsilon spent is tracked with opacus's RDP accountant for the Poisson-subsampled
Gaussian mechanism (Mironov 2017; Mironov, Talwar, Zhang 2019), one step per round that
released something, and converted to (epsilon, delta) with Balle et al. 2020.  By default
every device counts as taking part in every round (q = 1, exact for full participation).
Amplification by sampling (q < 1, central mode, opted into with ``population``) is an
approximation: the cloud draws a fixed number of devices without replacement, while the
analysis assumes each device is included independently with probability ``q``; and it only
holds against parties that do not read the round announcements, which name the selected
devices.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

import torch

from fedsa_common.config.sections import FederationSections
from fedsa_common.privacy.dp_adaptive import AdaptiveClipping, within_clip
from fedsa_common.wire.codecs.layout import flat_of
from fedsa_common.wire.errors import require_extra
from fedsa_common.wire.tensors import Tensors

Mode = Literal["central", "local"]

# L2 sensitivity of one device's clipped update, in units of the clip norm: adding or
# removing a device moves the central sum by at most C (its denominator is fixed); a
# locally privatized report must hide any two inputs of the device, which lie up to 2C apart.
SENSITIVITY: dict[str, float] = {"central": 1.0, "local": 2.0}
# Replacing one device's update by any other moves a sum by up to the clip ball's diameter.
REPLACE_ONE_SENSITIVITY = 2.0


# ------------------------------------------------------------------ tensors
def l2_norm(tensors: Tensors) -> float:
    """The L2 norm of all tensors together, as one flat vector (accumulated in float64).

    One concatenation and one reduction, whatever the number of tensors: hubs take it of
    every update."""
    if not tensors:
        return 0.0
    flat = flat_of(tensors)  # a decoded update is already one vector, in the same order
    if flat is None:
        flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    return float(torch.linalg.vector_norm(flat.to(torch.float64)))


def clip_update(tensors: Tensors, clip_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """Scale the whole update (all tensors jointly) down to L2 norm ``clip_norm`` if it is
    longer; returns the clipped copy and the original norm.

    Joint (flat) clipping keeps the update's direction, which per-tensor clipping would
    not, and is what bounds the sensitivity of the round's sum.  A non-finite norm is an
    error: scaling NaN or inf cannot produce a bounded update.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    norm = l2_norm(tensors)
    if not math.isfinite(norm):
        raise ValueError("cannot clip an update with non-finite values")
    scale = clip_norm / norm if norm > clip_norm else 1.0
    clipped = {n: (t.to(torch.float64) * scale).to(t.dtype) for n, t in tensors.items()}
    return clipped, norm


def secure_generator() -> torch.Generator:
    """A CPU generator seeded from ``os.urandom``: noise must not be reproducible from
    anything a party could know (the federation seed, the round)."""
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))
    return gen


def gaussian_noise_like(tensors: Tensors, std: float, generator: torch.Generator
                        ) -> dict[str, torch.Tensor]:
    """Independent N(0, std^2) noise of each tensor's shape (float32)."""
    if std < 0 or not math.isfinite(std):
        raise ValueError(f"std must be finite and non-negative, got {std}")
    return {n: torch.randn(tuple(t.shape), generator=generator, dtype=torch.float32) * std
            for n, t in tensors.items()}


def add_noise(tensors: Tensors, std: float, generator: torch.Generator
              ) -> dict[str, torch.Tensor]:
    noise = gaussian_noise_like(tensors, std, generator)
    return {n: (t.to(torch.float32) + noise[n]) for n, t in tensors.items()}


def noisy_mean(sums: Tensors, denominator: int, std: float, generator: torch.Generator
               ) -> dict[str, torch.Tensor]:
    """DP-FedAvg's server step: N(0, std^2) added once to the sum of clipped unit-weight
    updates, then divided by ``denominator``.

    ``denominator`` must not depend on the updates (use :func:`expected_updates`): dividing
    by the number that arrived would make the noise scale reveal it, and the add/remove
    accounting would no longer hold (see the module docstring)."""
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    noise = gaussian_noise_like(sums, std, generator)
    return {n: ((s.to(torch.float64) + noise[n].to(torch.float64)) / denominator
                ).to(torch.float32) for n, s in sums.items()}


def expected_updates(selected: int, clients_per_round: int | None, over_select: float) -> int:
    """The fixed denominator of a central-DP round: how many updates the round was announced
    to wait for, known before any update exists.

    Without over-selection every selected device is expected.  With it the round closes
    once ``clients_per_round`` updates arrived (or, without ``clients_per_round``, the
    online devices divided by ``over_select``, all of whom were selected): the cloud's
    ``target_updates`` rule, recomputed from the persisted selection so a restarted cloud
    divides by the same number.
    """
    if selected <= 0:
        raise ValueError(f"selected must be positive, got {selected}")
    if over_select <= 1:
        return selected
    if clients_per_round is not None:
        return min(selected, clients_per_round)
    return max(1, math.floor(selected / over_select))


# ------------------------------------------------------------------ accounting
def require_accountant() -> None:
    """opacus's RDP accountant is the ``dp`` install extra: a federation with differential
    privacy on says so in one line at start-up (``dp_plan``) instead of a traceback at the
    first round's accounting."""
    require_extra("opacus", "dp", "differential privacy (its accountant)")


def epsilon_spent(steps: Sequence[tuple[float, float]], delta: float) -> float:
    """Epsilon after the given steps, each (noise_multiplier, sample_rate), at ``delta``.

    ``noise_multiplier`` is the noise std divided by the L2 sensitivity.  No steps: 0.
    """
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for noise_multiplier, sample_rate in steps:
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta=delta)) if steps else 0.0


@lru_cache(maxsize=64)
def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float,
                               steps: int) -> float:
    """The smallest noise multiplier (to opacus's search tolerance, 0.01 in epsilon) whose
    ``steps`` subsampled Gaussian steps at ``sample_rate`` spend at most ``target_epsilon``.

    Deterministic, so the cloud and every device derive the same value from the same
    configuration without it travelling separately.
    """
    require_accountant()
    from opacus.accountants.utils import get_noise_multiplier

    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps))


@dataclass
class PrivacyLedger:
    """Per-round accounting steps and the epsilon they add up to.

    A step is (noise_multiplier, sample_rate) as configured (std / clip_norm); the ledger
    divides by the mode's sensitivity before accounting.  Each round's summary records its
    step, so a restarted cloud rebuilds the ledger from its checkpoint history and keeps
    counting where it stopped.
    """

    delta: float
    sensitivity: float = 1.0
    steps: list[tuple[float, float]] = field(default_factory=list)

    def record(self, noise_multiplier: float, sample_rate: float) -> float:
        if not noise_multiplier > 0 or not 0 < sample_rate <= 1:
            raise ValueError(f"bad step: noise_multiplier {noise_multiplier}, "
                             f"sample_rate {sample_rate}")
        self.steps.append((float(noise_multiplier), float(sample_rate)))
        return self.epsilon

    @property
    def epsilon(self) -> float:
        return epsilon_spent([(z / self.sensitivity, q) for z, q in self.steps], self.delta)

    @property
    def replace_one_epsilon(self) -> float:
        """Epsilon for two datasets of one device that is known to take part (its update
        replaced by any other one, sensitivity 2C).  Equal to ``epsilon`` in local mode.
        Exact at sample rate 1; for rounds with q < 1 it reuses the subsampled-Gaussian
        bound, which is proven for add/remove, so it is an estimate there."""
        return epsilon_spent([(z / REPLACE_ONE_SENSITIVITY, q) for z, q in self.steps],
                             self.delta)

    @classmethod
    def from_history(cls, history: Iterable[Mapping[str, Any]], delta: float,
                     sensitivity: float = 1.0) -> PrivacyLedger:
        """Rebuild from round summaries (``RoundSummary`` dumps): every record that carries
        ``dp_noise_multiplier`` and ``dp_sample_rate`` was one step."""
        ledger = cls(delta, sensitivity)
        for rec in history:
            z, q = rec.get("dp_noise_multiplier"), rec.get("dp_sample_rate")
            if z is not None and q is not None:
                ledger.steps.append((float(z), float(q)))
        return ledger


# ------------------------------------------------------------------ the configured plan
@dataclass(frozen=True)
class DpPlan:
    """What the configuration asks for, with the noise multiplier resolved.

    ``noise_multiplier`` is the noise std in units of ``clip_norm`` (on the sum at the
    cloud, or on each update on the device); ``sample_rate`` is the planned per-round
    inclusion probability used for calibration.
    """

    mode: Mode
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    epsilon: float
    delta: float
    rounds: int
    calibrated: bool
    subsampled: bool = False  # central mode with a population: account for sampling
    clients_per_round: int | None = None  # with over_select: the fixed central denominator
    over_select: float = 1.0
    adaptive: AdaptiveClipping | None = None  # adaptive clipping (privacy/dp_adaptive.py)

    @property
    def sensitivity(self) -> float:
        return SENSITIVITY[self.mode]

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip_norm

    @property
    def central_noise_std(self) -> float:
        """The std of the noise on a central round's sum: ``z * C``, or with adaptive
        clipping ``z_delta * C`` (the count of unclipped updates spends the rest of what
        ``z`` allows; fedsa_common/privacy/dp_adaptive.py)."""
        z = self.noise_multiplier if self.adaptive is None else self.adaptive.update_multiplier
        return z * self.clip_norm

    def at_clip(self, announced: float | None) -> DpPlan:
        """The plan of a round whose announcement carries ``announced`` (its
        ``dp_clip_norm``): with adaptive clipping that is the round's clip norm (the
        configured one is the first round's); without it, or when none was announced, the
        plan unchanged."""
        if self.adaptive is None or announced is None:
            return self
        return replace(self, clip_norm=float(announced))

    def unclipped(self, norm: float | None) -> bool | None:
        """What a device reports with adaptive clipping: whether its update's ``norm``
        (before clipping) was within the round's clip norm; None without adaptive clipping,
        so its update header reads as before."""
        if self.adaptive is None or norm is None:
            return None
        return within_clip(norm, self.clip_norm)

    def ledger(self, history: Iterable[Mapping[str, Any]] = ()) -> PrivacyLedger:
        return PrivacyLedger.from_history(history, self.delta, self.sensitivity)

    def denominator(self, selected: int) -> int:
        """The central step's fixed denominator for a round that selected ``selected``."""
        return expected_updates(selected, self.clients_per_round, self.over_select)


DP_FIELD = "fedsa_lora.privacy.differential_privacy"


def config_conflicts(config: FederationSections) -> list[str]:
    """Why differential privacy cannot be enabled together with the rest of ``config``
    (empty when it can, or when it is off).  Each reason names the fields involved.

    The accounting assumes each released aggregate holds at most one clipped, unit-weight
    update per device: asynchronous steps and stale-weighted late updates can put two
    updates of one device into a step, and median/trimmed-mean outputs have no sensitivity
    bounded by the clip norm.
    """
    dp = config.fedsa_lora.privacy.differential_privacy
    if not dp.enable:
        return []
    out = []
    if config.fedsa_lora.algorithm == "local":
        out.append(f"{DP_FIELD}: fedsa_lora.algorithm local shares nothing to protect; "
                   "disable differential privacy or choose fedsa, fedit or ffa")
    policy = config.round_policy
    if policy.mode != "sync":
        out.append(f"{DP_FIELD}: needs round_policy.mode sync, not {policy.mode}")
    if policy.late != "drop":
        out.append(f"{DP_FIELD}: needs round_policy.late drop, not {policy.late}")
    aggregation = getattr(policy, "aggregation", None)
    rule = getattr(aggregation, "rule", "mean")
    if rule != "mean":
        out.append(f"{DP_FIELD}: needs round_policy.aggregation.rule mean, not {rule}")
    secagg = getattr(config.fedsa_lora.privacy, "secure_aggregation", None)
    if getattr(secagg, "enable", False):
        out.append(f"{DP_FIELD}: not yet with fedsa_lora.privacy.secure_aggregation: a "
                   "regional hub cannot clip or unit-weight updates it only sees masked")
    k = config.sampling.clients_per_round
    if dp.population is not None and k is not None and k > dp.population:
        out.append(f"{DP_FIELD}.population: {dp.population} is smaller than "
                   f"sampling.clients_per_round {k}")
    if dp.adaptive_clipping.enable:
        out += _adaptive_conflicts(config)
    return out


def _adaptive_conflicts(config: FederationSections) -> list[str]:
    """Adaptive clipping: central mode, and a count noise that fits the noise multiplier
    (the math is fedsa_common/privacy/dp_adaptive.py; the round's clip norm travels in the
    announcement, the count of unclipped updates in update and partial headers)."""
    dp = config.fedsa_lora.privacy.differential_privacy
    field = f"{DP_FIELD}.adaptive_clipping"
    if dp.mode != "central":
        return [f"{field}: needs mode central (a locally noised update hides its norm)"]
    try:
        _adaptive(config, _noise_multiplier(config)[0])
    except ValueError as err:
        return [str(err)]
    return []


def planned_sample_rate(config: FederationSections) -> float:
    """Per-round inclusion probability assumed for calibration.

    Local mode: 1 (a device's reports are seen by its hub whenever it takes part, and the
    worst case is a device selected every round).  Central mode: the devices selected per
    round (``clients_per_round`` times ``over_select``) over ``population`` when both are
    given, else 1 (all devices every round; the conservative choice).  ``population`` is
    opt-in because amplification by sampling only holds against whoever does not learn who
    was selected, and every round announcement names its selected devices.
    """
    dp = config.fedsa_lora.privacy.differential_privacy
    k = config.sampling.clients_per_round
    if dp.mode == "local" or k is None or dp.population is None:
        return 1.0
    selected = math.ceil(k * config.round_policy.over_select)
    return min(1.0, selected / dp.population)


def dp_plan(config: FederationSections) -> DpPlan | None:
    """The resolved plan, or None when differential privacy is off."""
    dp = config.fedsa_lora.privacy.differential_privacy
    if not dp.enable:
        return None
    require_accountant()
    q = planned_sample_rate(config)
    z, calibrated = _noise_multiplier(config)
    return DpPlan(mode=dp.mode, clip_norm=dp.clip_norm, noise_multiplier=z, sample_rate=q,
                  epsilon=dp.epsilon, delta=dp.delta, rounds=config.rounds,
                  calibrated=calibrated,
                  subsampled=dp.mode == "central" and dp.population is not None,
                  clients_per_round=config.sampling.clients_per_round,
                  over_select=config.round_policy.over_select,
                  adaptive=_adaptive(config, z) if dp.adaptive_clipping.enable else None)


def round_dp_plan(config: FederationSections, announced_clip: float | None
                  ) -> DpPlan | None:
    """The plan of one round: ``dp_plan`` at the round's announced clip norm (adaptive
    clipping; ``DpPlan.at_clip``).  What devices and regional hubs clip to."""
    plan = dp_plan(config)
    return None if plan is None else plan.at_clip(announced_clip)


def _noise_multiplier(config: FederationSections) -> tuple[float, bool]:
    """The accounted noise multiplier (configured, or calibrated to ``epsilon``) and
    whether it was calibrated."""
    dp = config.fedsa_lora.privacy.differential_privacy
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier, False
    q = planned_sample_rate(config)
    return SENSITIVITY[dp.mode] * calibrate_noise_multiplier(dp.epsilon, dp.delta, q,
                                                             config.rounds), True


def _adaptive(config: FederationSections, noise_multiplier: float) -> AdaptiveClipping:
    """The adaptive-clipping parameters for ``noise_multiplier`` (ValueError naming the
    field); the count noise defaults to 0.05 times the updates a round expects."""
    ac = config.fedsa_lora.privacy.differential_privacy.adaptive_clipping
    k = config.sampling.clients_per_round
    return AdaptiveClipping.resolve(noise_multiplier, ac.target_quantile, ac.clip_lr,
                                    ac.clipped_count_stddev, k)


def privatize_update(delta: Tensors, plan: DpPlan | None,
                     generator: torch.Generator | None = None
                     ) -> tuple[dict[str, torch.Tensor], float | None]:
    """What a device hands its codec under DP: the delta clipped to ``clip_norm`` and, in
    local mode, with N(0, (z C)^2) noise added; also the norm before clipping (for the
    device's log, to tune ``clip_norm``).  Without a plan, the delta unchanged and None.

    Error feedback then keeps the residual of *this* value, so nothing unclipped (and, in
    local mode, nothing un-noised) is ever carried into a later message.
    """
    if plan is None:
        return dict(delta), None
    clipped, norm = clip_update(delta, plan.clip_norm)
    if plan.mode == "local":
        return add_noise(clipped, plan.noise_std, generator or secure_generator()), norm
    return clipped, norm
