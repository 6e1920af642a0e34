"""Model-poisoning attacks a simulated malicious device applies to its update (pure).

Scenarios flag some devices as malicious to show what robust aggregation at the hubs buys
(see ``hub/robust.py``).  The device trains honestly (its own accuracy stays honest) and
replaces only the delta it sends, before compression (the device's hooks,
edge_client/simulation.py, apply it after DP):

- ``sign_flip``: ``-factor * delta``, pushing the global model against what was learned;
- ``scale``: ``factor * delta``, an update amplified to dominate a plain average.

With ``samples`` it also declares that many training samples instead of its own count:
under the mean the declared count is the update's weight, so a huge one makes the attack
carry the round; the robust rules weigh every update alike (``hub/robust.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

AttackKind = Literal["sign_flip", "scale"]
ATTACKS: tuple[str, ...] = ("sign_flip", "scale")


@dataclass(frozen=True)
class Attack:
    kind: AttackKind
    factor: float = 10.0
    samples: int | None = None  # the sample count it declares (None: its own)

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; allowed: {', '.join(ATTACKS)}")
        if not self.factor > 0:
            raise ValueError(f"attack factor must be positive, got {self.factor}")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"declared samples must be positive, got {self.samples}")

    def to_json(self) -> dict[str, Any]:
        """Without ``samples`` when it declares its own count (as before the option)."""
        return {k: v for k, v in asdict(self).items() if k != "samples" or v is not None}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Attack | None:
        if not raw:
            return None
        samples = raw.get("samples")
        return cls(kind=raw["kind"], factor=float(raw.get("factor", 10.0)),
                   samples=None if samples is None else int(samples))

    def declared(self, samples: int) -> int:
        """The sample count the device sends in its update header."""
        return samples if self.samples is None else self.samples


def poison(delta: Mapping[str, torch.Tensor], attack: Attack) -> dict[str, torch.Tensor]:
    """The update a malicious device sends instead of its honest ``delta``."""
    scale = -attack.factor if attack.kind == "sign_flip" else attack.factor
    return {n: t * scale for n, t in delta.items()}
