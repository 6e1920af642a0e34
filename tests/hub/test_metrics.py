"""The hubs' Prometheus metrics: the collector reads a hub's own bookkeeping, and the HTTP
endpoint serves it (no broker: a HubProcess does not connect until ``run``)."""

from __future__ import annotations

import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedsa_common.errors import WireError
from hub.metrics import METRIC_NAMES, histogram_buckets, registry_for, serve_metrics
from hub.process import HubProcess


class Cloudish(HubProcess):
    role = "cloud"


def make_hub(tmp_path, cls=HubProcess) -> HubProcess:
    return cls("mqtt://127.0.0.1:1", "fed1", "north", tmp_path)


def samples(hub) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry_for(hub)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items()
                                  if k not in ("federation", "role", "hub")))
            out[(s.name, labels)] = s.value
    return out


def test_round_hooks_feed_rounds_duration_and_accepted(tmp_path):
    hub = make_hub(tmp_path)
    hub.round_started(1, at=0.0)
    assert hub.current_round == 1
    hub.round_done(1, accepted=3)
    hub.round_started(2)
    hub.round_done(2)
    assert hub.counters["rounds.completed"] == 2
    assert hub.counters["updates.accepted"] == 3
    assert len(hub.round_durations) == 2 and hub.round_durations[0] > 1e6  # started at t=0
    assert hub.current_round == 2


def test_collector_exposes_every_metric_with_labels(tmp_path):
    hub = make_hub(tmp_path, Cloudish)
    hub.online = {"a": "north", "b": "south"}  # type: ignore[attr-defined]
    hub.round_started(1)
    hub.round_done(1, accepted=4)
    hub.round_started(2)
    hub.count_reject(WireError("stale", "x"), "t")
    hub.count_reject(WireError("stale", "y"), "t")
    hub.count_reject(WireError("norm_bound", "z"), "t")
    hub.session.stats["bytes_received"] = 1234
    hub.session.stats["bytes_published"] = 99
    s = samples(hub)
    assert s[("fedsa_hub_rounds_completed_total", ())] == 1
    assert s[("fedsa_hub_current_round", ())] == 2
    assert s[("fedsa_hub_updates_accepted_total", ())] == 4
    assert s[("fedsa_hub_updates_rejected_total", (("reason", "stale"),))] == 2
    assert s[("fedsa_hub_updates_rejected_total", (("reason", "norm_bound"),))] == 1
    assert s[("fedsa_hub_bytes_received_total", ())] == 1234
    assert s[("fedsa_hub_bytes_sent_total", ())] == 99
    assert s[("fedsa_hub_round_duration_seconds_count", ())] == 1
    assert s[("fedsa_hub_round_duration_seconds_bucket", (("le", "+Inf"),))] == 1
    assert s[("fedsa_hub_devices_online", ())] == 2
    assert s[("fedsa_hub_privacy_epsilon_spent", ())] == 0
    text = generate_latest(registry_for(hub)).decode()
    assert 'federation="fed1",hub="north",role="cloud"' in text
    for name in METRIC_NAMES:
        assert name in text, name


def test_regional_has_no_devices_online(tmp_path):
    assert not any(name == "fedsa_hub_devices_online" for name, _ in samples(make_hub(tmp_path)))


def test_histogram_buckets_are_cumulative():
    buckets = histogram_buckets([0.5, 3.0, 3.0, 5000.0], bounds=(1, 5, 10))
    assert buckets == [("1.0", 1.0), ("5.0", 3.0), ("10.0", 3.0), ("+Inf", 4.0)]


def test_http_endpoint_serves_the_metrics(tmp_path):
    hub = make_hub(tmp_path)
    hub.round_started(7)
    server = serve_metrics(hub, 0)  # port 0: any free port
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
        assert 'fedsa_hub_current_round{federation="fed1",hub="north",role="hub"} 7.0' in body
    finally:
        server.shutdown()
        server.server_close()
