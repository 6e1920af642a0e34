"""``hub config validate`` and ``hub config template`` through the real CLI (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedsa_common.federation.config import FederationConfig
from hub.cli import app
from hub.templates import TEMPLATES

ROOT = Path(__file__).parents[2]


def validate(path: Path):
    return CliRunner().invoke(app, ["config", "validate", str(path)])


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_validates(tmp_path, name):
    printed = CliRunner().invoke(app, ["config", "template", name])
    assert printed.exit_code == 0, printed.output
    path = tmp_path / f"{name}.yaml"
    path.write_text(printed.stdout)
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("valid ") and len(result.stdout.strip().splitlines()) == 1


def test_required_templates_exist_and_list():
    assert {"tiny-test", "edge-4bit", "fedit-baseline"} <= set(TEMPLATES)
    listing = CliRunner().invoke(app, ["config", "template"])
    assert listing.exit_code == 0
    assert all(name in listing.stdout for name in TEMPLATES)


def test_unknown_template_exits_2_listing_the_names():
    result = CliRunner().invoke(app, ["config", "template", "huge-cluster"])
    assert result.exit_code == 2
    assert "huge-cluster" in result.stderr and "edge-4bit" in result.stderr


@pytest.mark.parametrize(
    "name",
    ["tiny.yaml", "quickstart.yaml", "bench-20ng.yaml", "bench-sentiment.yaml",
     "bench-scarce.yaml", "weight-attack.yaml"],
)
def test_shipped_scenarios_validate(name):
    result = validate(ROOT / "scenarios" / name)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("valid scenario ")


def test_unknown_key_is_an_error_naming_path_and_allowed_keys(tmp_path):
    result = validate(write(tmp_path, {"model": {"num_labels": 4}, "training": {"lrr": 0.1}}))
    assert result.exit_code == 2
    assert "training.lrr: unknown key; allowed: local_steps, batch_size, lr" in result.stderr


def test_every_error_is_reported_with_allowed_values(tmp_path):
    data = {"model": {"precision": "nf5", "num_labels": 4},
            "fedsa_lora": {"algorithm": "fedavg"}, "rounds": 0, "bogus": 1}
    result = validate(write(tmp_path, data))
    assert result.exit_code == 2
    err = result.stderr
    assert "4 errors" in err
    assert "model.precision: got 'nf5'; allowed: nf4, fp4, int8, fp16, bf16, fp32" in err
    assert "fedsa_lora.algorithm: got 'fedavg'; allowed: fedsa, fedit, ffa, local" in err
    assert "rounds: Input should be greater than or equal to 1 (got 0)" in err
    assert "bogus: unknown key" in err


def test_scenario_errors_name_scenario_and_data_fields(tmp_path):
    data = yaml.safe_load((ROOT / "scenarios" / "tiny.yaml").read_text())
    data["scenario"]["data"]["partition"] = "random"
    data["scenario"]["data"]["colour"] = "red"
    data["scenario"]["broker"] = "pigeon"
    result = validate(write(tmp_path, data))
    assert result.exit_code == 2
    assert "scenario file" in result.stderr
    assert "scenario.data.partition: got 'random'; allowed: iid, dirichlet, column" in result.stderr
    assert "scenario.data.colour: unknown key; allowed: source," in result.stderr
    assert "scenario.broker: must be auto, mosquitto, embedded" in result.stderr


def test_layer_wise_split_without_rules_names_the_field(tmp_path):
    section = {"adaptive_split": {"enable": True, "strategy": "layer_wise"}}
    result = validate(write(tmp_path, {"model": {"num_labels": 4}, "fedsa_lora": section}))
    assert result.exit_code == 2
    assert "fedsa_lora.adaptive_split: layers: strategy layer_wise needs" in result.stderr


def test_disabled_placeholders_validate_and_leave_the_digest_alone(tmp_path):
    data = {"model": {"num_labels": 4},
            "fedsa_lora": {"adaptive_split": {"enable": False, "strategy": "importance_based",
                                              "threshold": 0.3},
                           "privacy": {"differential_privacy": {"enable": False,
                                                                "epsilon": 2.0}}}}
    assert validate(write(tmp_path, data)).exit_code == 0
    with_placeholders = FederationConfig.model_validate(data)
    without = FederationConfig.model_validate({"model": {"num_labels": 4}})
    assert with_placeholders.digest() == without.digest()
    assert "adaptive_split" not in with_placeholders.model_dump()["fedsa_lora"]


def test_placeholder_enum_lists_strategies(tmp_path):
    result = validate(write(tmp_path, {"model": {"num_labels": 4},
                                       "fedsa_lora": {"adaptive_split": {"strategy": "x"}}}))
    assert "allowed: fixed, importance_based, layer_wise" in result.stderr


def test_cloud_config_needs_num_labels(tmp_path):
    result = validate(write(tmp_path, {"rounds": 3}))
    assert result.exit_code == 2
    assert "model.num_labels: required" in result.stderr


def test_missing_and_malformed_files_exit_2(tmp_path):
    assert validate(tmp_path / "nope.yaml").exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1,\n")
    result = validate(bad)
    assert result.exit_code == 2 and "not valid YAML" in result.stderr


def test_tune_section_is_checked(tmp_path):
    data = yaml.safe_load((ROOT / "scenarios" / "tiny.yaml").read_text())
    data["fedsa_lora"] = {"compression": {"enable": False}}
    data["tune"] = {"params": ["lr", "compression_ratio"]}
    result = validate(write(tmp_path, data))
    assert result.exit_code == 2
    assert "tune.params: compression_ratio needs" in result.stderr
