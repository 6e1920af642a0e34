"""hub/config_check.py: the hub finds the scenario check through its entry point, and an
install without it says so instead of failing on an import."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hub import config_check
from scenarios.config_check import check_scenario

ROOT = Path(__file__).parents[2]


def test_the_scenario_check_is_registered_for_the_hub() -> None:
    assert config_check.scenario_checker() is check_scenario


def test_a_scenario_file_without_the_scenarios_package_is_one_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_check, "scenario_checker", lambda: None)
    data = yaml.safe_load((ROOT / "scenarios" / "tiny.yaml").read_text())
    result = config_check.check_data(data)
    assert result.kind == "scenario" and not result.ok
    assert "needs the scenarios package" in str(result.errors[0])
    # a federation config is still checked without it
    assert config_check.check_data({"model": {"num_labels": 2}}).ok


def test_a_causal_federation_needs_no_label_count() -> None:
    causal = config_check.check_federation({"model": {"task": "causal_lm",
                                                      "path": "tiny-causal"}})
    assert causal.errors == () and "tiny-causal causal LM" in causal.summary
    classifier = config_check.check_federation({"model": {"path": "tiny-bert"}})
    assert [e.path for e in classifier.errors] == ["model.num_labels"]
    scenario = check_scenario(yaml.safe_load((ROOT / "scenarios" / "tiny-causal.yaml")
                                             .read_text()))
    assert scenario.errors == ()
