"""Simulated device conditions for scenarios: when a device is online, how slow it computes,
and how slow its link is.  Real devices run with the defaults (always on, no added delay);
scenario workers get per-device values drawn by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass


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
