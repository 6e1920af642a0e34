"""The shipped churn, hub-crash, broker-restart and async scenarios, shrunk to the tiny
random BERT, played against a real broker process with real hub and device processes; each
must pass its own ``expect:`` section (no acknowledged update lost, every round completed).
hub-crash runs twice: with its regional hub killed, and with the cloud hub killed (SIGKILL)
and restarted on the same state directory."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from scenarios.config import ScenarioConfig
from scenarios.runner import run_scenario

ROOT = Path(__file__).parents[2] / "scenarios"

pytestmark = pytest.mark.integration


def shrunk(name: str, rounds: int | None = None, privacy: dict[str, Any] | None = None,
           **scenario: Any) -> ScenarioConfig:
    """The shipped scenario with the tiny model and short rounds, its grammar kept;
    ``rounds``: fewer rounds than the shipped file, and its ``expect:`` following;
    ``privacy``: a ``fedsa_lora.privacy`` section."""
    raw = yaml.safe_load((ROOT / f"{name}.yaml").read_text())
    if privacy is not None:
        raw["fedsa_lora"]["privacy"] = privacy
    if rounds is not None:
        raw["rounds"] = rounds
        raw["scenario"]["expect"]["rounds_completed"] = rounds
    raw["model"] = {"path": "tiny-bert", "precision": "nf4", "max_length": 32}
    raw["training"] = {"local_steps": 3, "batch_size": 8, "lr": 0.001}
    raw["scenario"]["data"].update({"classes": 3, "max_train": 48, "max_test": 24})
    raw["scenario"]["timeout_s"] = 240
    raw["scenario"]["stragglers"] = {"link": {"latency_ms": 700},
                                     **raw["scenario"].get("stragglers", {})}
    raw["scenario"]["expect"].pop("min_final_accuracy", None)  # a random tiny model
    raw["scenario"].update(scenario)
    raw["round_policy"]["resend_s"] = 2
    return ScenarioConfig.model_validate(raw)


def test_churn_loses_no_acknowledged_update(tmp_path):
    config = shrunk("churn", availability={
        "churn": {"fraction": 0.5, "online_mean_s": 10, "offline_mean_s": 5}})
    report = run_scenario(config, tmp_path, echo=lambda _: None)
    assert report["expectations"]["ok"], report["expectations"]["failures"]
    assert report["updates"]["lost"] == []
    # devices really left and came back
    flips = [len(events) for events in report["online_timeline"].values()]
    assert max(flips) >= 3
    assert min(r["participants"] for r in report["rounds"]) < 6


def test_regional_hub_crash_mid_round_loses_nothing(tmp_path):
    # 4 rounds: the crash in round 2, then two whole rounds through the restarted hub (each
    # round here is mostly link latency, so the shipped 8 would only add wall time)
    config = shrunk("hub-crash", rounds=4, faults=[
        {"at_round": 2, "at_s": 1.0, "action": "kill", "target": "regional:north",
         "restart_after_s": 2}])
    report = run_scenario(config, tmp_path, echo=lambda _: None)
    assert report["expectations"]["ok"], report["expectations"]["failures"]
    assert [f["step"] for f in report["faults"]] == ["do", "undo"]
    assert report["final"]["rounds_completed"] == 4
    assert report["updates"]["acknowledged"] > 0 and report["updates"]["lost"] == []
    log = (tmp_path / "logs" / "regional-north.log").read_text()
    assert log.count("serving federation") == 2  # it really was restarted


def test_cloud_hub_killed_mid_round_continues_it_and_its_adaptive_clip(tmp_path):
    """SIGKILL of the cloud hub right after it acknowledged round 2's first regional
    partial, restarted 2 s later on the same state directory.  Region south is cut off for
    the first 10 s of round 2, so the round is surely still open then (south's partial is
    due) and north's partial was taken.  The restarted cloud continues round 2 from its
    persisted in-flight state (same announcement, north's updates in its sum), takes
    south's partial when the region is back, and no acknowledged update is lost.

    Central DP with adaptive clipping is on, from a clip far below every update's norm, so
    each round must announce a larger clip than the last (the noised unclipped fraction
    stays below the target quantile): a restarted cloud that lost the recorded clip would
    start again from the first one."""
    first_clip = 1e-4
    config = shrunk("hub-crash", rounds=3, faults=[
        {"at_round": 2, "action": "partition", "target": "region:south", "duration_s": 10},
        {"at_round": 2, "after_partials": 1, "action": "kill", "target": "cloud",
         "restart_after_s": 2}], privacy={"differential_privacy": {
             "enable": True, "mode": "central", "noise_multiplier": 0.5, "epsilon": 1000.0,
             "clip_norm": first_clip, "adaptive_clipping": {
                 "enable": True, "target_quantile": 0.5, "clip_lr": 2.0,
                 "clipped_count_stddev": 0.5}}})
    report = run_scenario(config, tmp_path, echo=lambda _: None)
    assert report["expectations"]["ok"], report["expectations"]["failures"]
    played = [(f["step"], f["action"], f["target"]) for f in report["faults"]]
    assert sorted(played) == sorted([("do", "partition", "region:south"),
                                     ("undo", "partition", "region:south"),
                                     ("do", "kill", "cloud"), ("undo", "kill", "cloud")])
    assert played.index(("do", "kill", "cloud")) < played.index(
        ("undo", "partition", "region:south"))  # killed while south was still cut off
    assert report["final"]["rounds_completed"] == 3
    assert report["updates"]["acknowledged"] > 0 and report["updates"]["lost"] == []
    log = (tmp_path / "logs" / "cloud.log").read_text()
    assert log.count("resuming from checkpoint: round 1, version 1") == 1  # really restarted
    taken = re.findall(r"continuing round 2 in flight \((\d+) updates received", log)
    assert len(taken) == 1 and int(taken[0]) >= 1  # north's partial survived the kill
    clips = [r["dp_clip_norm"] for r in report["rounds"]]
    assert clips[0] == first_clip and clips[0] < clips[1] < clips[2]
    history = json.loads((tmp_path / "state" / "cloud" / "checkpoint.json").read_text())[
        "history"]
    assert [h["dp_clip_norm"] for h in history] == clips
    assert [h["round"] for h in history] == [1, 2, 3]
    assert len(history[1]["applied"]) == 6  # both regions' updates in the continued round


def test_broker_restart_mid_round_loses_nothing(tmp_path):
    # the shipped fault one round earlier and shorter: the broker (no persistence, so its
    # retained messages and sessions are gone) is killed 1 s into round 2 of 3
    config = shrunk("broker-restart", rounds=3, faults=[
        {"at_round": 2, "at_s": 1.0, "action": "kill", "target": "broker",
         "restart_after_s": 2}])
    report = run_scenario(config, tmp_path, echo=lambda _: None)
    assert report["expectations"]["ok"], report["expectations"]["failures"]
    assert [f["step"] for f in report["faults"]] == ["do", "undo"]
    assert report["final"]["rounds_completed"] == 3
    assert report["updates"]["acknowledged"] > 0 and report["updates"]["lost"] == []
    assert (tmp_path / "logs" / "broker-restarted.log").exists()  # it really was restarted


def test_async_rounds_apply_buffered_updates(tmp_path):
    # 8 server steps (the shipped file has 16): each applies a buffer of 3 updates, so the
    # 6 devices' updates still arrive across several model versions; one worker process
    # hosts the 6 devices (each its own thread and straggler), where churn and hub-crash
    # keep the shipped two
    config = shrunk("async", rounds=8, devices_per_worker=6, stragglers={
        "slowdown": {"distribution": "pareto", "alpha": 1.0, "max_factor": 20},
        "link": {"latency_ms": 300}})
    report = run_scenario(config, tmp_path, echo=lambda _: None)
    assert report["expectations"]["ok"], report["expectations"]["failures"]
    assert report["mode"] == "async"
    assert report["final"]["accuracy"] is not None
