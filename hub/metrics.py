"""Prometheus metrics of a hub, served over HTTP with prometheus_client.

The collector reads what the hub already keeps (its ``counters``, its MQTT session's byte
counts, ``current_round``, ``round_durations`` and, on the cloud, ``online``) at scrape
time, so the hub's logic needs no metric objects of its own and a scrape can never slow
down a round.  The cloud's device table comes out as per-device gauges (with a cap on how
many devices get series: hub/metrics_devices.py).  Every sample carries ``federation``,
``role`` and ``hub`` labels, so one Prometheus can scrape every hub of several federations
without relabelling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hub.metrics_devices import MAX_DEVICES, device_families

log = logging.getLogger("fedsa.hub.metrics")

PREFIX = "fedsa_hub"
# Rounds last from seconds (tiny tests) to an hour (phones that train overnight).
ROUND_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LABELS = ("federation", "role", "hub")

# Names as exposed (counters get ``_total``, the histogram ``_bucket``/``_sum``/``_count``).
METRIC_NAMES: tuple[str, ...] = (
    f"{PREFIX}_rounds_completed_total",
    f"{PREFIX}_current_round",
    f"{PREFIX}_updates_accepted_total",
    f"{PREFIX}_updates_rejected_total",
    f"{PREFIX}_bytes_received_total",
    f"{PREFIX}_bytes_sent_total",
    f"{PREFIX}_round_duration_seconds",
    f"{PREFIX}_devices_online",
    f"{PREFIX}_privacy_epsilon_spent",
    f"{PREFIX}_secagg_rounds_total",
    f"{PREFIX}_secagg_rounds_completed_total",
    f"{PREFIX}_secagg_rounds_failed_total",
    f"{PREFIX}_secagg_devices_dropped_total",
)


class MonitoredHub(Protocol):
    """What the collector reads; ``hub.process.HubProcess`` provides it."""

    role: str
    federation: str
    name: str
    counters: Mapping[str, int]
    current_round: int
    round_durations: Sequence[float]
    session: Any  # MqttSession: ``stats`` with bytes_published / bytes_received


def _snapshot(counts: Mapping[str, int]) -> dict[str, int]:
    """Copy a mapping that other threads may be adding keys to (a copy racing an insert
    raises RuntimeError; retrying is cheaper than a lock around every increment)."""
    for _ in range(10):
        try:
            return dict(counts)
        except RuntimeError:
            continue
    return {}


def histogram_buckets(values: Sequence[float], bounds: Sequence[float] = ROUND_BUCKETS
                      ) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs ending with ``+Inf``, as Prometheus expects."""
    buckets = [(_le(b), float(sum(1 for v in values if v <= b))) for b in bounds]
    buckets.append(("+Inf", float(len(values))))
    return buckets


def _le(bound: float) -> str:
    return str(float(bound))


def by_reason(counters: Mapping[str, int], prefix: str) -> dict[str, int]:
    """The counters named ``prefix<reason>``, keyed by reason (sorted, for stable output)."""
    return {k.removeprefix(prefix): v for k, v in sorted(counters.items())
            if k.startswith(prefix)}


def secagg_dropped(counters: Mapping[str, int]) -> dict[str, int]:
    """Devices that left a secure round, by reason: ``dropout`` (shared their keys, then
    sent no masked vector: the protocol removes their masks) and every refusal that
    excluded a participant (``secagg.excluded.<reason>``: ``secagg_unauthenticated`` for a
    bad signature, ``secagg_bad_share`` for a share that does not match its commitment,
    ``secagg_bad_dealing`` for a dealer whose shares too few holders could use,
    ``secagg_bad_message``, ``secagg_conflict``), counted once per device and round."""
    dropped = {"dropout": counters.get("secagg.dropped", 0)}
    dropped.update(by_reason(counters, "secagg.excluded."))
    return dropped


