"""Simulated device conditions for scenarios: when a device is online, how slow it computes,
and how slow its link is.  Real devices run with the defaults (always on, no added delay);
scenario workers get per-device values drawn by the runner, which the worker turns into the
device's hooks (edge_client/simulation.py) and online windows (edge_client/worker.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceConditions:
    # absolute (epoch seconds) [start, end) windows in which the device is online; None = always
    online: list[tuple[float, float]] | None = None
    slowdown: float = 1.0  # compute takes this many times as long as it really did
    uplink_kbps: float | None = None  # None = not limited
    downlink_kbps: float | None = None
    latency_ms: float = 0.0


def transfer_delay(nbytes: int, kbps: float | None, latency_ms: float) -> float:
    """Seconds a payload of ``nbytes`` spends on a link of ``kbps`` with ``latency_ms``."""
    seconds = latency_ms / 1000.0
    if kbps:
        seconds += nbytes * 8 / (kbps * 1000.0)
    return seconds


def compute_delay(train_s: float, slowdown: float) -> float:
    """Extra seconds a device ``slowdown`` times slower than this machine would have needed."""
    return max(0.0, (slowdown - 1.0) * train_s)


def conditions_from_json(raw: dict[str, Any] | None) -> DeviceConditions:
    """One device's ``conditions`` in the worker spec file (absent: the defaults)."""
    if not raw:
        return DeviceConditions()
    online = raw.get("online")
    return DeviceConditions(
        online=[(float(a), float(b)) for a, b in online] if online is not None else None,
        slowdown=float(raw.get("slowdown", 1.0)),
        uplink_kbps=raw.get("uplink_kbps"), downlink_kbps=raw.get("downlink_kbps"),
        latency_ms=float(raw.get("latency_ms", 0.0)),
    )


def conditions_to_json(cond: DeviceConditions) -> dict[str, Any]:
    """What the scenario runner writes into the worker spec file."""
    return asdict(cond)
