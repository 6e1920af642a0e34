"""The search space of ``scenarios tune`` and how trial parameters enter a scenario (fast:
no federation; Optuna only with in-process trials)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from fedsa_common.federation.config import ConfigError, read_yaml
from scenarios.config import ScenarioConfig
from scenarios.config_check import check_data
from scenarios.tune import (
    best_yaml,
    counted,
    requeue_interrupted,
    suggest,
    trial_config,
)
from scenarios.tune_space import apply_params, search_space

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"


def tiny(**changes) -> dict:
    raw = read_yaml(TINY)
    raw.update(changes)
    return raw


def dims(raw: dict) -> dict:
    return {d.name: d for d in search_space(ScenarioConfig.model_validate(raw))}


def test_defaults_search_around_the_scenario():
    space = dims(tiny())
    assert list(space) == ["lr", "lora_r", "local_steps", "compression_ratio"]
    assert space["lr"].low == pytest.approx(1e-4) and space["lr"].high == pytest.approx(1e-2)
    assert space["lr"].log
    assert space["lora_r"].choices == (4, 8, 16)
    assert (space["local_steps"].low, space["local_steps"].high) == (1, 6)
    assert space["compression_ratio"].kind == "float"


def test_compression_ratio_is_left_out_when_compression_is_off():
    space = dims(tiny(fedsa_lora={"compression": {"enable": False}}))
    assert "compression_ratio" not in space


def test_asking_for_compression_ratio_without_compression_is_an_error():
    raw = tiny(fedsa_lora={"compression": {"enable": False}},
               tune={"params": ["compression_ratio"]})
    with pytest.raises(ConfigError, match=r"tune\.params: compression_ratio"):
        search_space(ScenarioConfig.model_validate(raw))


def test_tune_section_overrides_ranges_and_params():
    raw = tiny(tune={"params": ["lr", "lora_r"], "lr": {"low": 0.001, "high": 0.002,
                                                        "log": False},
                     "lora_r": [2, 32]})
    space = dims(raw)
    assert list(space) == ["lr", "lora_r"]
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (0.001, 0.002, False)
    assert space["lora_r"].choices == (2, 32)


def test_tune_section_never_changes_a_runs_digest():
    with_tune = ScenarioConfig.model_validate(tiny(tune={"sampler_seed": 3}))
    without = ScenarioConfig.model_validate(tiny())
    assert with_tune.tune is not None and "tune" not in with_tune.model_dump()
    assert with_tune.federation_config(3).digest() == without.federation_config(3).digest()


def test_apply_params_writes_every_target_and_creates_sections():
    raw = {"scenario": {"name": "x"}}
    out = apply_params(raw, {"lr": 0.01, "lora_r": 16, "local_steps": 4,
                             "compression_ratio": 0.2})
    assert out["training"] == {"lr": 0.01, "local_steps": 4}
    assert out["model"] == {"lora": {"r": 16}}
    assert out["fedsa_lora"] == {"compression": {"ratio": 0.2}}
    assert raw == {"scenario": {"name": "x"}}  # the input is left alone
    with pytest.raises(KeyError):
        apply_params(raw, {"momentum": 0.9})


def test_suggest_and_trial_config_with_a_fixed_trial():
    raw = tiny()
    space = search_space(ScenarioConfig.model_validate(raw))
    params = {"lr": 0.002, "lora_r": 16, "local_steps": 5, "compression_ratio": 0.3}
    assert suggest(optuna.trial.FixedTrial(params), space) == params
    cfg = trial_config(raw, params, 7)
    assert cfg.federation.name == "tiny-t7"
    assert cfg.training.lr == 0.002 and cfg.model.lora.r == 16
    assert cfg.training.local_steps == 5 and cfg.fedsa_lora.compression.ratio == 0.3


def test_best_yaml_is_a_valid_scenario_with_the_params():
    raw = tiny(tune={"sampler_seed": 1})
    best = {"number": 2, "value": 0.61, "params": {"lr": 0.004, "lora_r": 4}}
    text = best_yaml(raw, best, "tiny.yaml", 3)
    assert text.startswith("# best of 3 trial(s) of tiny.yaml: trial 2")
    data = yaml.safe_load(text)
    assert data["training"]["lr"] == 0.004 and data["model"]["lora"]["r"] == 4
    assert data["federation"]["name"] == "tiny"
    assert check_data(data).ok


def test_interrupted_trial_is_failed_and_its_params_queued_again(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = study.ask()
    done.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(done, 0.5)
    crashed = study.ask()
    lr = crashed.suggest_float("lr", 1e-4, 1e-2, log=True)
    # a new process opens the same study after the crash
    again = optuna.load_study(study_name="s", storage=storage)
    assert requeue_interrupted(again) == [crashed.number]
    states = {t.number: t.state for t in again.get_trials()}
    assert states[crashed.number] == optuna.trial.TrialState.FAIL
    waiting = again.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == {"lr": lr}
    assert waiting[0].user_attrs == {"requeued_from": crashed.number}
    assert [counted(t) for t in again.get_trials()] == [True, False, False]
    assert requeue_interrupted(again) == []  # queued once, not at every restart


def test_a_trial_stopped_by_ctrl_c_is_queued_again_but_a_failed_one_is_not(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    stopped = study.ask()
    stopped.suggest_int("local_steps", 1, 9)
    study.tell(stopped, state=optuna.trial.TrialState.FAIL)
    failed = study.ask()
    failed.suggest_int("local_steps", 1, 9)
    failed.set_user_attr("error", "cloud hub exited with 1")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert requeue_interrupted(study) == [stopped.number]
    assert [counted(t) for t in study.get_trials()] == [False, True, False]


def test_trials_of_one_invocation_share_one_broker_and_federations_apart(tmp_path,
                                                                        monkeypatch):
    """``run_tune`` starts the broker on the first trial and hands it to every later trial
    of the same invocation, each under a federation name of its own (so retained messages
    of one trial never reach the next), and stops it once at the end.  The federations are
    stand-ins here; test_tune.py plays real ones through two invocations."""
    import scenarios.tune as tune

    class FakeBroker:
        kind, url, stopped = "fake", "mqtt://127.0.0.1:1", 0

        def stop(self) -> None:
            FakeBroker.stopped += 1

    started: list[FakeBroker] = []
    played: list[tuple[str, str, Path]] = []

    def start(_config: ScenarioConfig, _out: Path) -> FakeBroker:
        started.append(FakeBroker())
        return started[-1]

    def play(config: ScenarioConfig, out: Path, broker_url: str, echo=print) -> dict:
        assert FakeBroker.stopped == 0  # the broker lives as long as trials run
        played.append((config.federation.name, broker_url, out))
        return {"final": {"accuracy": 0.5, "rounds_completed": 2, "bytes_up_total": 1}}

    monkeypatch.setattr(tune, "start_bench_broker", start)
    monkeypatch.setattr(tune, "run_scenario", play)
    lines: list[str] = []
    result = tune.run_tune(TINY, 3, tmp_path / "out", echo=lines.append)
    assert len(started) == 1 and FakeBroker.stopped == 1
    assert sum("for all trials" in line for line in lines) == 1
    assert [(name, url) for name, url, _ in played] == [
        ("tiny-t0", FakeBroker.url), ("tiny-t1", FakeBroker.url), ("tiny-t2", FakeBroker.url)]
    assert [out.name for _, _, out in played] == ["000", "001", "002"]
    assert [t["state"] for t in result["trials"]] == ["complete"] * 3
