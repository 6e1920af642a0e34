"""A simulated device's ``RoundHooks``: what a scenario makes of a real device.

The scenario runner draws per-device conditions (slow compute, slow links, online windows),
picks malicious devices and gives some devices a link that goes down or lags; it writes them
into the worker spec file, and the worker (edge_client/worker.py) builds one ``Simulation``
per device from them and hands it to the device as its hooks.  The device runs the same
code as a real one: the attack (edge_client/attack.py), the delays
(edge_client/conditions.py) and the wrapping of its session in a ``SimulatedLink``
(fedsa_common/net/simulated_link.py) happen here.
"""

from __future__ import annotations

import logging
from collections import Counter
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
from fedsa_common.net.link_schedule import LinkSchedule
from fedsa_common.net.simulated_link import SimulatedLink
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.tensors import Tensors

log = logging.getLogger("fedsa.device")


@dataclass(frozen=True)
class Simulation:
    client: str
    conditions: DeviceConditions = field(default_factory=DeviceConditions)
    attack: Attack | None = None  # a simulated malicious device (scenario adversaries)
    # its link's outages and publish delays (scenario ``links``); None: a plain link
    link: LinkSchedule | None = None
    # the links built so far (one per session: a churning device has several)
    links: list[SimulatedLink] = field(default_factory=list, compare=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Simulation:
        """From one device's entry of the worker spec file (its ``conditions``, ``attack``
        and ``link``, all optional)."""
        return cls(client=raw["client"], conditions=conditions_from_json(raw.get("conditions")),
                   attack=Attack.from_json(raw.get("attack")),
                   link=LinkSchedule.from_json(raw.get("link")))

    def over_link(self, session: MqttSession) -> MqttSession:
        """The device's session seen through its simulated link, whose schedule starts now
        (with the session); unchanged without one."""
        if self.link is None:
            return session
        link = SimulatedLink(session, self.link)
        self.links.append(link)
        return link  # type: ignore[return-value]  # an MqttSession to the device

    def link_dropped(self) -> dict[str, int]:
        """Messages its simulated links lost so far: ``published`` and ``received``."""
        total: Counter[str] = Counter({"published": 0, "received": 0})
        for link in self.links:
            total.update(link.dropped)
        return dict(total)

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
