"""Operations against a live tiny federation (the session's ``live_tiny_run``, in
conftest.py, which test_federation_e2e.py asserts on too): every hub serves Prometheus
metrics on the port noted in metrics_ports.json, ``hub status`` reads the retained state
while rounds run, and the run leaves report.html with its plots beside report.json."""

from __future__ import annotations

import json

import pytest

from scenarios.report_plots import PLOTS

pytestmark = pytest.mark.integration


def test_every_hub_served_its_metrics(live_tiny_run):
    out, seen = live_tiny_run.out, live_tiny_run.seen
    ports = json.loads((out / "metrics_ports.json").read_text())
    assert set(ports) == {"cloud", "regional-north", "regional-south"}
    assert set(seen) == set(ports), f"never scraped: {set(ports) - set(seen)}"
    cloud = seen["cloud"]
    assert cloud["fedsa_hub_rounds_completed_total"] >= 1
    assert cloud["fedsa_hub_devices_online"] == 4
    assert cloud["fedsa_hub_updates_accepted_total"] >= 1
    assert cloud["fedsa_hub_bytes_sent_total"] > 0
    assert cloud["fedsa_hub_round_duration_seconds_count"] >= 1
    assert cloud["fedsa_hub_privacy_epsilon_spent"] == 0
    north = seen["regional-north"]
    assert north["fedsa_hub_bytes_received_total"] > 0
    assert north["fedsa_hub_current_round"] >= 1


def test_hub_status_during_the_run(live_tiny_run):
    statuses = live_tiny_run.statuses
    assert statuses, "no status was read while rounds ran"
    text, healthy = statuses[0]
    assert healthy, text
    # tiny rounds take about a second, so the federation may be done by the time it is read
    if "running" in text.splitlines()[0]:
        assert "of 5 running" in text and "participants: 4 selected" in text
    else:
        assert "finished after round 5 of 5" in text
    assert "cloud/cloud" in text and "regional/north" in text and "regional/south" in text


def test_run_leaves_report_html_and_plots(live_tiny_run):
    out = live_tiny_run.out
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(PLOTS)
    for name in PLOTS:
        assert (out / name).stat().st_size > 2000


def test_the_cloud_exported_its_device_table(live_tiny_run):
    """``hub status``'s device lines as labelled gauges on the cloud's real endpoint, as
    last scraped during the run (after a round had completed)."""
    cloud = live_tiny_run.seen["cloud"]
    clients = ["north-0", "north-1", "south-0", "south-1"]
    for client in clients:
        assert cloud[f"fedsa_hub_device_online|client={client}"] in (0, 1)
        assert cloud[f"fedsa_hub_device_last_selected_round|client={client}"] >= 1
    accepted = [c for c in clients
                if cloud.get(f"fedsa_hub_device_last_accepted_round|client={c}", 0) >= 1]
    assert accepted  # a round had completed, with updates
    for client in accepted:
        assert cloud[f"fedsa_hub_device_last_accepted_age_seconds|client={client}"] >= 0
    assert cloud["fedsa_hub_devices_unlisted"] == 0
    assert not any(k.startswith("fedsa_hub_device_") for k in live_tiny_run.seen["regional-north"])
