"""``edge-client export --format peft``: plain transformers + peft restore the device's model.

The loading side runs tests/peft_load.py in a fresh interpreter (a real subprocess that
imports transformers, peft and torch only) and its logits are compared with the device's
own model: the nf4 model the device evaluates (the loader quantizes the same base with the
recorded bitsandbytes settings) and the fp32 one that export rebuilds.  A causal language
model (the tiny Llama) goes the same way onto ``AutoModelForCausalLM``.
"""

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

from edge_client.cli import app
from edge_client.export import export_peft, rebuild_adapter
from edge_client.snapshot import load_snapshot
from quant.adapters import AdapterModel, build_adapter_model, wire_name
from quant.base_model import resolve_model_path

LOADER = Path(__file__).parents[1] / "peft_load.py"
TEXTS = ["rocket launch to the moon", "car engine and wheel", "pixel color on the screen",
         "nasa orbit planet speed road drive"]
PROMPTS = ["what is 2 plus 3 ?", "what is 7 plus 1 ? eight"]


def flat(output: str) -> str:
    """CLI output without the rich box's borders and line breaks."""
    return re.sub(r"[│\s]+", " ", output)


def plain_peft_logits(adapter_dir: Path, base: Path, texts: list[str], *, bnb: bool,
                      kind: str = "PeftModelForSequenceClassification") -> np.ndarray:
    done = subprocess.run(
        [sys.executable, str(LOADER), str(adapter_dir), str(base), json.dumps(texts),
         *(["--bnb"] if bnb else [])],
        capture_output=True, text=True, timeout=900,  # a busy shared CPU
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["project_modules"] == []
    assert out["type"] == kind
    return np.array(out["logits"])


def logits(adapter: AdapterModel, texts: list[str]) -> np.ndarray:
    enc = adapter.tokenizer(texts, padding=True, truncation=True,
                            max_length=adapter.max_length, return_tensors="pt")
    adapter.model.eval()
    with torch.no_grad():
        return adapter.model(input_ids=enc["input_ids"],
                             attention_mask=enc["attention_mask"]).logits.numpy()


def export_cli(state_dir: Path, out: Path) -> Path:
    result = CliRunner().invoke(app, ["export", "--state-dir", str(state_dir),
                                      "--out", str(out), "--format", "peft"])
    assert result.exit_code == 0, result.output
    return out


def device_model(state_dir: Path) -> AdapterModel:
    """The device's own model: its nf4 base and adapters, as it trains and evaluates."""
    snapshot = load_snapshot(state_dir)
    assert snapshot.model.precision == "nf4"
    device = build_adapter_model(snapshot.model, snapshot.num_labels, seed=4)
    device.set({**snapshot.local, **snapshot.global_shared})
    return device


@pytest.fixture(scope="module")
def exported(trained_state_dir, tmp_path_factory) -> Path:
    return export_cli(trained_state_dir, tmp_path_factory.mktemp("peft") / "adapter")


@pytest.fixture(scope="module")
def causal_exported(causal_state_dir, tmp_path_factory) -> Path:
    return export_cli(causal_state_dir, tmp_path_factory.mktemp("peft") / "causal")


def test_plain_peft_on_the_nf4_base_gives_the_devices_logits(trained_state_dir, exported):
    want = logits(device_model(trained_state_dir), TEXTS)
    assert want.std() > 0.1  # adapters and head matter: far from uniform
    got = plain_peft_logits(exported, resolve_model_path("tiny-bert"), TEXTS, bnb=True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_plain_peft_on_the_fp32_base_gives_the_rebuilt_models_logits(trained_state_dir,
                                                                     exported):
    want = logits(rebuild_adapter(load_snapshot(trained_state_dir)), TEXTS)
    got = plain_peft_logits(exported, resolve_model_path("tiny-bert"), TEXTS, bnb=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_files_hold_lora_and_head_and_a_loader_needs(trained_state_dir, exported):
    snapshot = load_snapshot(trained_state_dir)
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert "classifier" in config["modules_to_save"]
    assert config["base_model_name_or_path"] == str(resolve_model_path("tiny-bert"))
    saved = {wire_name(k): v for k, v in load_file(exported / "adapter_model.safetensors").items()}
    values = {**snapshot.local, **snapshot.global_shared}
    assert saved.keys() == values.keys()
    for name, value in values.items():
        torch.testing.assert_close(saved[name], value, msg=name)
    meta = json.loads((exported / "fedsa.json").read_text())
    assert meta["label_names"] == snapshot.label_names and meta["num_labels"] == 3
    assert meta["bitsandbytes"]["bnb_4bit_quant_type"] == "nf4"
    assert (exported / "tokenizer.json").exists()


def test_base_name_and_option_mistakes(trained_state_dir, tmp_path):
    result = export_peft(trained_state_dir, tmp_path / "named", base_name="org/model")
    assert json.loads(result.config.read_text())["base_model_name_or_path"] == "org/model"
    for args, hint in ((["--format", "peft", "--int8"], "--int8"),
                       (["--base-name", "x"], "--base-name")):
        done = CliRunner().invoke(app, ["export", "--state-dir", str(trained_state_dir),
                                        "--out", str(tmp_path / "x"), *args])
        assert done.exit_code == 2 and hint in done.output, done.output
    done = CliRunner().invoke(app, ["export", "--state-dir", str(tmp_path / "none"),
                                    "--out", str(tmp_path / "y"), "--format", "peft"])
    assert done.exit_code == 2 and "train at least one round" in flat(done.output)


def test_a_causal_models_adapter_loads_onto_the_causal_base_with_the_devices_logits(
        causal_state_dir, causal_exported):
    device = device_model(causal_state_dir)
    want = logits(device, PROMPTS)
    with device.model.disable_adapter():
        base = logits(device, PROMPTS)
    assert np.abs(want - base).max() > 0.1  # LoRA matters: the comparison could fail
    got = plain_peft_logits(causal_exported, resolve_model_path("tiny-causal"), PROMPTS,
                            bnb=True, kind="PeftModelForCausalLM")
    assert got.shape == want.shape and want.shape[-1] == device.tokenizer.vocab_size
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_causal_models_files_hold_every_lora_tensor_and_no_head(causal_state_dir,
                                                                   causal_exported):
    snapshot = load_snapshot(causal_state_dir)
    config = json.loads((causal_exported / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert not config["modules_to_save"]
    assert set(config["target_modules"]) == {"q_proj", "v_proj"}  # the Llama's attention
    saved = {wire_name(k): v
             for k, v in load_file(causal_exported / "adapter_model.safetensors").items()}
    values = {**snapshot.local, **snapshot.global_shared}
    assert saved.keys() == values.keys()
    assert len(saved) == 2 * 2 * 2  # A and B of q_proj and v_proj in each of two layers
    assert {n.split(".")[-2] for n in snapshot.global_shared} == {"lora_A"}  # FedSA: A global
    for name, value in values.items():
        torch.testing.assert_close(saved[name], value, msg=name)
    meta = json.loads((causal_exported / "fedsa.json").read_text())
    assert meta["task"] == "causal_lm" and meta["num_labels"] is None
    assert meta["bitsandbytes"]["llm_int8_skip_modules"] is None  # transformers keeps lm_head


def test_a_causal_model_has_no_onnx_export(causal_state_dir, tmp_path):
    done = CliRunner().invoke(app, ["export", "--state-dir", str(causal_state_dir),
                                    "--out", str(tmp_path / "m.onnx")])
    assert done.exit_code == 2 and "--format peft" in flat(done.output), done.output
    assert not (tmp_path / "m.onnx").exists()