class HubCollector(Collector):
    """Turns a hub's existing bookkeeping into metric families at every scrape;
    ``max_devices`` caps the devices of the cloud's device table that get series
    (hub/metrics_devices.py)."""

    def __init__(self, hub: MonitoredHub, max_devices: int = MAX_DEVICES) -> None:
        self.hub = hub
        self.max_devices = max_devices

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        values = [hub.federation, hub.role, hub.name]
        counters = _snapshot(hub.counters)
        stats = _snapshot(getattr(hub.session, "stats", {}))

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)
            m.add_metric(values, value)
            return m

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            m = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)
            m.add_metric(values, value)
            return m

        yield counter("rounds_completed", "Rounds this hub finished its part of.",
                      counters.get("rounds.completed", 0))
        yield gauge("current_round", "Round in progress (or last finished) at this hub.",
                    hub.current_round)
        yield counter("updates_accepted", "Updates accepted (regional: device updates; "
                      "cloud: device updates inside accepted partials).",
                      counters.get("updates.accepted", 0))
        rejected = CounterMetricFamily(f"{PREFIX}_updates_rejected",
                                       "Messages refused by this hub, by reason.",
                                       labels=(*LABELS, "reason"))
        for reason, n in by_reason(counters, "rejected.").items():
            rejected.add_metric([*values, reason], n)
        yield rejected
        yield counter("bytes_received", "MQTT payload bytes received.",
                      stats.get("bytes_received", 0))
        yield counter("bytes_sent", "MQTT payload bytes published.",
                      stats.get("bytes_published", 0))
        durations = list(hub.round_durations)
        hist = HistogramMetricFamily(f"{PREFIX}_round_duration_seconds",
                                     "Wall time of this hub's part of a round.", labels=LABELS)
        hist.add_metric(values, histogram_buckets(durations), sum(durations))
        yield hist
        online = getattr(hub, "online", None)
        if online is not None:
            yield gauge("devices_online", "Devices whose retained presence says online.",
                        len(online))
        table = getattr(hub, "devices", None)  # the cloud's DeviceTable (`hub status`)
        if online is not None and table is not None:
            yield from device_families(LABELS, values, _snapshot(table.records),
                                       _snapshot(online), _snapshot(table.accepted_at),
                                       time.time(), self.max_devices)
        yield gauge("privacy_epsilon_spent", "Differential-privacy budget spent (epsilon); "
                    "0 without differential privacy.",
                    float(getattr(hub, "privacy_epsilon_spent", 0.0)))
        yield from _secagg_families(values, counters)


def _secagg_families(values: list[str], counters: Mapping[str, int]) -> Iterator[Metric]:
    """Secure aggregation at a regional hub (all zero elsewhere).  A round is counted
    when it starts; it ends unmasked (completed) or failed with the protocol's reason
    (``secagg_too_few``, ``secagg_out_of_range`` when the unmasked sum fails the range
    check, ``secagg_reconstruct``, ...)."""
    for name, doc, key in (
            ("secagg_rounds", "Secure-aggregation rounds started in this region.",
             "secagg.rounds"),
            ("secagg_rounds_completed", "Secure-aggregation rounds whose sum was unmasked.",
             "secagg.completed"),
            ("secagg_rounds_without_vss", "Secure-aggregation rounds configured with "
             "verifiable_shares whose roster was above VSS_MAX_ROSTER, so they shared "
             "without VSS.", "secagg.without_vss")):
        m = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)
        m.add_metric(values, counters.get(key, 0))
        yield m
    for name, doc, reasons in (
            ("secagg_rounds_failed", "Secure-aggregation rounds that failed, by reason "
             "(secagg_out_of_range: the unmasked sum failed the range check).",
             by_reason(counters, "secagg.failed.")),
            ("secagg_devices_dropped", "Devices that left a secure round, by reason "
             "(dropout, or the refusal that excluded them: secagg_unauthenticated, "
             "secagg_bad_share, ...).", secagg_dropped(counters))):
        m = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=(*LABELS, "reason"))
        for reason, n in reasons.items():
            m.add_metric([*values, reason], n)
        yield m


def registry_for(hub: MonitoredHub, max_devices: int = MAX_DEVICES) -> CollectorRegistry:
    """A registry of its own per hub, so several hubs in one process (tests) never clash."""
    registry = CollectorRegistry()
    registry.register(HubCollector(hub, max_devices))
    return registry


def serve_metrics(hub: MonitoredHub, port: int, host: str = "127.0.0.1",
                  max_devices: int = MAX_DEVICES) -> Any:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the HTTP server
    (``shutdown()`` stops it).  A port that cannot be bound raises OSError at once, so a
    mistyped port fails the hub's start instead of silently exporting nothing."""
    server, _thread = start_http_server(port, addr=host,
                                        registry=registry_for(hub, max_devices))
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
