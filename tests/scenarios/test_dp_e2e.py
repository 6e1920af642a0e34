"""Central differential privacy end to end: the scenario runner starts a real broker
(Mosquitto when installed, else embedded amqtt), 1 cloud hub, 2 regional hubs and 4 devices
(tiny random BERT in 4-bit) as OS processes for 3 rounds with DP on; the report states the
epsilon spent after every round, the cloud logs it and checkpoints each round's step, and
the global parameters moved by more than clipped updates alone could move them."""

from __future__ import annotations

import json

import pytest
import yaml

from fedsa_common.federation.config import FederationConfig
from fedsa_common.privacy.dp import dp_plan, l2_norm
from fedsa_common.process.atomic import read_tensors
from hub.cloud import initial_global

EPSILON, CLIP = 20.0, 0.02

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dp_run(run_tiny_with_dp):
    return run_tiny_with_dp("dp", {
        "enable": True, "mode": "central", "epsilon": EPSILON, "clip_norm": CLIP})


def test_federation_finishes_with_epsilon_growing_each_round(dp_run):
    report, _ = dp_run
    assert report["final"]["finished"] and report["final"]["rounds_completed"] == 3
    assert all(r["accepted"] == 4 for r in report["rounds"])
    spent = [r["dp_epsilon"] for r in report["rounds"]]
    assert all(b > a for a, b in zip([0.0, *spent], spent, strict=False))
    # every device took part in every round, as calibration assumed: the budget holds
    assert spent[-1] <= EPSILON and report["final"]["dp_epsilon"] == spent[-1]


def test_cloud_logs_and_checkpoints_the_accounting(dp_run):
    _, out = dp_run
    log = (out / "logs" / "cloud.log").read_text()
    for rnd in (1, 2, 3):
        assert f"round {rnd}: epsilon spent" in log
    history = json.loads((out / "state" / "cloud" / "checkpoint.json").read_text())["history"]
    assert [h["dp_sample_rate"] for h in history] == [1.0, 1.0, 1.0]
    assert len({h["dp_noise_multiplier"] for h in history}) == 1
    device_logs = "".join(p.read_text() for p in (out / "logs").glob("worker*.log"))
    assert f"(clip norm {CLIP:.4g})" in device_logs


def test_noise_moved_the_global_parameters_beyond_what_clipping_allows(dp_run):
    _, out = dp_run
    config = FederationConfig.model_validate(
        yaml.safe_load((out / "federation.yaml").read_text()))
    meta = json.loads((out / "state" / "cloud" / "checkpoint.json").read_text())
    final = read_tensors(out / "state" / "cloud" / meta["tensors"])
    start = initial_global(config)
    moved = l2_norm({n: final[n] - start[n] for n in start})
    # without noise each round's mean of clipped updates moves the globals by at most
    # server_step * CLIP; the noise (std z*C/4 per coordinate on the mean, times the server
    # step, 3 rounds) is far larger than that
    plan = dp_plan(config)
    assert plan is not None
    step = config.server_step
    assert moved > 3 * step * CLIP
    numel = sum(t.numel() for t in start.values())
    assert moved == pytest.approx(step * plan.noise_std / 4 * (3 * numel) ** 0.5, rel=0.3)
