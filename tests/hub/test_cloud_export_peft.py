"""``hub export``: the cloud's global shared parameters as a peft adapter that plain
transformers + peft load (tests/peft_load.py, run in a fresh interpreter)."""

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
from fedsa_common.federation.split import shared_names
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


def flat(output: str) -> str:
    """CLI output without the rich box's borders and line breaks."""
    return re.sub(r"[│\s]+", " ", output)


def cloud_state_dir(path: Path, *, with_config: bool = True) -> dict[str, torch.Tensor]:
    shapes = adapter_shapes(CONFIG.model, 3)
    g = torch.Generator().manual_seed(1)
    shared = {n: torch.randn(shapes[n], generator=g) * 0.3
              for n in shared_names(sorted(shapes), "fedit")}
    save_checkpoint(path, CloudState(
        round=5, version=5, params=shared, config_hash=CONFIG.digest(),
        config=CONFIG.model_dump(mode="json") if with_config else None))
    return shared


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = tmp_path_factory.mktemp("cloud")
    shared = cloud_state_dir(state)
    out = tmp_path_factory.mktemp("peft") / "global"
    result = CliRunner().invoke(app, ["export", "--state-dir", str(state), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, shared


def test_the_global_adapter_holds_the_global_and_the_initial_values(exported):
    out, shared = exported
    initial = init_adapter_values(adapter_shapes(CONFIG.model, 3), CONFIG.federation.seed)
    saved = {wire_name(k): v for k, v in load_file(out / "adapter_model.safetensors").items()}
    assert saved.keys() == initial.keys()
    assert any("lora_B" in n for n in shared) and not any(n.startswith("classifier")
                                                         for n in shared)
    for name, value in saved.items():
        torch.testing.assert_close(value, shared.get(name, initial[name]), msg=name)
    meta = json.loads((out / "fedsa.json").read_text())
    assert meta["global"] == sorted(shared) and meta["source"]["round"] == 5
    assert all(n.startswith("classifier") for n in meta["initial"])


def test_plain_peft_loads_it_and_gives_the_same_logits(exported):
    out, shared = exported
    values = {**init_adapter_values(adapter_shapes(CONFIG.model, 3), 3), **shared}
    adapter = fp32_adapter(CONFIG.model, 3, values)
    enc = adapter.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = adapter.model(**enc).logits.numpy()
    done = subprocess.run(
        [sys.executable, str(LOADER), str(out), str(resolve_model_path("tiny-bert")),
         json.dumps(TEXTS)], capture_output=True, text=True, timeout=900,  # busy shared CPU
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["project_modules"] == []
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
