"""``hub export``: the cloud's global shared parameters as a peft adapter that plain
transformers + peft load (tests/peft_load.py, run in a fresh interpreter): a classifier's
under FedIT (LoRA global, the head at its initial value), and a causal language model's
under FedSA-LoRA (A global, B at its initial value, no head)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role, shared_names, shared_roles
from hub.checkpoint import CloudState, save_checkpoint
from hub.cli import app
from quant.adapters import adapter_shapes, init_adapter_values, wire_name
from quant.base_model import resolve_model_path
from quant.peft_export import fp32_adapter

LOADER = Path(__file__).parents[1] / "peft_load.py"
TEXTS = ["rocket launch to the moon", "car engine and wheel", "a longer text about pixels"]
CONFIG = FederationConfig.model_validate({
    "federation": {"name": "glob", "seed": 3},
    "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
    "fedsa_lora": {"algorithm": "fedit"},  # A and B global: the adapter changes the base
})
CAUSAL = FederationConfig.model_validate({  # fedsa: A global, B at its random start
    "federation": {"name": "glob", "seed": 3},
    "model": {"task": "causal_lm", "path": "tiny-causal", "precision": "nf4",
              "max_length": 32},
})
CONFIGS = {"classification": CONFIG, "causal_lm": CAUSAL}


def flat(output: str) -> str:
    """CLI output without the rich box's borders and line breaks."""
    return re.sub(r"[│\s]+", " ", output)


def initial_values(config: FederationConfig) -> dict[str, torch.Tensor]:
    shapes = adapter_shapes(config.model, config.model.num_labels or 0)
    return init_adapter_values(shapes, config.federation.seed, config.lora_init)


def cloud_state_dir(path: Path, *, with_config: bool = True, config: FederationConfig = CONFIG
                    ) -> dict[str, torch.Tensor]:
    shapes = adapter_shapes(config.model, config.model.num_labels or 0)
    g = torch.Generator().manual_seed(1)
    shared = {n: torch.randn(shapes[n], generator=g) * 0.3
              for n in shared_names(sorted(shapes), config.fedsa_lora.algorithm)}
    save_checkpoint(path, CloudState(
        round=5, version=5, params=shared, config_hash=config.digest(),
        config=config.model_dump(mode="json") if with_config else None))
    return shared


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory
             ) -> tuple[FederationConfig, Path, dict[str, torch.Tensor]]:
    config = CONFIGS[request.param]
    state = tmp_path_factory.mktemp("cloud")
    shared = cloud_state_dir(state, config=config)
    out = tmp_path_factory.mktemp("peft") / "global"
    result = CliRunner().invoke(app, ["export", "--state-dir", str(state), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return config, out, shared


def test_the_global_adapter_holds_the_global_and_the_initial_values(exported):
    config, out, shared = exported
    initial = initial_values(config)
    saved = {wire_name(k): v for k, v in load_file(out / "adapter_model.safetensors").items()}
    assert saved.keys() == initial.keys()
    assert {role(n) for n in shared} == shared_roles(config.fedsa_lora.algorithm)
    for name, value in saved.items():
        torch.testing.assert_close(value, shared.get(name, initial[name]), msg=name)
    meta = json.loads((out / "fedsa.json").read_text())
    assert meta["global"] == sorted(shared) and meta["source"]["round"] == 5
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    if config.model.causal:  # B starts random (b_random under fedsa), there is no head
        assert {role(n) for n in meta["initial"]} == {"lora_B"}
        assert all(torch.count_nonzero(initial[n]) for n in meta["initial"])
        assert adapter_config["task_type"] == "CAUSAL_LM" and meta["task"] == "causal_lm"
    else:
        assert {role(n) for n in meta["initial"]} == {"head"}
        assert adapter_config["task_type"] == "SEQ_CLS" and meta["num_labels"] == 3


def test_plain_peft_loads_it_and_gives_the_same_logits(exported):
    config, out, shared = exported
    values = {**initial_values(config), **shared}
    adapter = fp32_adapter(config.model, config.model.num_labels or 0, values)
    enc = adapter.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = adapter.model(input_ids=enc["input_ids"],
                             attention_mask=enc["attention_mask"]).logits.numpy()
    done = subprocess.run(
        [sys.executable, str(LOADER), str(out), str(resolve_model_path(config.model.path)),
         json.dumps(TEXTS)], capture_output=True, text=True, timeout=900,  # busy shared CPU
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["project_modules"] == []
    assert got["type"] == ("PeftModelForCausalLM" if config.model.causal
                           else "PeftModelForSequenceClassification")
    np.testing.assert_allclose(np.array(got["logits"]), want, rtol=1e-4, atol=1e-4)


def test_mistakes_name_the_option(tmp_path):
    runner = CliRunner()
    done = runner.invoke(app, ["export", "--state-dir", str(tmp_path / "none"),
                               "--out", str(tmp_path / "o")])
    assert done.exit_code == 2 and "no cloud checkpoint" in flat(done.output)
    old = tmp_path / "old"
    cloud_state_dir(old, with_config=False)
    done = runner.invoke(app, ["export", "--state-dir", str(old), "--out", str(tmp_path / "o")])
    assert done.exit_code == 2 and "give the cloud's --config" in flat(done.output)
    config = tmp_path / "federation.yaml"
    config.write_text(json.dumps(CONFIG.model_dump(mode="json")))
    done = runner.invoke(app, ["export", "--state-dir", str(old), "--out", str(tmp_path / "o"),
                               "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "o" / "adapter_config.json").exists()
