"""A scenario's ``links`` on real processes: ``scenarios/tiny.yaml`` shrunk to one region of
two devices and one round, played by the runner with a real broker, hubs and device worker.
Device north-1's link goes down 5 s after it starts and stays down for 35 s; its own link
latency (8 s each way) puts its first update, and the metrics after it, inside that outage.

What must hold: the update lost on the link is resent until acknowledged, the round
completes with both updates applied, nothing acknowledged is lost, and the report says what
the link dropped.  north-1 joins 10 s after the start, so that the cloud (up by then) announces
round 1 as soon as it is online: the announcement reaches it before its link goes down.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scenarios.config import ScenarioConfig
from scenarios.runner import run_scenario

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"

pytestmark = pytest.mark.integration


def test_an_update_lost_on_a_device_link_is_resent_and_applied(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["rounds"] = 1
    raw["round_policy"] = {"deadline_s": 120, "resend_s": 2}
    raw["scenario"].update({
        "topology": {"regions": {"north": 2}},
        "timeout_s": 240,
        "availability": {"devices": {"north-1": {"join_s": 10}}},
        "stragglers": {"devices": {"north-1": {"latency_ms": 8000}}},
        "links": {"devices": {"north-1": {"offline": [[5, 40]]}}},
        "expect": {"rounds_completed": 1, "no_accepted_update_lost": True},
    })
    report = run_scenario(ScenarioConfig.model_validate(raw), tmp_path, echo=lambda _: None)

    assert report["expectations"]["ok"], report["expectations"]["failures"]
    assert report["updates"]["lost"] == []
    assert report["rounds"][0]["accepted"] == 2  # north-1's update too, after the outage
    links = report["device_links"]
    assert set(links) == {"north-1"}
    assert links["north-1"]["published"] >= 2  # its update and its metrics
    log = (tmp_path / "logs" / "worker-0.log").read_text()
    assert "north-1: re-sent update of round 1" in log
