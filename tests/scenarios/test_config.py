"""Scenario files are validated before anything starts; errors name the bad field."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsa_common.federation.config import ConfigError
from scenarios.cli import app
from scenarios.config import load_scenario

ROOT = Path(__file__).parents[2] / "scenarios"


@pytest.mark.parametrize(
    "name",
    ["tiny.yaml", "quickstart.yaml", "bench-20ng.yaml", "bench-sentiment.yaml",
     "bench-scarce.yaml", "sites.yaml"],
)
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


def column_scenario(tmp_path, regions: str, data_extra: str = "") -> Path:
    """A CSV owned by three users and a scenario that partitions it by owner."""
    rows = ["user,text,label"]
    for owner in ("carol", "alice", "bob"):  # not sorted in the file
        rows += [f"{owner},{owner} says thing number {i},{'pos' if i % 2 else 'neg'}"
                 for i in range(8)]
    data = tmp_path / "notes.csv"
    data.write_text("\n".join(rows) + "\n")
    path = tmp_path / "column.yaml"
    path.write_text(
        "scenario:\n"
        f"  topology: {{regions: {regions}}}\n"
        f"  data: {{source: {data}, partition: column, client_column: user{data_extra}}}\n"
        "model: {path: tiny-bert}\n"
    )
    return path


def test_column_partition_gives_each_device_one_owner(tmp_path):
    from edge_client.data import load_device_data

    config = load_scenario(column_scenario(tmp_path, "{east: 2, west: 1}"))
    sc = config.scenario
    specs = [sc.device_data(i) for i in range(sc.topology.num_devices)]
    assert [s.client for s in specs] == ["alice", "bob", "carol"]
    for owner, spec in zip(("alice", "bob", "carol"), specs, strict=True):
        data = load_device_data(spec)
        texts = data.train.texts + data.test.texts
        assert len(texts) == 8 and all(t.startswith(owner) for t in texts)


def test_column_parts_give_each_owner_several_devices(tmp_path):
    from edge_client.data import load_device_data

    config = load_scenario(column_scenario(tmp_path, "{east: 4, west: 2}", ", parts: 2"))
    sc = config.scenario
    specs = [sc.device_data(i) for i in range(6)]
    assert [(s.client, s.part) for s in specs] == [
        ("alice", 0), ("alice", 1), ("bob", 0), ("bob", 1), ("carol", 0), ("carol", 1)]
    seen: set[str] = set()
    for spec in specs:
        data = load_device_data(spec)
        texts = set(data.train.texts + data.test.texts)
        assert len(texts) == 4 and all(t.startswith(spec.client or "?") for t in texts)
        assert not texts & seen
        seen |= texts
    short = load_scenario(column_scenario(tmp_path, "{east: 3}", ", parts: 2"))
    with pytest.raises(ConfigError, match=r"3 owners.*3 devices.*2 devices \(parts\) per owner"):
        short.scenario.device_data(0)


def test_grouped_partition_takes_shards_from_the_topology(tmp_path):
    from edge_client.data import load_device_data

    path = column_scenario(tmp_path, "{east: 2}")
    path.write_text(path.read_text().replace("partition: column", "partition: grouped"))
    sc = load_scenario(path).scenario
    specs = [sc.device_data(i) for i in range(2)]
    assert [(s.num_clients, s.shard) for s in specs] == [(2, 0), (2, 1)]
    owners = [{t.split()[0] for t in d.train.texts + d.test.texts}
              for d in map(load_device_data, specs)]
    assert sorted(map(len, owners)) == [1, 2] and not owners[0] & owners[1]


def test_column_partition_needs_one_device_per_owner(tmp_path):
    config = load_scenario(column_scenario(tmp_path, "{east: 2}"))
    with pytest.raises(ConfigError, match=r"scenario\.topology\.regions.*3 owners.*2 devices"):
        config.scenario.device_data(0)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "column.yaml"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "3 owners" in result.output
    assert not (tmp_path / "out").exists()


def _tiny_with(tmp_path, **scenario) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "tiny.yaml").read_text())
    raw["scenario"].update(scenario)
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


SITES = {"regions": {"north": 2, "south": 2}, "sites": True}
CUT = {"action": "cut_link", "target": "region:north", "duration_s": 3}


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ({"faults": [CUT]}, r"faults\.0\.action: cut_link needs topology\.sites: true"),
        ({"topology": SITES, "faults": [{**CUT, "target": "region:west"}]},
         r"faults\.0\.target: no region 'west'"),
        ({"topology": SITES, "faults": [{**CUT, "target": "regional:north"}]},
         r"faults\.0.*cut_link needs target region:NAME"),
        ({"topology": SITES, "broker": "embedded"}, r"broker: 'embedded' with topology\.sites"),
        ({"topology": SITES, "broker": "mqtt://elsewhere:1883"}, r"broker: 'mqtt://"),
        ({"topology": SITES, "faults": [{"action": "kill", "target": "broker"}]},
         r"faults\.0\.target: broker with topology\.sites"),
    ],
)
def test_site_topology_errors_name_the_field(tmp_path, scenario, message):
    with pytest.raises(ConfigError, match=message):
        load_scenario(_tiny_with(tmp_path, **scenario))


def test_sites_key_stays_out_of_dumps_unless_set(tmp_path):
    """Scenario digests (reused bench runs) do not change for scenarios without sites."""
    assert "sites" not in load_scenario(ROOT / "tiny.yaml").model_dump()["scenario"]["topology"]
    config = load_scenario(_tiny_with(tmp_path, topology=SITES, faults=[CUT]))
    assert config.model_dump()["scenario"]["topology"]["sites"] is True
    assert config.scenario.faults[0].undo_after_s == 3
