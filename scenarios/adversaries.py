"""The ``adversaries:`` part of a scenario file: which devices are malicious and how they
attack (pure; no I/O).

Malicious devices are drawn from the scenario seed (or the section's own ``seed``), so a
scenario replays with the same attackers every time, or listed by name in ``devices``.
The draw is over all devices, not per region: where the attackers land decides whether a
region's robust rule can outvote them (see ``hub/robust.py``), and the runner's report
names them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from edge_client.attack import Attack, AttackKind
from fedsa_common.federation.config import Strict

DEFAULTS: dict[str, Any] = {"fraction": 0.0, "devices": [], "attack": "sign_flip",
                            "factor": 10.0, "samples": None, "seed": None}


class AdversarySection(Strict):
    """``fraction`` of the devices (rounded half to even, like churn) plus any ``devices`` named
    here replace their update by ``-factor * delta`` (``sign_flip``) or ``factor * delta``
    (``scale``) before sending it, declaring ``samples`` training samples when set (instead
    of their own count)."""

    fraction: float = Field(0.0, ge=0, le=1)
    devices: list[str] = Field(default_factory=list)
    attack: AttackKind = "sign_flip"
    factor: float = Field(10.0, gt=0)
    samples: int | None = Field(None, ge=1)
    seed: int | None = None  # default: the scenario's seed

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only what differs from the defaults, so scenarios without adversaries dump (and
        digest, see ``scenarios.bench.scenario_digest``) exactly as before this existed."""
        return {k: v for k, v in handler(self).items() if v != DEFAULTS[k]}

    @property
    def used(self) -> bool:
        return self.fraction > 0 or bool(self.devices)


def choose_adversaries(clients: list[str], section: AdversarySection, scenario_seed: int
                       ) -> dict[str, Attack]:
    """The malicious devices and their attack; raises ValueError naming an unknown device."""
    unknown = sorted(set(section.devices) - set(clients))
    if unknown:
        raise ValueError(f"adversaries.devices: not in the topology: {', '.join(unknown)}")
    chosen = set(section.devices)
    k = round(section.fraction * len(clients))
    if k:
        seed = scenario_seed if section.seed is None else section.seed
        rng = np.random.default_rng([seed, 3])
        chosen |= set(rng.choice(sorted(clients), size=k, replace=False).tolist())
    attack = Attack(section.attack, section.factor, section.samples)
    return {c: attack for c in sorted(chosen)}


def honest_accuracy(report: dict[str, Any], attackers: set[str]) -> float | None:
    """The last round's mean personalized accuracy over honest devices only: attackers
    train honestly and poison only what they send, so their own accuracy says nothing about
    the harm done to everyone else."""
    for row in reversed(report.get("rounds", [])):
        accs = [a for c, a in row.get("device_accuracy", {}).items() if c not in attackers]
        if accs:
            return sum(accs) / len(accs)
    return None
