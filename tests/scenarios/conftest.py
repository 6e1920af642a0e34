"""The one live tiny federation that test_federation_e2e.py and test_ops_live.py both assert
on: starting a broker, three hubs and the device worker costs far more than the checks, so
the run happens once per session and each module reads what it needs from it."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
LIVE_ROUNDS = 5  # enough that rounds are likely still running when the status is read


def scrape(port: int) -> dict[str, float]:
    """A hub's Prometheus samples by name (with the ``reason`` and ``client`` labels, where
    there are any)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items())
                                   if k in ("reason", "client"))
            out[key] = s.value
    return out


@pytest.fixture(scope="session")
def run_tiny_with_dp(tmp_path_factory):
    """``run(name, dp)``: ``scenarios/tiny.yaml`` for 3 rounds with ``dp`` as its
    differential-privacy section, played by the runner (a real broker, hubs and devices);
    its report and output directory.  The DP end-to-end tests differ only in that section."""
    import yaml

    from scenarios.config import ScenarioConfig
    from scenarios.runner import run_scenario

    def run(name: str, dp: dict[str, Any]) -> tuple[dict[str, Any], Path]:
        raw = yaml.safe_load(TINY.read_text())
        raw["rounds"] = 3
        raw["fedsa_lora"] = {"privacy": {"differential_privacy": dp}}
        out = tmp_path_factory.mktemp(name)
        return run_scenario(ScenarioConfig.model_validate(raw), out, echo=lambda _: None), out

    return run


@dataclass
class LiveRun:
    """What the run left: its report and output directory, the spy's record of every
    payload, each hub's last metrics scraped while it ran, and ``hub status`` as read
    (text, healthy) once a round had completed."""

    report: dict[str, Any]
    spy: Any  # conftest.BrokerSpy, closed
    out: Path
    seen: dict[str, dict[str, float]]
    statuses: list[tuple[str, bool]]


@pytest.fixture(scope="session")
def live_tiny_run(tmp_path_factory, broker_spy) -> LiveRun:
    """``scenarios/tiny.yaml`` for LIVE_ROUNDS rounds against a real broker (Mosquitto when
    installed, else embedded amqtt), with real hub and device processes, while a spy
    subscribed to ``#`` keeps every payload and the hubs' metrics and status are read."""
    from fedsa_common.net.broker import start_broker
    from hub.status import collect, render
    from scenarios.config import load_scenario
    from scenarios.runner import run_scenario

    out = tmp_path_factory.mktemp("live") / "run"
    config = load_scenario(TINY, [f"rounds={LIVE_ROUNDS}"])
    seen: dict[str, dict[str, float]] = {}
    statuses: list[tuple[str, bool]] = []
    result: dict[str, Any] = {}
    with start_broker("auto") as broker:
        spy = broker_spy(broker.url)
        spy.session.connect()
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
        time.sleep(0.5)  # the spy's last frames
        spy.session.close()
    assert "report" in result, "the scenario did not finish"
    return LiveRun(result["report"], spy, out, seen, statuses)
