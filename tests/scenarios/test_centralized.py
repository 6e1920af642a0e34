"""The centralized reference end to end: its own process, the tiny random BERT in 4-bit, a
small file the devices split between them; then reused from the bench directory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fedsa_common.federation.config import validate_model
from scenarios.config import ScenarioConfig

FRUIT = ["apple", "banana", "cherry", "grape", "lemon", "melon"]
SPACE = ["rocket", "planet", "comet", "orbit", "galaxy", "nebula"]


def easy_scenario(tmp_path: Path) -> ScenarioConfig:
    """Four devices with balanced labels (so predicting a device's majority label scores
    about 0.5) whose texts name their class in every word: easy for any model that learns
    from pooled texts, impossible for one that only knows the label prior."""
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(240):
        label = "fruit" if i % 2 else "space"
        words = FRUIT if label == "fruit" else SPACE
        rows.append(" ".join(rng.choice(words) for _ in range(6)) + "," + label)
    source = tmp_path / "easy.csv"
    source.write_text("\n".join(rows) + "\n")
    return validate_model(ScenarioConfig, {
        "scenario": {"name": "easy", "topology": {"regions": {"a": 2, "b": 2}},
                     "data": {"source": str(source), "partition": "iid", "test_fraction": 0.5,
                              "seed": 0},
                     "timeout_s": 600},
        "federation": {"name": "easy", "seed": 0},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 16},
        "rounds": 3,
        "training": {"local_steps": 4, "batch_size": 8, "lr": 0.005, "head_lr": 0.05},
    })


@pytest.mark.integration
def test_centralized_reference_trains_on_pooled_data_and_is_reused(tmp_path):
    from scenarios.bench import run_references, scenario_digest
    from scenarios.references import (
        RESULT,
        device_datas,
        federation_samples,
        reusable_result,
    )

    base = easy_scenario(tmp_path)
    out = tmp_path / "bench"
    lines: list[str] = []
    central, majority = run_references(base, out, [0], ["centralized", "majority"],
                                       echo=lines.append)
    assert "error" not in central, central.get("error")
    assert central["reference"] == "centralized" and not central["reused"]
    result_path = out / "refs" / "centralized-s0" / RESULT
    result = json.loads(result_path.read_text())
    devices = {"a-0", "a-1", "b-0", "b-1"}
    assert set(result["device_accuracy"]) == devices
    assert [r for r, _ in result["curve"]] == [1, 2, 3]  # one point per round's worth
    # as many samples as the federation: 3 rounds x 4 devices x 4 steps over 30 texts
    # (passes of 8+8+8+6: one pass a round), not 3 x 4 x 4 x 8
    sizes = [len(d.train) for _, d in device_datas(base)]
    assert sizes == [30] * 4
    assert result["target_samples"] == federation_samples(base, sizes) == 3 * 4 * 30
    assert result["samples"] == result["target_samples"]

    assert set(majority["device_accuracy"]) == devices
    prior = majority["metrics"]["final_accuracy"]
    pooled = central["metrics"]["final_accuracy"]
    assert 0.3 < prior < 0.7
    assert pooled > prior + 0.25, (pooled, prior)
    assert central["metrics"]["best_accuracy"] >= pooled
    assert central["curve"][-1][1] == pytest.approx(pooled)

    # a rerun reuses the result; another configuration would not
    before = result_path.stat().st_mtime_ns
    again, _ = run_references(base, out, [0], ["centralized", "majority"], echo=lines.append)
    assert again["reused"] and result_path.stat().st_mtime_ns == before
    assert again["metrics"] == central["metrics"]
    assert any("reused" in line for line in lines)
    digest = scenario_digest(base.model_copy(update={"rounds": 4}))
    assert reusable_result(result_path, digest) is None
