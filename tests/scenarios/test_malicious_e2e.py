"""The shipped malicious scenario, shrunk to the tiny random BERT, with one sign-flipping
attacker and the regional hubs on the median rule.  Starts a real broker process (Mosquitto,
or the embedded one) and real cloud hub, regional hub and device worker processes; the
attacker's poisoned updates are accepted, the hubs forward median partials, and every
round completes.  (That the partial equals the median of the updates is checked on the
intake directly, in tests/hub/test_intake_robust.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from scenarios.config import ScenarioConfig
from scenarios.runner import run_scenario

ROOT = Path(__file__).parents[2] / "scenarios"

pytestmark = pytest.mark.integration


def test_median_federation_with_a_sign_flip_attacker_completes(tmp_path):
    raw = yaml.safe_load((ROOT / "malicious.yaml").read_text())
    raw["model"] = {"path": "tiny-bert", "precision": "nf4", "max_length": 32}
    raw["training"] = {"local_steps": 3, "batch_size": 8, "lr": 0.001}
    raw["rounds"] = 2
    raw["round_policy"]["aggregation"] = {"rule": "median"}
    raw["round_policy"]["resend_s"] = 2
    sc = raw["scenario"]
    sc["topology"] = {"regions": {"north": 3, "south": 2}}
    sc["data"].update({"classes": 3, "max_train": 48, "max_test": 24})
    sc["timeout_s"] = 240
    sc["adversaries"] = {"devices": ["north-1"], "attack": "sign_flip", "factor": 10.0}
    sc["expect"] = {"rounds_completed": 2, "no_accepted_update_lost": True}
    report = run_scenario(ScenarioConfig.model_validate(raw), tmp_path, echo=lambda _: None)

    assert report["expectations"]["ok"], report["expectations"]["failures"]
    assert report["final"]["finished"] and report["final"]["rounds_completed"] == 2
    assert report["adversaries"] == {"north-1": {"kind": "sign_flip", "factor": 10.0}}
    assert report["final"]["honest_accuracy"] is not None
    # every update, the attacker's included, was accepted and applied: robustness comes
    # from the rule, not from refusing updates
    assert report["updates"]["applied"] == 5 * 2 and report["updates"]["lost"] == []
    for region in ("north", "south"):
        log = (tmp_path / "logs" / f"regional-{region}.log").read_text()
        assert log.count("rule median) final") == 2, region
    north = (tmp_path / "logs" / "regional-north.log").read_text()
    accepted = re.findall(r"accepted \d+ updates?: ([^\"\n]*)", north)  # a line a batch
    ids = {item.split(" (")[0] for line in accepted for item in line.split(", ")}
    assert {"north-1:1", "north-1:2"} <= ids
    workers = "".join(p.read_text() for p in (tmp_path / "logs").glob("worker-*.log"))
    poisoned = [line for line in workers.splitlines() if "poisoned (sign_flip x10)" in line]
    assert len(poisoned) == 2 and all("north-1:" in line for line in poisoned)
