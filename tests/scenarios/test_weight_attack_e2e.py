"""The shipped weight-attack scenario (issue 15, point 6) against real processes: a broker,
the cloud hub, three regional hubs and 12 devices on the tiny random BERT, two of them in
the 3-device east region sending -100x their update and declaring 1e6 samples.  Every
round completes with every update applied (robustness comes from the rules, not from
refusals) and no round's update is longer than the scenario's bound: before the fix the
cloud averaged the regions by declared samples and took east's (the attackers') median."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.config import load_scenario
from scenarios.runner import run_scenario

ROOT = Path(__file__).parents[2] / "scenarios"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_attackers_declaring_huge_sample_counts_are_outvoted(tmp_path):
    report = run_scenario(load_scenario(ROOT / "weight-attack.yaml"), tmp_path,
                          echo=lambda _: None)
    assert report["expectations"]["ok"], report["expectations"]["failures"]
    assert report["updates"]["applied"] == 12 * 2 and report["updates"]["lost"] == []
    assert report["final"]["max_step_norm"] <= 0.5
    cloud = (tmp_path / "logs" / "cloud.log").read_text()
    assert cloud.count("3 regional estimates combined by median") == 2
    workers = "".join(p.read_text() for p in (tmp_path / "logs").glob("worker-*.log"))
    assert workers.count("declaring 1000000 samples") == 2 * 2
