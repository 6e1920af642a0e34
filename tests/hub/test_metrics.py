"""The hubs' Prometheus metrics: the collector reads a hub's own bookkeeping, and the HTTP
endpoint serves it (no broker: a HubProcess does not connect until ``run``)."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import replace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedsa_common.federation.config import FederationConfig
from fedsa_common.privacy.secagg import SecAggClient, SecAggError, wire
from fedsa_common.privacy.secagg.identity import Authority
from fedsa_common.privacy.secagg.messages import SurvivorSignature
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader
from hub.metrics import METRIC_NAMES, histogram_buckets, registry_for, serve_metrics
from hub.process import Event, HubProcess
from hub.secagg_region import RegionSecAgg


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


# ------------------------------------------------------------------ secure aggregation

SECAGG_CONFIG = FederationConfig.model_validate({
    "federation": {"name": "fed1", "seed": 2},
    "fedsa_lora": {"compression": {"method": "dense"},
                   "privacy": {"secure_aggregation": {"enable": True}}},
})


def test_secagg_counters_are_exposed_by_reason(tmp_path):
    hub = make_hub(tmp_path)
    hub.counters.update({"secagg.rounds": 3, "secagg.completed": 1, "secagg.failed": 2,
                         "secagg.failed.secagg_out_of_range": 1,
                         "secagg.failed.secagg_too_few": 1, "secagg.dropped": 2,
                         "secagg.excluded.secagg_bad_share": 1,
                         "secagg.excluded.secagg_unauthenticated": 3})
    s = samples(hub)
    assert s[("fedsa_hub_secagg_rounds_total", ())] == 3
    assert s[("fedsa_hub_secagg_rounds_completed_total", ())] == 1
    failed = {k[1][0][1]: v for k, v in s.items()
              if k[0] == "fedsa_hub_secagg_rounds_failed_total"}
    assert failed == {"secagg_out_of_range": 1, "secagg_too_few": 1}
    dropped = {k[1][0][1]: v for k, v in s.items()
               if k[0] == "fedsa_hub_secagg_devices_dropped_total"}
    assert dropped == {"dropout": 2, "secagg_bad_share": 1, "secagg_unauthenticated": 3}
    idle = samples(make_hub(tmp_path / "idle"))  # no secure round yet: zeros, no reasons
    assert idle[("fedsa_hub_secagg_rounds_total", ())] == 0
    assert idle[("fedsa_hub_secagg_devices_dropped_total", (("reason", "dropout"),))] == 0
    assert not any(k[0] == "fedsa_hub_secagg_rounds_failed_total" for k in idle)


def test_a_device_excluded_for_a_bad_signature_is_counted_once_however_often_it_resends(
        tmp_path):
    """The regional driver counts a refusal that leaves a participant out of the round
    (here: keys whose signature does not verify) once per device and round, and the
    metric shows it by reason; a refusal that excludes nobody (a message for another
    stage) is not counted as a drop."""
    hub = make_hub(tmp_path)
    secagg = RegionSecAgg(hub.session, hub.topics, "fed1", "north", hub.counters)
    selected = ["d1", "d2", "d3", "d4"]
    header = AnnounceHeader(federation="fed1", round=1, version=0, status="running",
                            selected={"north": selected},
                            config=SECAGG_CONFIG.model_dump(mode="json"),
                            config_hash=SECAGG_CONFIG.digest(), deadline_s=60.0,
                            issued_at=time.time(), shared=["a"])
    secagg.announce(header, SECAGG_CONFIG, {"a": (4, 8)}, time.time())
    ctx = secagg.active.server.ctx  # type: ignore[union-attr]
    authority = Authority.generate()

    def event(client: str, stage: str, msg) -> Event:
        return Event("secagg", hub.topics.secagg_up("north", client),
                     wire.encode("fed1", 1, "north", client, stage, msg), time.time())

    good = SecAggClient(ctx, "d1", identity=authority.issue("fed1", "north", "d1"))
    secagg.on_message(event("d1", "advertise", good.advertise()), 10_000_000)
    forged = SecAggClient(ctx, "d2", identity=authority.issue("fed1", "north", "d2"))
    adv = forged.advertise()
    assert adv.auth is not None
    bad = replace(adv, auth=replace(adv.auth, signature=bytes(64)))
    for _ in range(3):  # the device resends what it sent
        with pytest.raises(SecAggError, match="secagg_unauthenticated"):
            secagg.on_message(event("d2", "advertise", bad), 10_000_000)
    with pytest.raises(SecAggError, match="secagg_state"):  # a stage not reached yet
        secagg.on_message(event("d1", "survivor_signature", SurvivorSignature(
            "d1", bytes(64))), 10_000_000)
    assert hub.counters["secagg.excluded.secagg_unauthenticated"] == 1
    assert secagg.active.excluded == {"d2": "secagg_unauthenticated"}  # type: ignore[union-attr]
    s = samples(hub)
    assert s[("fedsa_hub_secagg_devices_dropped_total",
              (("reason", "secagg_unauthenticated"),))] == 1
    assert not any(k[0] == "fedsa_hub_secagg_devices_dropped_total"
                   and k[1] == (("reason", "secagg_state"),) for k in s)


def cloud_with_devices(tmp_path, online: dict[str, str]) -> HubProcess:
    """A cloud-role hub whose device table says: d1 selected in rounds 1-3 and accepted in
    round 2 (a minute ago), d2 selected in round 1, d3 only seen."""
    from hub.device_table import DeviceTable

    hub = make_hub(tmp_path, Cloudish)
    table = DeviceTable()
    table.seen("d3", "south")
    table.selected({"north": ["d1", "d2"]}, 1)
    table.selected({"north": ["d1"]}, 3)
    table.accepted(["d1:2"], at=time.time() - 60)
    hub.devices = table  # type: ignore[attr-defined]
    hub.online = online  # type: ignore[attr-defined]
    return hub


def scrape_endpoint(hub, max_devices: int) -> list:
    server = serve_metrics(hub, 0, max_devices=max_devices)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def test_the_endpoint_serves_the_device_table_as_labelled_gauges(tmp_path):
    hub = cloud_with_devices(tmp_path, {"d1": "north", "d3": "south"})
    got = {(s.name, s.labels.get("client")): (s.value, s.labels) for s in
           scrape_endpoint(hub, max_devices=10) if s.name.startswith("fedsa_hub_device")}
    assert got[("fedsa_hub_device_online", "d1")][0] == 1
    assert got[("fedsa_hub_device_online", "d2")][0] == 0  # known, not online
    assert got[("fedsa_hub_device_online", "d3")][0] == 1
    assert got[("fedsa_hub_device_last_selected_round", "d1")][0] == 3
    assert got[("fedsa_hub_device_last_selected_round", "d2")][0] == 1
    assert got[("fedsa_hub_device_last_accepted_round", "d1")][0] == 2
    assert 60 <= got[("fedsa_hub_device_last_accepted_age_seconds", "d1")][0] < 3600
    # unknown values have no sample rather than a made-up one
    assert ("fedsa_hub_device_last_selected_round", "d3") not in got
    assert ("fedsa_hub_device_last_accepted_round", "d2") not in got
    assert got[("fedsa_hub_device_online", "d1")][1] == {
        "federation": "fed1", "role": "cloud", "hub": "north", "client": "d1",
        "region": "north"}
    assert got[("fedsa_hub_devices_unlisted", None)][0] == 0


def test_device_series_are_capped_keeping_online_devices_first(tmp_path):
    hub = cloud_with_devices(tmp_path, {"d3": "south"})
    samples_ = scrape_endpoint(hub, max_devices=2)
    listed = {s.labels["client"] for s in samples_ if s.name == "fedsa_hub_device_online"}
    assert listed == {"d3", "d1"}  # online first, then the latest accepted update
    [unlisted] = [s.value for s in samples_ if s.name == "fedsa_hub_devices_unlisted"]
    assert unlisted == 1
    none = scrape_endpoint(hub, max_devices=0)
    assert not [s for s in none if s.name == "fedsa_hub_device_online"]
    assert [s.value for s in none if s.name == "fedsa_hub_devices_unlisted"] == [3]


def test_a_regional_hub_has_no_device_series(tmp_path):
    assert not any(name.startswith("fedsa_hub_device") for name, _ in samples(make_hub(tmp_path)))
