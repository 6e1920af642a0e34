"""Federation lifecycle without a broker: which rounds a restarted cloud runs, what a restart
may change, the offline extension of a checkpoint, and the commands' usage errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import Control
from hub.checkpoint import CloudState, load_checkpoint, save_checkpoint
from hub.cli import app
from hub.cloud import CloudHub, initial_global
from hub.lifecycle import (
    CloudLock,
    LifecycleError,
    checkpoint_rounds,
    config_changes,
    extend_checkpoint,
    resolve_total,
)

RAW = {"federation": {"name": "life"}, "model": {"path": "tiny-bert", "num_labels": 3},
       "rounds": 2}
DP = {"fedsa_lora": {"privacy": {"differential_privacy": {
    "enable": True, "mode": "central", "epsilon": 8.0, "delta": 1e-5, "clip_norm": 1.0}}},
    "sampling": {"min_clients": 2}}


def config(**over: object) -> FederationConfig:
    return FederationConfig.model_validate({**RAW, **over})


def finished_checkpoint(state_dir: Path, cfg: FederationConfig, *, with_config: bool = True
                        ) -> None:
    """A checkpoint whose cloud ran ``cfg`` to its last round."""
    save_checkpoint(state_dir, CloudState(
        cfg.rounds, cfg.rounds, initial_global(cfg), cfg.digest(),
        config=cfg.model_dump(mode="json") if with_config else None))


def test_state_digest_ignores_rounds_only() -> None:
    assert config(rounds=2).state_digest() == config(rounds=9).state_digest()
    assert config(rounds=2).digest() != config(rounds=9).digest()
    assert config(training={"lr": 0.01}).state_digest() != config().state_digest()


def test_config_changes_name_the_fields_and_skip_rounds() -> None:
    old = config().model_dump(mode="json")
    new = config(rounds=7, training={"lr": 0.01}).model_dump(mode="json")
    assert config_changes(old, new) == ["training.lr: 0.0005 -> 0.01"]


def test_checkpoint_rounds_accepts_a_rounds_change_and_names_any_other(tmp_path: Path) -> None:
    saved = config(rounds=6).model_dump(mode="json")
    assert checkpoint_rounds(config(rounds=8), completed=6, config_hash="x",
                             saved_config=saved, state_dir=tmp_path) == 6
    with pytest.raises(LifecycleError, match=r"training\.lr: 0\.0005 -> 0\.01") as err:
        checkpoint_rounds(config(rounds=6, training={"lr": 0.01}), completed=6,
                          config_hash="x", saved_config=saved, state_dir=tmp_path)
    assert err.value.option == "--config"


def test_checkpoint_rounds_of_a_checkpoint_that_kept_only_the_hash(tmp_path: Path) -> None:
    """Checkpoints written before lifecycle kept only the configuration's hash: the rounds
    it had are found by trying totals, so they can be extended too."""
    old_hash = config(rounds=6).digest()
    assert checkpoint_rounds(config(rounds=9), completed=4, config_hash=old_hash,
                             saved_config=None, state_dir=tmp_path) == 6
    with pytest.raises(LifecycleError, match="another configuration"):
        checkpoint_rounds(config(rounds=9, training={"lr": 0.01}), completed=4,
                          config_hash=old_hash, saved_config=None, state_dir=tmp_path)


@pytest.mark.parametrize(("file_rounds", "target", "before", "total"), [
    (6, None, None, 6),   # unchanged
    (8, None, None, 8),   # file edited (old checkpoint): the file wins
    (6, 9, 6, 9),         # extended by a command, file as before: the command wins
    (7, 9, 6, 7),         # file edited after the command: the newer instruction wins
    (6, 3, 6, 3),         # stopped at 3 by a command, file unchanged: stays stopped
])
def test_resolve_total_takes_the_newer_instruction(file_rounds: int, target: int | None,
                                                   before: int | None, total: int) -> None:
    assert resolve_total(file_rounds, saved_rounds=6, target=target,
                         file_rounds_before=before) == total


def test_restarted_cloud_runs_more_rounds_from_its_checkpoint(tmp_path: Path) -> None:
    finished_checkpoint(tmp_path, config(rounds=2))
    cloud = CloudHub("mqtt://127.0.0.1:1", config(rounds=3), tmp_path)  # never connected
    state = cloud.load_state()
    assert (state.round, cloud.rounds, cloud.config.rounds) == (2, 3, 3)
    cloud.save_checkpoint(state)
    assert load_checkpoint(tmp_path).config == cloud.config.model_dump(mode="json")  # type: ignore[union-attr]


def test_restart_with_another_configuration_is_refused_naming_it(tmp_path: Path) -> None:
    finished_checkpoint(tmp_path, config())
    cloud = CloudHub("mqtt://127.0.0.1:1", config(training={"batch_size": 4}), tmp_path)
    with pytest.raises(LifecycleError, match=r"training\.batch_size: 16 -> 4.*fresh"):
        cloud.load_state()


def test_extend_checkpoint_then_the_cloud_runs_the_new_total(tmp_path: Path) -> None:
    finished_checkpoint(tmp_path, config(rounds=2))
    done = extend_checkpoint(tmp_path, by=3)
    assert (done.completed, done.before, done.total) == (2, 2, 5)
    assert load_checkpoint(tmp_path).target == 5  # type: ignore[union-attr]
    cloud = CloudHub("mqtt://127.0.0.1:1", config(rounds=2), tmp_path)  # same file
    cloud.load_state()
    assert cloud.rounds == 5


def test_extend_checkpoint_refusals(tmp_path: Path) -> None:
    with pytest.raises(LifecycleError, match="no cloud checkpoint"):
        extend_checkpoint(tmp_path, by=1)
    finished_checkpoint(tmp_path, config(rounds=2))
    with pytest.raises(LifecycleError, match="already done"):
        extend_checkpoint(tmp_path, total=1)
    with CloudLock(tmp_path), pytest.raises(LifecycleError, match="running cloud hub"):
        extend_checkpoint(tmp_path, by=1)


def test_differential_privacy_refuses_more_rounds(tmp_path: Path) -> None:
    finished_checkpoint(tmp_path, config(**DP))
    with pytest.raises(LifecycleError, match="differential privacy"):
        extend_checkpoint(tmp_path, by=1)
    cloud = CloudHub("mqtt://127.0.0.1:1", config(**DP, rounds=3), tmp_path)
    with pytest.raises(LifecycleError, match="differential privacy"):
        cloud.load_state()


def test_control_messages_validate() -> None:
    assert Control(federation="f", action="extend", rounds=4).rounds == 4
    for bad in ({"action": "extend"}, {"action": "stop", "rounds": 3}):
        with pytest.raises(ValueError, match="extend needs rounds"):
            Control.model_validate({"federation": "f", **bad})


def test_extend_cli_offline_and_its_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    finished_checkpoint(tmp_path / "cloud", config(rounds=2))
    ok = runner.invoke(app, ["federation", "extend", "--state-dir", str(tmp_path / "cloud"),
                             "--by", "1"])
    assert ok.exit_code == 0, ok.output
    assert "total 2 -> 3" in ok.output
    assert json.loads((tmp_path / "cloud" / "checkpoint.json").read_text())["rounds"] == 3
    both = runner.invoke(app, ["federation", "extend", "--state-dir", str(tmp_path),
                               "--by", "1", "--rounds", "4"])
    assert both.exit_code == 2 and "exactly one of --by" in both.output
    neither = runner.invoke(app, ["federation", "extend", "--by", "1"])
    assert neither.exit_code == 2 and "--state-dir" in neither.output


def test_serve_with_a_changed_configuration_is_a_usage_error(tmp_path: Path, monkeypatch
                                                            ) -> None:
    monkeypatch.setattr(sys, "setswitchinterval", lambda _s: None)  # keep this process's
    finished_checkpoint(tmp_path / "cloud", config())
    cfg_path = tmp_path / "fed.yaml"
    cfg_path.write_text(yaml.safe_dump({**RAW, "training": {"lr": 0.01}}))
    result = CliRunner().invoke(app, [
        "serve", "--role", "cloud", "--federation", "life", "--broker", "mqtt://127.0.0.1:1",
        "--state-dir", str(tmp_path / "cloud"), "--config", str(cfg_path)])
    assert result.exit_code == 2, result.output
    assert "training.lr" in " ".join(result.output.split())
    assert "Traceback" not in result.output
