"""``scenarios tune`` end to end: two tiny trials through the real broker, hubs and
devices, in two invocations, so the second resumes the study from its SQLite storage.
(Several trials of one invocation sharing one broker, each its own federation, are checked
with stand-in federations in test_tune_space.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scenarios.cli import app
from scenarios.config_check import check_data

# The tuner end to end runs two trials of the tiny federation (about a minute): slow.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"


@pytest.fixture(scope="module")
def tune_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "out"
    first = CliRunner().invoke(app, ["tune", str(TINY), "--trials", "1", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "0 trial(s) already finished, running 1 more" in first.output
    second = CliRunner().invoke(app, ["tune", str(TINY), "--trials", "2", "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert "1 trial(s) already finished, running 1 more" in second.output
    return out


def test_history_has_two_scored_trials_with_reports(tune_dir):
    history = json.loads((tune_dir / "history.json").read_text())
    trials = history["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    assert {t["state"] for t in trials} == {"complete"}
    for t in trials:
        assert 0 <= t["value"] <= 1
        assert set(t["params"]) == {"lr", "lora_r", "local_steps", "compression_ratio"}
        report = Path(t["report"])
        assert json.loads(report.read_text())["final"]["accuracy"] == t["value"]
        assert (report.parent / "report.html").exists()
    assert history["best"]["value"] == max(t["value"] for t in trials)
    assert (tune_dir / "study.db").exists()


def test_best_yaml_is_the_scenario_with_the_best_params(tune_dir):
    history = json.loads((tune_dir / "history.json").read_text())
    best = history["best"]["params"]
    data = yaml.safe_load((tune_dir / "best.yaml").read_text())
    assert check_data(data).ok
    assert data["training"]["lr"] == best["lr"]
    assert data["model"]["lora"]["r"] == best["lora_r"]
    assert data["training"]["local_steps"] == best["local_steps"]
    assert data["fedsa_lora"]["compression"]["ratio"] == best["compression_ratio"]
    assert data["federation"]["name"] == "tiny"


def test_rerun_with_enough_trials_runs_nothing(tune_dir):
    again = CliRunner().invoke(app, ["tune", str(TINY), "--trials", "2", "--out",
                                     str(tune_dir)])
    assert again.exit_code == 0, again.output
    assert "running 0 more" in again.output and "started" not in again.output
