"""``edge-client export``/``predict``: ONNX agrees with the torch model it was merged from."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edge_client.cli import app
from edge_client.export import export_state, rebuild_adapter
from edge_client.predict import OnnxClassifier
from edge_client.snapshot import load_snapshot, model_info, save_global
from edge_client.state import DeviceState, StateDir
from fedsa_common.config import FederationConfig
from fedsa_common.split import local_names, shared_names
from quant.adapters import build_adapter_model

LABELS = ["comp.graphics", "rec.autos", "sci.space"]
WORDS = ["space", "orbit", "rocket", "car", "engine", "wheel", "image", "pixel", "render",
         "nasa", "launch", "drive", "road", "color", "screen", "moon", "planet", "speed"]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    """A device state directory as Device.train_round leaves it, with non-trivial adapters."""
    config = FederationConfig.model_validate({
        "federation": {"name": "exp", "seed": 4},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
    })
    adapter = build_adapter_model(config.model.model_copy(update={"precision": "fp32"}), 3, 4)
    g = torch.Generator().manual_seed(0)
    values = {n: torch.randn(s, generator=g) * (1.0 if n.startswith("classifier") else 0.2)
              for n, s in adapter.shapes().items()}
    names = adapter.names
    path = tmp_path_factory.mktemp("device")
    store = StateDir(path, "dev-1", "north", "exp")
    store.save(DeviceState("dev-1", "north", "exp", config_hash=config.digest(), last_round=3,
                           local={n: values[n] for n in local_names(names, "fedsa")}))
    save_global(path, {n: values[n] for n in shared_names(names, "fedsa")},
                model_info(config, LABELS, client="dev-1", round_=3,
                           config_hash=config.digest()))
    return path


@pytest.fixture(scope="module")
def exported(state_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return (export_state(state_dir, out / "model.onnx"),
            export_state(state_dir, out / "model-int8.onnx", int8=True))


def torch_logits(state_dir, batch: list[str]) -> np.ndarray:
    adapter = rebuild_adapter(load_snapshot(state_dir))  # unmerged peft model, fp32
    enc = adapter.tokenizer(batch, padding=True, truncation=True, max_length=32,
                            return_tensors="pt")
    with torch.no_grad():
        return adapter.model(input_ids=enc["input_ids"],
                             attention_mask=enc["attention_mask"]).logits.numpy()


def test_fp32_onnx_matches_the_torch_model(state_dir, exported):
    fp32, _ = exported
    batch = texts(24)
    ref = torch_logits(state_dir, batch)
    assert ref.std() > 0.1  # the adapters and head matter: logits are far from uniform
    onnx = OnnxClassifier(fp32.onnx).logits(batch)
    np.testing.assert_allclose(onnx, ref, rtol=1e-4, atol=1e-4)
    session = ort.InferenceSession(str(fp32.onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert not list(fp32.onnx.parent.glob("*.data"))  # one self-contained file


def test_int8_export_is_smaller_and_agrees_on_most_argmaxes(state_dir, exported):
    fp32, int8 = exported
    assert int8.bytes < fp32.bytes * 0.5
    batch = texts(64, seed=1)
    ref = torch_logits(state_dir, batch).argmax(-1)
    got = OnnxClassifier(int8.onnx).logits(batch).argmax(-1)
    assert (got == ref).mean() >= 0.8


def test_sidecar_and_predict_cli(exported):
    fp32, _ = exported
    meta = json.loads(fp32.sidecar.read_text())
    assert meta["label_names"] == LABELS and meta["source"]["round"] == 3
    assert (fp32.tokenizer_dir / "tokenizer_config.json").exists()
    preds = OnnxClassifier(fp32.onnx).predict(texts(5))
    assert all(p.label in LABELS and 1 / 3 <= p.probability <= 1 for p in preds)
    result = CliRunner().invoke(app, ["predict", "--model", str(fp32.onnx), "rocket launch",
                                      "car engine"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in LABELS for line in lines)


def test_export_cli_and_missing_state(state_dir, tmp_path):
    result = CliRunner().invoke(app, ["export", "--state-dir", str(tmp_path / "nothing"),
                                      "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert "train at least one round" in re.sub(r"[│\s]+", " ", result.output)  # rich box
    result = CliRunner().invoke(app, ["export", "--state-dir", str(state_dir),
                                      "--out", str(tmp_path / "m.onnx"), "--int8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").exists() and (tmp_path / "m.json").exists()
