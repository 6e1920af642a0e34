"""A causal language model federated end to end: scenarios/tiny-causal.yaml played by the
runner with real processes (a broker, the cloud hub, two regional hubs, a worker hosting
four devices) on the tiny random Llama in 4-bit under FedSA-LoRA; the devices' held-out loss
on their prompt/response pairs falls round after round."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml

from fedsa_common.federation.split import role
from fedsa_common.process.atomic import read_tensors
from scenarios.config import ScenarioConfig
from scenarios.runner import run_scenario

ROOT = Path(__file__).parents[2]
SCENARIO = ROOT / "scenarios" / "tiny-causal.yaml"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, Path]:
    raw = yaml.safe_load(SCENARIO.read_text())
    raw["scenario"]["data"]["source"] = str(ROOT / raw["scenario"]["data"]["source"])
    out = tmp_path_factory.mktemp("tiny-causal")
    return run_scenario(ScenarioConfig.model_validate(raw), out, echo=lambda _: None), out


def test_held_out_loss_falls_over_rounds(run) -> None:
    report, _ = run
    rows = report["rounds"]
    assert report["final"]["finished"] and len(rows) == 3
    assert all(r["accepted"] == r["participants"] == 4 for r in rows)
    losses = [r["loss"] for r in rows]
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))
    for r in rows:
        assert len(r["device_loss"]) == 4
        assert 0.0 <= r["accuracy"] <= 1.0  # exact match
        # the mean of the devices' perplexities is at least exp(mean loss) (Jensen)
        assert r["perplexity"] >= math.exp(r["loss"]) * (1 - 1e-9)
    assert report["final"]["loss"] == losses[-1]


def test_only_lora_a_is_shared_and_each_device_keeps_its_b(run) -> None:
    report, out = run
    for r in report["rounds"]:
        assert r["shared"] and {role(n) for n in r["shared"]} == {"lora_A"}
    locals_ = list((out / "state").rglob("local.safetensors"))
    assert len(locals_) == 4
    for path in locals_:
        kept = read_tensors(path)
        assert kept and {role(n) for n in kept} == {"lora_B"}  # no head: B alone stays
