"""Operations against a live tiny federation: every hub serves Prometheus metrics on the
port noted in metrics_ports.json, ``hub status`` reads the retained state while rounds run,
and the run leaves report.html with its plots beside report.json."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scenarios.config import load_scenario
from scenarios.report_plots import PLOTS

pytestmark = pytest.mark.integration

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items())
                                   if k == "reason")
            out[key] = s.value
    return out


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    from fedsa_common.broker import start_broker
    from hub.status import collect, render
    from scenarios.runner import run_scenario

    out = tmp_path_factory.mktemp("ops") / "run"
    # five rounds, so that rounds are likely still running when the status is read
    config = load_scenario(TINY).model_copy(update={"rounds": 5})
    seen: dict[str, dict[str, float]] = {}
    statuses: list[tuple[str, bool]] = []
    result: dict = {}
    with start_broker("auto") as broker:
        runner = threading.Thread(target=lambda: result.update(
            report=run_scenario(config, out, broker.url, echo=lambda _m: None)), daemon=True)
        runner.start()
        deadline = time.time() + 280
        while runner.is_alive() and time.time() < deadline:
            ports_file = out / "metrics_ports.json"
            if ports_file.exists():
                for name, port in json.loads(ports_file.read_text()).items():
                    with contextlib.suppress(OSError):  # not listening yet, or gone
                        seen[name] = scrape(port)
                cloud = seen.get("cloud", {})
                if cloud.get("fedsa_hub_rounds_completed_total", 0) >= 1 and not statuses:
                    snap = collect(broker.url, config.federation.name, timeout_s=3,
                                   settle_s=0.3)
                    statuses.append(render(snap))
            time.sleep(0.3)
        runner.join(timeout=60)
    assert "report" in result, "the scenario did not finish"
    return out, seen, statuses


def test_every_hub_served_its_metrics(live_run):
    out, seen, _ = live_run
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


def test_hub_status_during_the_run(live_run):
    _, _, statuses = live_run
    assert statuses, "no status was read while rounds ran"
    text, healthy = statuses[0]
    assert healthy, text
    # tiny rounds take about a second, so the federation may be done by the time it is read
    if "running" in text.splitlines()[0]:
        assert "of 5 running" in text and "participants: 4 selected" in text
    else:
        assert "finished after round 5 of 5" in text
    assert "cloud/cloud" in text and "regional/north" in text and "regional/south" in text


def test_run_leaves_report_html_and_plots(live_run):
    out, _, _ = live_run
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(PLOTS)
    for name in PLOTS:
        assert (out / name).stat().st_size > 2000
