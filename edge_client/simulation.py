"""A simulated device's ``RoundHooks``: what a scenario makes of a real device.

The scenario runner draws per-device conditions (slow compute, slow links, online windows)
and picks malicious devices; it writes them into the worker spec file, and the worker
(edge_client/worker.py) builds one ``Simulation`` per device from them and hands it to the
device as its hooks.  The device runs the same code as a real one: the attack
(edge_client/attack.py) and the delays (edge_client/conditions.py) happen here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_client.attack import Attack, poison
from edge_client.conditions import (
    DeviceConditions,
    compute_delay,
    conditions_from_json,
    transfer_delay,
)
from edge_client.round_hooks import DelayKind
from fedsa_common.wire.tensors import Tensors

log = logging.getLogger("fedsa.device")


@dataclass(frozen=True)
class Simulation:
    client: str
    conditions: DeviceConditions = field(default_factory=DeviceConditions)
    attack: Attack | None = None  # a simulated malicious device (scenario adversaries)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Simulation:
        """From one device's entry of the worker spec file (its ``conditions`` and
        ``attack``, both optional)."""
        return cls(client=raw["client"], conditions=conditions_from_json(raw.get("conditions")),
                   attack=Attack.from_json(raw.get("attack")))

    def after_update(self, round_: int, delta: Tensors, samples: int
                     ) -> tuple[Tensors, int]:
        """A malicious device's poisoned delta and declared sample count."""
        if self.attack is None:
            return delta, samples
        poisoned, declared = poison(delta, self.attack), self.attack.declared(samples)
        log.info("%s: round %d update poisoned (%s x%g), declaring %d samples", self.client,
                 round_, self.attack.kind, self.attack.factor, declared)
        return poisoned, declared

    def delay(self, kind: DelayKind, amount: float) -> float:
        """The device's drawn slowdown and link speeds, as seconds to wait."""
        cond = self.conditions
        if kind == "compute":
            return compute_delay(amount, cond.slowdown)
        kbps = cond.downlink_kbps if kind == "download" else cond.uplink_kbps
        return transfer_delay(int(amount), kbps, cond.latency_ms)
