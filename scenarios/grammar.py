"""The churn, straggler, fault and expectation parts of a scenario file, and the seeded
draws that turn them into per-device conditions (pure; no I/O).

Randomness comes from one seeded generator per concern, so a scenario replays the same way
every time it is run.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import numpy as np
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from edge_client.conditions import DeviceConditions
from fedsa_common.federation.config import Strict


class ChurnSection(Strict):
    """An on/off process: online and offline spells drawn from exponential distributions."""

    fraction: float = Field(0.0, ge=0, le=1)  # of devices that churn
    online_mean_s: float = Field(60.0, gt=0)
    offline_mean_s: float = Field(30.0, gt=0)
    never_return_fraction: float = Field(0.0, ge=0, le=1)  # of churning devices


class DeviceAvailability(Strict):
    join_s: float = Field(0.0, ge=0)
    leave_s: float | None = Field(None, gt=0)


class AvailabilitySection(Strict):
    join_s: float = Field(0.0, ge=0)
    join_spread_s: float = Field(0.0, ge=0)  # join times uniform in [join_s, join_s+spread]
    leave_s: float | None = Field(None, gt=0)
    churn: ChurnSection = ChurnSection()
    devices: dict[str, DeviceAvailability] = Field(default_factory=dict)


class Distribution(Strict):
    """A compute slowdown factor (>= 1) per device."""

    distribution: Literal["constant", "uniform", "lognormal", "pareto"] = "constant"
    value: float = Field(1.0, ge=1)  # constant
    low: float = Field(1.0, ge=1)  # uniform
    high: float = Field(1.0, ge=1)
    median: float = Field(1.0, ge=1)  # lognormal
    sigma: float = Field(0.5, gt=0)
    alpha: float = Field(1.5, gt=0)  # pareto (heavy tail; smaller alpha, heavier)
    max_factor: float = Field(50.0, ge=1)

    @model_validator(mode="after")
    def _range(self) -> Distribution:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self


class LinkSection(Strict):
    uplink_kbps: float | None = Field(None, gt=0)
    downlink_kbps: float | None = Field(None, gt=0)
    latency_ms: float = Field(0.0, ge=0)


class DeviceStraggler(LinkSection):
    slowdown: float | None = Field(None, ge=1)


class StragglerSection(Strict):
    slowdown: Distribution = Distribution()
    link: LinkSection = LinkSection()
    regions: dict[str, LinkSection] = Field(default_factory=dict)
    devices: dict[str, DeviceStraggler] = Field(default_factory=dict)


_TARGET = re.compile(r"^(cloud|broker|regional:[A-Za-z0-9_.-]+|region:[A-Za-z0-9_.-]+)$")


class Fault(Strict):
    """``kill`` a process (``cloud``, ``broker`` or ``regional:NAME``) at ``at_s`` and restart
    it ``restart_after_s`` later (never, if null); ``partition`` cuts ``region:NAME`` off
    from the cloud for ``duration_s`` (its hub is frozen; its devices' updates queue up);
    ``cut_link`` (with ``topology.sites``) cuts ``region:NAME``'s site broker off the cloud
    broker for ``duration_s``: the bridge goes down, and the site's broker, hub and devices
    keep working on their side of the cut.
    ``at_s`` counts from the scenario start, or from the announcement of ``at_round`` when
    that is given (so a fault can be aimed at the middle of a round), or, with
    ``after_partials: N`` too, from the cloud's acknowledgement of round ``at_round``'s N-th
    regional partial (so a cloud kill lands after it took a partial of the round, however
    long the devices trained)."""

    at_s: float = Field(0.0, ge=0)
    at_round: int | None = Field(None, ge=1)
    after_partials: int | None = Field(None, ge=1)
    action: Literal["kill", "partition", "cut_link"]
    target: str
    restart_after_s: float | None = Field(5.0, ge=0)
    duration_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _target(self) -> Fault:
        if not _TARGET.match(self.target):
            raise ValueError("target must be cloud, broker, regional:NAME or region:NAME")
        if self.action in ("partition", "cut_link") and not self.target.startswith("region:"):
            raise ValueError(f"{self.action} needs target region:NAME")
        if self.action == "kill" and self.target.startswith("region:"):
            raise ValueError("kill needs target cloud, broker or regional:NAME")
        if self.after_partials is not None and self.at_round is None:
            raise ValueError("after_partials counts the partials of at_round: give at_round")
        return self

    @property
    def undo_after_s(self) -> float | None:
        """Seconds from doing the fault to undoing it (None: never undone)."""
        return self.restart_after_s if self.action == "kill" else self.duration_s


class ExpectSection(Strict):
    rounds_completed: int | None = Field(None, ge=0)
    min_final_accuracy: float | None = Field(None, ge=0, le=1)
    no_accepted_update_lost: bool = False
    max_wall_s: float | None = Field(None, gt=0)
    max_dropped_fraction: float | None = Field(None, ge=0, le=1)
    target_accuracy: float | None = Field(None, ge=0, le=1)  # reported as time to target
    # no applied round's update (the summary's step_norm) longer than this
    max_step_norm: float | None = Field(None, gt=0)

    @model_serializer(mode="wrap")
    def _omit_unset_step_bound(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``max_step_norm`` key unless set, so scenario digests (and reused bench runs)
        stay as they were before it existed."""
        data = handler(self)
        if data.get("max_step_norm") is None:
            data.pop("max_step_norm", None)
        return data


def online_windows(
    clients: list[str], section: AvailabilitySection, horizon_s: float, seed: int
) -> dict[str, list[tuple[float, float]] | None]:
    """Per device, [start, end) windows in seconds from the scenario start (None = always)."""
    rng = np.random.default_rng([seed, 1])
    churners = set()
    n_churn = round(section.churn.fraction * len(clients))
    if n_churn:
        churners = set(rng.choice(clients, size=n_churn, replace=False).tolist())
    never = set()
    n_never = round(section.churn.never_return_fraction * len(churners))
    if n_never:
        never = set(rng.choice(sorted(churners), size=n_never, replace=False).tolist())
    out: dict[str, list[tuple[float, float]] | None] = {}
    for client in clients:
        own = section.devices.get(client)
        join = own.join_s if own else section.join_s + rng.uniform(0, section.join_spread_s)
        leave = own.leave_s if own and own.leave_s else section.leave_s
        end = min(horizon_s, leave) if leave else horizon_s
        if client not in churners:
            out[client] = None if join == 0 and leave is None else [(join, end)]
            continue
        windows, t = [], join
        while t < end:
            on = rng.exponential(section.churn.online_mean_s)
            windows.append((t, min(end, t + on)))
            if client in never:
                break
            t += on + rng.exponential(section.churn.offline_mean_s)
        out[client] = windows
    return out


def draw_slowdown(dist: Distribution, rng: np.random.Generator) -> float:
    if dist.distribution == "constant":
        factor = dist.value
    elif dist.distribution == "uniform":
        factor = rng.uniform(dist.low, dist.high)
    elif dist.distribution == "lognormal":
        factor = math.exp(rng.normal(math.log(dist.median), dist.sigma))
    else:  # classic Pareto with minimum 1: heavy right tail
        factor = (1.0 - rng.uniform()) ** (-1.0 / dist.alpha)
    return float(min(dist.max_factor, max(1.0, factor)))


def device_conditions(
    devices: list[tuple[str, str]], availability: AvailabilitySection,
    stragglers: StragglerSection, t0: float, horizon_s: float, seed: int,
) -> dict[str, DeviceConditions]:
    """Everything a worker needs to simulate each device, with absolute window times."""
    clients = [c for _, c in devices]
    windows = online_windows(clients, availability, horizon_s, seed)
    rng = np.random.default_rng([seed, 2])
    out = {}
    for region, client in devices:
        own = stragglers.devices.get(client)
        link = stragglers.regions.get(region, stragglers.link)
        slowdown = draw_slowdown(stragglers.slowdown, rng)
        if own is not None:
            link = LinkSection(
                uplink_kbps=own.uplink_kbps or link.uplink_kbps,
                downlink_kbps=own.downlink_kbps or link.downlink_kbps,
                latency_ms=own.latency_ms or link.latency_ms)
            slowdown = own.slowdown or slowdown
        w = windows[client]
        out[client] = DeviceConditions(
            online=None if w is None else [(t0 + a, t0 + b) for a, b in w],
            slowdown=slowdown, uplink_kbps=link.uplink_kbps,
            downlink_kbps=link.downlink_kbps, latency_ms=link.latency_ms)
    return out
