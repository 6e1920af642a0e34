"""Adaptive clipping of central DP end to end: the scenario runner starts a real broker
(Mosquitto when installed, else embedded amqtt), 1 cloud hub, 2 regional hubs and 4 devices
(tiny random BERT in 4-bit) as OS processes for 3 rounds.  The first clip norm is far below
what the devices' updates measure, so every update is clipped, the noised fraction within
the clip stays near 0 (the count's noise is 0.125 on it), below the target quantile 0.5, and
the cloud must grow the clip every round; each device clips to the clip its round announced;
the checkpoint records the clips, so a restarted cloud would announce the same."""

from __future__ import annotations

import itertools
import json
import re

import pytest

FIRST_CLIP = 1e-4
NORM_LOG = re.compile(r"(\S+): update norm (\S+) \(clip norm (\S+)\)")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def adaptive_run(run_tiny_with_dp):
    return run_tiny_with_dp("dp_adaptive", {
        "enable": True, "mode": "central", "noise_multiplier": 0.5, "epsilon": 1000.0,
        "clip_norm": FIRST_CLIP, "adaptive_clipping": {
            "enable": True, "target_quantile": 0.5, "clip_lr": 2.0,
            "clipped_count_stddev": 0.5}})


def test_the_announced_clip_grows_while_every_update_is_longer(adaptive_run):
    report, out = adaptive_run
    assert report["final"]["finished"] and report["final"]["rounds_completed"] == 3
    assert all(r["accepted"] == 4 for r in report["rounds"])
    clips = [r["dp_clip_norm"] for r in report["rounds"]]  # from the announcements seen
    assert clips[0] == FIRST_CLIP
    assert clips[0] < clips[1] < clips[2]
    # the devices clipped to the clip their round announced, and every update was longer
    logs = "".join(p.read_text() for p in (out / "logs").glob("worker*.log"))
    seen = [(float(norm), float(clip)) for _, norm, clip in NORM_LOG.findall(logs)]
    assert len(seen) == 12
    assert {clip for _, clip in seen} == {float(f"{c:.4g}") for c in clips}
    assert all(norm > clip for norm, clip in seen)


def test_the_checkpoint_records_each_round_clip_and_the_configured_accounting(adaptive_run):
    report, out = adaptive_run
    history = json.loads((out / "state" / "cloud" / "checkpoint.json").read_text())["history"]
    assert [h["dp_clip_norm"] for h in history] == [r["dp_clip_norm"] for r in report["rounds"]]
    for h, nxt in itertools.pairwise(history):
        assert h["dp_next_clip_norm"] == nxt["dp_clip_norm"]
    assert all(h["dp_unclipped_fraction"] < 0.5 for h in history)
    assert {h["dp_noise_multiplier"] for h in history} == {0.5}  # z, not z_delta
    cloud_log = (out / "logs" / "cloud.log").read_text()
    assert "round 3: clip norm" in cloud_log
