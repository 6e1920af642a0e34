"""The ``adversaries:`` grammar: seeded, replayable choice of malicious devices that reaches
the worker spec files; ``--set`` overrides; the honest-only accuracy of a report."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_client.attack import Attack
from fedsa_common.federation.config import ConfigError
from scenarios.adversaries import AdversarySection, choose_adversaries, honest_accuracy
from scenarios.bench import scenario_digest
from scenarios.cli import app
from scenarios.config import load_scenario
from scenarios.overrides import apply_overrides
from scenarios.runner import write_worker_specs

ROOT = Path(__file__).parents[2] / "scenarios"
CLIENTS = [f"{r}-{i}" for r in ("north", "south") for i in range(5)]


def test_choice_is_seeded_and_sized():
    section = AdversarySection(fraction=0.2, attack="scale", factor=3.0)
    first = choose_adversaries(CLIENTS, section, 0)
    assert first == choose_adversaries(CLIENTS, section, 0)
    assert len(first) == 2 and set(first) <= set(CLIENTS)
    assert all(a == Attack("scale", 3.0) for a in first.values())
    draws = {tuple(choose_adversaries(CLIENTS, section, s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    own_seed = AdversarySection(fraction=0.2, seed=7)
    assert choose_adversaries(CLIENTS, own_seed, 0) == choose_adversaries(CLIENTS, own_seed, 1)


def test_named_devices_and_none():
    named = AdversarySection(devices=["south-1"])
    assert list(choose_adversaries(CLIENTS, named, 0)) == ["south-1"]
    assert choose_adversaries(CLIENTS, AdversarySection(), 0) == {}
    with pytest.raises(ValueError, match=r"adversaries\.devices"):
        choose_adversaries(CLIENTS, AdversarySection(devices=["east-0"]), 0)


@pytest.mark.parametrize(("patch", "field"), [
    ("adversaries: {fraction: 1.5}", "scenario.adversaries.fraction"),
    ("adversaries: {attack: backdoor}", "scenario.adversaries.attack"),
    ("adversaries: {factor: 0}", "scenario.adversaries.factor"),
    ("adversaries: {devices: [east-9]}", "adversaries.devices: not in the topology"),
])
def test_bad_adversaries_name_the_field(tmp_path, patch, field):
    text = (ROOT / "tiny.yaml").read_text().replace("  timeout_s: 300",
                                                    f"  timeout_s: 300\n  {patch}")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert field in str(err.value)


def test_scenarios_without_adversaries_dump_as_before():
    config = load_scenario(ROOT / "quickstart.yaml")
    assert "adversaries" not in config.model_dump(mode="json")["scenario"]
    # its digest before this section (re-pinned when quickstart.yaml moved to the new default
    # codec, topk 0.05, and when server_lr and share_head_rounds became unset by default)
    assert scenario_digest(config) == "442c391d7eda1f06"


def test_malicious_scenario_and_its_variants(tmp_path):
    base = load_scenario(ROOT / "malicious.yaml")
    assert base.round_policy.aggregation.rule == "mean"
    assert base.scenario.topology.num_devices == 10
    attackers = choose_adversaries([c for _, c in base.scenario.topology.devices()],
                                   base.scenario.adversaries, base.scenario.seed)
    assert len(attackers) == 2
    median = load_scenario(ROOT / "malicious.yaml", ["round_policy.aggregation.rule=median"])
    assert median.federation_config(4).round_policy.aggregation.rule == "median"
    assert scenario_digest(median) != scenario_digest(base)
    specs = write_worker_specs(base, "mqtt://127.0.0.1:1", tmp_path, 0.0)
    devices = [d for p in specs for d in json.loads(p.read_text())["devices"]]
    flagged = {d["client"]: Attack.from_json(d["attack"]) for d in devices if "attack" in d}
    assert flagged == attackers


def test_overrides():
    raw = {"a": {"b": 1}, "c": [1]}
    out = apply_overrides(raw, ["a.b=2", "a.d.e=[x, y]", "f=null", "a.b=0.5"])
    assert out == {"a": {"b": 0.5, "d": {"e": ["x", "y"]}}, "c": [1], "f": None}
    assert raw == {"a": {"b": 1}, "c": [1]}
    for bad in ("novalue", "a..b=1", "c.x=1"):
        with pytest.raises(ConfigError):
            apply_overrides(raw, [bad])


def test_cli_reports_a_bad_override():
    result = CliRunner().invoke(app, ["run", str(ROOT / "tiny.yaml"), "--out", "/nonexistent",
                                      "--set", "round_policy.aggregation.rule=krum"])
    assert result.exit_code == 2
    assert "round_policy.aggregation.rule" in result.output


def test_honest_accuracy_leaves_attackers_out():
    report = {"rounds": [{"device_accuracy": {"a": 0.1, "b": 0.1}},
                         {"device_accuracy": {"a": 0.9, "b": 0.5, "c": 0.7}}]}
    assert honest_accuracy(report, {"b"}) == pytest.approx(0.8)
    assert honest_accuracy({"rounds": []}, set()) is None


def test_attackers_can_declare_a_sample_count():
    attack = Attack("sign_flip", 100.0, samples=1_000_000)
    assert attack.declared(48) == 1_000_000 and Attack("scale").declared(48) == 48
    assert Attack.from_json(attack.to_json()) == attack
    assert "samples" not in Attack("scale").to_json()  # worker specs as before the option
    with pytest.raises(ValueError, match="samples"):
        Attack("scale", samples=0)
    assert "samples" not in AdversarySection(fraction=0.1).model_dump()


def test_weight_attack_scenario_names_its_attackers_and_bounds_the_step(tmp_path):
    """The shipped scenario of issue 15, point 6 (run end to end in
    test_weight_attack_e2e.py, marked slow)."""
    config = load_scenario(ROOT / "weight-attack.yaml")
    assert config.round_policy.aggregation.rule == "median"
    assert config.scenario.expect.max_step_norm == 0.5
    specs = write_worker_specs(config, "mqtt://127.0.0.1:1", tmp_path, 0.0)
    devices = [d for p in specs for d in json.loads(p.read_text())["devices"]]
    flagged = {d["client"]: Attack.from_json(d["attack"]) for d in devices if "attack" in d}
    assert flagged == {c: Attack("sign_flip", 100.0, 1_000_000) for c in ("east-0", "east-1")}
    # the attackers hold east (2 of 3) but east holds 3 of the 12 updates: fewer than half
    sizes = dict(config.scenario.topology.regions)
    assert sizes["east"] * 2 < sum(sizes.values())
