"""The cloud's device table (``hub status``'s device lines) as labelled Prometheus gauges,
one series per device and metric, with a cap on how many devices get series.

Labels ``client`` and ``region`` make one series per device, and a federation of phones
can have far more devices than a Prometheus server wants series: past ``max_devices``,
the devices that matter most are kept (online first, then the most recently accepted
update, then by name, so the set is stable between scrapes) and
``fedsa_hub_devices_unlisted`` counts the rest.  ``--metrics-max-devices 0`` turns the
per-device series off.  Pure: reads a snapshot of the table, returns metric families.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

PREFIX = "fedsa_hub"
DEVICE_LABELS = ("client", "region")
MAX_DEVICES = 1000  # default cap on devices with series (4 series each)

METRIC_NAMES: tuple[str, ...] = (
    f"{PREFIX}_device_online",
    f"{PREFIX}_device_last_selected_round",
    f"{PREFIX}_device_last_accepted_round",
    f"{PREFIX}_device_last_accepted_age_seconds",
    f"{PREFIX}_devices_unlisted",
)


class Record(Protocol):
    region: str | None
    last_selected: int | None
    last_accepted: int | None


def chosen(records: Mapping[str, Record], online: Mapping[str, str],
           accepted_at: Mapping[str, float], max_devices: int) -> list[str]:
    """The clients that get series: every known one up to ``max_devices``, else the most
    relevant (online, then latest accepted update, then name)."""
    clients = set(records) | set(online)
    return sorted(clients, key=lambda c: (c not in online, -accepted_at.get(c, 0.0), c)
                  )[:max(0, max_devices)]


def device_families(base_labels: Sequence[str], base_values: Sequence[str],
                    records: Mapping[str, Record], online: Mapping[str, str],
                    accepted_at: Mapping[str, float], now: float,
                    max_devices: int = MAX_DEVICES) -> Iterator[Metric]:
    """The per-device gauges (a round or an age only where known) and the unlisted count."""
    labels = (*base_labels, *DEVICE_LABELS)
    fams = {name: GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels) for name, doc in (
        ("device_online", "1 while the device's retained presence says online, else 0."),
        ("device_last_selected_round", "Last round the cloud selected the device for."),
        ("device_last_accepted_round", "Last round whose step took the device's update."),
        ("device_last_accepted_age_seconds",
         "Seconds since the step that took the device's last accepted update."))}
    keep = chosen(records, online, accepted_at, max_devices)
    for client in keep:
        rec = records.get(client)
        region = online.get(client) or (rec.region if rec is not None else None) or ""
        values = [*base_values, client, region]
        fams["device_online"].add_metric(values, 1.0 if client in online else 0.0)
        if rec is not None and rec.last_selected is not None:
            fams["device_last_selected_round"].add_metric(values, rec.last_selected)
        if rec is not None and rec.last_accepted is not None:
            fams["device_last_accepted_round"].add_metric(values, rec.last_accepted)
        if client in accepted_at:
            fams["device_last_accepted_age_seconds"].add_metric(
                values, max(0.0, now - accepted_at[client]))
    yield from fams.values()
    unlisted = GaugeMetricFamily(
        f"{PREFIX}_devices_unlisted", "Devices known to the cloud without per-device series "
        "(past --metrics-max-devices).", labels=list(base_labels))
    unlisted.add_metric(list(base_values), len(set(records) | set(online)) - len(keep))
    yield unlisted
