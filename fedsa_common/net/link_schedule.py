"""When a simulated link is down and how long its publishes take (pure; no I/O).

``SimulatedLink`` (fedsa_common/net/simulated_link.py) asks this schedule, at each publish
and each incoming message, whether the link is up and how long the publish is held back.
Keeping the decisions here, as plain functions of seconds since the link started and of
the publish's number, makes a churning link replay the same way for the same seed and lets
it be tested without a broker or a clock.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

Window = tuple[float, float]


@dataclass(frozen=True)
class LinkSchedule:
    """``offline``: sorted, disjoint ``[start, end)`` windows (seconds since the link
    started) in which the link is down; every publish waits ``publish_delay_s`` plus a
    jitter drawn uniformly from ``[0, delay_jitter_s]`` by ``seed`` and its number."""

    offline: tuple[Window, ...] = ()
    publish_delay_s: float = 0.0
    delay_jitter_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("publish_delay_s", "delay_jitter_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        previous_end = -math.inf
        for i, (start, end) in enumerate(self.offline):
            if not (math.isfinite(start) and start >= 0 and end > start):
                raise ValueError(f"offline[{i}] must be [start, end) with 0 <= start < end, "
                                 f"got {(start, end)!r}")
            if start < previous_end:
                raise ValueError(f"offline[{i}] starts before offline[{i - 1}] ends: "
                                 "windows must be sorted and disjoint")
            previous_end = end

    def is_offline(self, t: float) -> bool:
        """Whether the link is down ``t`` seconds after it started."""
        return any(start <= t < end for start, end in self.offline)

    def publish_delay(self, index: int) -> float:
        """Seconds publish number ``index`` (0, 1, ...) is held back: the same for the same
        seed and number, whatever else the link did meanwhile."""
        if not self.delay_jitter_s:
            return self.publish_delay_s
        return self.publish_delay_s + random.Random(f"{self.seed}:{index}").uniform(
            0.0, self.delay_jitter_s)

    def to_json(self) -> dict[str, Any]:
        """The schedule as a scenario runner writes it into a worker spec file."""
        return {"offline": [list(w) for w in self.offline],
                "publish_delay_s": self.publish_delay_s,
                "delay_jitter_s": self.delay_jitter_s, "seed": self.seed}

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> LinkSchedule | None:
        """A schedule written by ``to_json`` (None: none given, the link is not simulated)."""
        if raw is None:
            return None
        return cls(offline=tuple((float(a), float(b)) for a, b in raw.get("offline", ())),
                   publish_delay_s=float(raw.get("publish_delay_s", 0.0)),
                   delay_jitter_s=float(raw.get("delay_jitter_s", 0.0)),
                   seed=int(raw.get("seed", 0)))

    @classmethod
    def churning(cls, *, seed: int, horizon_s: float, online_mean_s: float,
                 offline_mean_s: float, publish_delay_s: float = 0.0,
                 delay_jitter_s: float = 0.0) -> LinkSchedule:
        """Online and offline spells drawn from exponential distributions with these means
        (the on/off process of a scenario's ``churn`` section, for one link), starting
        online, up to ``horizon_s``."""
        for name, value in (("horizon_s", horizon_s), ("online_mean_s", online_mean_s),
                            ("offline_mean_s", offline_mean_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        rng = random.Random(seed)
        windows: list[Window] = []
        t = rng.expovariate(1.0 / online_mean_s)
        while t < horizon_s:
            end = min(horizon_s, t + rng.expovariate(1.0 / offline_mean_s))
            if end > t:
                windows.append((t, end))
            t = end + rng.expovariate(1.0 / online_mean_s)
        return cls(tuple(windows), publish_delay_s, delay_jitter_s, seed)
