"""Model-poisoning attacks a simulated malicious device applies to its update (pure).

Scenarios flag some devices as malicious to show what robust aggregation at the hubs buys
(see ``hub/robust.py``).  The device trains honestly (its own accuracy stays honest) and
replaces only the delta it sends, before compression:

- ``sign_flip``: ``-factor * delta``, pushing the global model against what was learned;
- ``scale``: ``factor * delta``, an update amplified to dominate a plain average.
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

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; allowed: {', '.join(ATTACKS)}")
        if not self.factor > 0:
            raise ValueError(f"attack factor must be positive, got {self.factor}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Attack | None:
        if not raw:
            return None
        return cls(kind=raw["kind"], factor=float(raw.get("factor", 10.0)))


def poison(delta: Mapping[str, torch.Tensor], attack: Attack) -> dict[str, torch.Tensor]:
    """The update a malicious device sends instead of its honest ``delta``."""
    scale = -attack.factor if attack.kind == "sign_flip" else attack.factor
    return {n: t * scale for n, t in delta.items()}
