"""Scenario files are validated before anything starts; errors name the bad field."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsa_common.config import ConfigError
from scenarios.cli import app
from scenarios.config import load_scenario

ROOT = Path(__file__).parents[2] / "scenarios"


@pytest.mark.parametrize("name", ["tiny.yaml", "quickstart.yaml"])
def test_shipped_scenarios_validate(name):
    config = load_scenario(ROOT / name)
    fed = config.federation_config(num_labels=4)
    assert fed.model.num_labels == 4
    assert fed.sampling.min_clients == config.scenario.topology.num_devices


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ("rounds: 0", "rounds"),
        ("fedsa_lora: {algorithm: fedavg}", "fedsa_lora.algorithm"),
        ("fedsa_lora: {compression: {method: gzip}}", "fedsa_lora.compression.method"),
        ("model: {precision: int3}", "model.precision"),
        ("trainnig: {lr: 1}", "trainnig"),
        ("training: {lr: -1}", "training.lr"),
    ],
)
def test_bad_fields_are_named(tmp_path, patch, field):
    text = (ROOT / "tiny.yaml").read_text() + "\n" + patch + "\n"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert field in str(err.value)


def test_topology_and_data_errors_are_named(tmp_path):
    base = (ROOT / "tiny.yaml").read_text()
    path = tmp_path / "bad.yaml"
    path.write_text(base.replace("regions: {north: 2, south: 2}", "regions: {north: 0}"))
    with pytest.raises(ConfigError, match=r"scenario\.topology\.regions"):
        load_scenario(path)
    path.write_text(base.replace("partition: dirichlet", "partition: random"))
    with pytest.raises(ConfigError, match=r"scenario\.data"):
        load_scenario(path)


def test_cli_exits_nonzero_before_starting_anything(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text((ROOT / "tiny.yaml").read_text() + "\nrounds: -3\n")
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "rounds" in result.output
    assert not (tmp_path / "out").exists()
