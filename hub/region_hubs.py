"""Which regions have a serving regional hub, as the cloud learns it from the hubs'
retained statuses, and when round 1 may start (pure: no I/O, time passed in).

A device whose ``--region`` has no regional hub cannot deliver an update: nothing collects
its region's updates.  Selecting it made every round run to its deadline.  The cloud
therefore selects only devices of regions whose hub serves.  A region whose hub was never
seen gets ``grace_s`` from its first device's presence, because hubs and devices are often
started together and the hub's status may come second; a hub whose status says offline
(its will) or finished counts as absent at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class RegionHubs:
    grace_s: float
    serving: dict[str, bool] = field(default_factory=dict)  # region -> its status says so
    first_device: dict[str, float] = field(default_factory=dict)  # region -> when first seen

    def on_status(self, region: str, serving: bool) -> bool:
        """Record a regional hub's status; returns whether its serving state changed."""
        changed = self.serving.get(region) is not serving
        self.serving[region] = serving
        return changed

    def on_device(self, region: str, now: float) -> None:
        """A device of ``region`` came online (its region's grace starts with the first)."""
        self.first_device.setdefault(region, now)

    def absent(self, regions: Iterable[str], now: float) -> set[str]:
        """The regions among ``regions`` that have no serving hub: one that said it stopped,
        or none seen within the grace."""
        return {r for r in regions if self.serving.get(r) is False or (
            r not in self.serving and now - self.first_device.get(r, now) >= self.grace_s)}

    def pending(self, regions: Iterable[str], now: float) -> set[str]:
        """The regions among ``regions`` whose hub was not seen yet, still within the grace."""
        return {r for r in regions if r not in self.serving
                and now - self.first_device.get(r, now) < self.grace_s}


def selectable(online: dict[str, str], absent: set[str]) -> dict[str, str]:
    """The online devices (client -> region) the cloud may select: those of served regions."""
    return {c: r for c, r in online.items() if r not in absent}


def may_start(*, ready: int, need: int, pending: int, waited_since: float | None,
              now: float, wait_s: float) -> bool:
    """Whether round 1 may be announced.

    At once when ``need`` selectable devices are ``ready`` and no region's hub is still
    awaited (``pending`` regions); otherwise, with at least one ready device, once
    ``wait_s`` passed since ``waited_since`` (None: the wait has not begun)."""
    if ready >= need and not pending:
        return True
    return ready > 0 and waited_since is not None and now - waited_since >= wait_s
