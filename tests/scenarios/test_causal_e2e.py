"""A causal language model federated end to end: scenarios/tiny-causal.yaml played by the
runner with real processes (a broker, the cloud hub, two regional hubs, a worker hosting
four devices) on the tiny random Llama in 4-bit under FedSA-LoRA; the devices' held-out loss
on their prompt/response pairs falls round after round.  Every algorithm runs the same
scenario, shrunk (one region of two devices, two short rounds): each shares its own part
of LoRA, keeps the rest on the device, and trains the model below an untrained one's
loss."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig

from fedsa_common.federation.split import ALGORITHMS, role, shared_roles, trainable_names
from fedsa_common.process.atomic import read_tensors
from quant.adapters import adapter_shapes, init_adapter_values
from quant.base_model import tiny_causal_path
from scenarios.config import ScenarioConfig
from scenarios.runner import run_scenario

ROOT = Path(__file__).parents[2]
SCENARIO = ROOT / "scenarios" / "tiny-causal.yaml"

pytestmark = pytest.mark.integration


def scenario(**changes: object) -> dict:
    """scenarios/tiny-causal.yaml with its data path made absolute and ``changes`` applied
    over its top-level sections."""
    raw = yaml.safe_load(SCENARIO.read_text())
    raw["scenario"]["data"]["source"] = str(ROOT / raw["scenario"]["data"]["source"])
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) \
            else values
    return raw


def play(raw: dict, out: Path) -> tuple[dict, Path]:
    config = ScenarioConfig.model_validate(raw)
    return run_scenario(config, out, echo=lambda _: None), out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, Path]:
    return play(scenario(), tmp_path_factory.mktemp("tiny-causal"))


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


# fedsa's path is the module run above and local shares nothing: both only under -m slow,
# to keep the default suite short
_ALGORITHM_PARAMS = [pytest.param(a, marks=pytest.mark.slow) if a in ("fedsa", "local")
                     else a for a in ALGORITHMS]


@pytest.fixture(scope="module", params=_ALGORITHM_PARAMS)
def algorithm_run(request, tmp_path_factory) -> tuple[str, ScenarioConfig, dict, Path]:
    algorithm = request.param
    raw = scenario(fedsa_lora={"algorithm": algorithm}, rounds=2,
                   training={"local_steps": 3})
    raw["scenario"]["topology"]["regions"] = {"north": 2}
    report, out = play(raw, tmp_path_factory.mktemp(f"causal-{algorithm}"))
    return algorithm, ScenarioConfig.model_validate(raw), report, out


def test_every_algorithm_shares_its_part_keeps_the_rest_and_trains(algorithm_run) -> None:
    algorithm, config, report, out = algorithm_run
    rows = report["rounds"]
    assert report["final"]["finished"] and len(rows) == 2
    assert all(r["accepted"] == r["participants"] == 2 for r in rows)
    shares = shared_roles(algorithm)
    for r in rows:
        assert {role(n) for n in r.get("shared") or []} == shares  # none: omitted
    # an untrained model guesses among the whole vocabulary: loss ln(V) (10.35 measured)
    untrained = math.log(AutoConfig.from_pretrained(tiny_causal_path()).vocab_size)
    assert all(r["loss"] < untrained - 0.25 for r in rows), [r["loss"] for r in rows]
    shapes = adapter_shapes(config.model, 0)
    initial = init_adapter_values(shapes, config.federation.seed, config.lora_init)
    trained = set(trainable_names(shapes, algorithm))
    locals_ = list((out / "state").rglob("local.safetensors"))
    assert len(locals_) == 2
    for path in locals_:
        kept = read_tensors(path)
        assert {role(n) for n in kept} == {"lora_A", "lora_B"} - shares
        for name, value in kept.items():  # trained if trainable, at the start if frozen
            moved = not torch.equal(value, initial[name])
            assert moved == (name in trained), name
