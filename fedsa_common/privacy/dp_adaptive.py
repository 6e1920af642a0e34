"""Quantile-based adaptive clipping for central differential privacy (pure; no I/O).

Why: the right clip norm ``C`` depends on how far devices' updates move, which changes
over training and is unknown in advance; too small a clip biases every update, too large
a clip wastes the noise (its std is ``z * C``).  Andrew, Thakkar, McMahan and Ramaswamy,
"Differentially Private Learning with Adaptive Clipping" (NeurIPS 2021) track a chosen
quantile ``gamma`` of the update norms privately, round by round:

* each update contributes ``b_i = 1[||delta_i|| <= C] - 1/2`` (it was not clipped);
* the server releases ``b~ = (sum_i b_i + N(0, sigma_b^2)) / m + 1/2``, the noised
  fraction of unclipped updates, with ``m`` the round's fixed denominator
  (``dp.expected_updates``) and ``sigma_b`` the ``clipped_count_stddev``;
* and moves the clip geometrically: ``C <- C * exp(-eta * (b~ - gamma))`` (``clip_lr``
  ``eta``).  Too many unclipped updates (``b~ > gamma``) shrink the clip, too few grow it;
  the fixed point is the norm under which a ``gamma`` fraction of updates fall.

Privacy: adding or removing one device moves ``sum_i b_i`` by at most 1/2, so the count
is a Gaussian mechanism with noise multiplier ``2 sigma_b``; the update sum is one with
``z_delta`` (sensitivity ``C``).  Released together they are equivalent to one Gaussian
mechanism with ``z = (z_delta^-2 + (2 sigma_b)^-2)^-1/2`` (the paper's Theorem 1, as
TensorFlow Federated's ``adaptive_clip_noise_params`` and Flower's server-side adaptive
clipping compute it).  So the accountant keeps recording the configured (or calibrated)
``z``, and the updates get the slightly larger ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``;
that needs ``2 sigma_b > z``.  Replace-one adjacency doubles both sensitivities, so the
ledger's ``replace_one_epsilon`` (``z / 2``) stays right as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FIELD = "fedsa_lora.privacy.differential_privacy.adaptive_clipping"
DEFAULT_COUNT_STDDEV_FRACTION = 0.05  # sigma_b = m / 20, the paper's recommendation


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``: the noise multiplier of the update sum
    that, together with the count noised at ``count_stddev``, spends what ``z`` does.
    ``ValueError`` naming ``clipped_count_stddev`` when ``2 sigma_b <= z``: the count
    alone would then spend at least what ``z`` allows, whatever noise the updates get."""
    if not noise_multiplier > 0 or not count_stddev > 0:
        raise ValueError(f"noise_multiplier {noise_multiplier} and clipped_count_stddev "
                         f"{count_stddev} must be positive")
    if 2 * count_stddev <= noise_multiplier:
        raise ValueError(f"{FIELD}.clipped_count_stddev: {count_stddev:g} is too small for "
                         f"noise multiplier {noise_multiplier:.4g}; it must exceed "
                         f"{noise_multiplier / 2:.4g} (noise_multiplier / 2), and should be "
                         f"several times that, or the updates need far more noise")
    return (noise_multiplier ** -2 - (2 * count_stddev) ** -2) ** -0.5


@dataclass(frozen=True)
class AdaptiveClipping:
    """The resolved parameters: ``count_stddev`` is ``sigma_b``; ``update_multiplier`` is
    ``z_delta`` for the accounted multiplier ``noise_multiplier`` (``z``)."""

    target_quantile: float
    clip_lr: float
    count_stddev: float
    noise_multiplier: float
    update_multiplier: float

    @classmethod
    def resolve(cls, noise_multiplier: float, target_quantile: float, clip_lr: float,
                count_stddev: float | None, expected_updates: int | None) -> AdaptiveClipping:
        """``count_stddev`` None: ``0.05 * expected_updates`` (ValueError naming the fields
        when the expected number of updates per round is not configured)."""
        if count_stddev is None:
            if expected_updates is None:
                raise ValueError(f"{FIELD}.clipped_count_stddev: set it, or set "
                                 "sampling.clients_per_round so it defaults to 0.05 times "
                                 "the updates a round expects")
            count_stddev = DEFAULT_COUNT_STDDEV_FRACTION * expected_updates
        if not 0 < target_quantile < 1:
            raise ValueError(f"{FIELD}.target_quantile must be in (0, 1), got {target_quantile}")
        if not clip_lr > 0:
            raise ValueError(f"{FIELD}.clip_lr must be positive, got {clip_lr}")
        return cls(target_quantile, clip_lr, count_stddev, noise_multiplier,
                   update_noise_multiplier(noise_multiplier, count_stddev))


def within_clip(norm: float, clip_norm: float) -> bool:
    """``b_i = 1[norm_i <= C]``: the clip left the update unchanged (a norm equal to the clip
    counts as within it).  What a device reports and a regional hub counts."""
    return norm <= clip_norm


def noised_unclipped_fraction(unclipped: float, arrived: int, denominator: int,
                              count_stddev: float, generator: torch.Generator) -> float:
    """``b~ = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2`` with ``sum_i b_i`` =
    ``unclipped`` of the ``arrived`` updates and ``m`` the round's fixed ``denominator``."""
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    if not 0 <= unclipped <= arrived:
        raise ValueError(f"unclipped {unclipped} is not between 0 and arrived {arrived}")
    noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * count_stddev
    return (unclipped - arrived / 2 + noise) / denominator + 0.5


def next_clip(clip_norm: float, unclipped_fraction: float, target_quantile: float,
              clip_lr: float) -> float:
    """The geometric step ``C * exp(-eta * (b~ - gamma))``."""
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be positive and finite, got {clip_norm}")
    return clip_norm * math.exp(-clip_lr * (unclipped_fraction - target_quantile))


def adapt_clip(clip_norm: float, unclipped: float, arrived: int, denominator: int,
               params: AdaptiveClipping, generator: torch.Generator) -> tuple[float, float]:
    """One round, as the cloud runs it: the next clip norm and the noised unclipped fraction
    it came from, given how many of the round's ``arrived`` updates were within the clip."""
    fraction = noised_unclipped_fraction(unclipped, arrived, denominator, params.count_stddev,
                                         generator)
    return next_clip(clip_norm, fraction, params.target_quantile, params.clip_lr), fraction
