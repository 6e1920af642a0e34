"""``edge-client export``/``predict``: ONNX agrees with the torch model it was merged from."""

from __future__ import annotations

import codecs
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edge_client.cli import app
from edge_client.export import export_state, rebuild_adapter
from edge_client.predict import OnnxClassifier
from edge_client.snapshot import load_snapshot

LABELS = ["comp.graphics", "rec.autos", "sci.space"]  # trained_state_dir's (conftest)
WORDS = ["space", "orbit", "rocket", "car", "engine", "wheel", "image", "pixel", "render",
         "nasa", "launch", "drive", "road", "color", "screen", "moon", "planet", "speed"]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def state_dir(trained_state_dir):
    return trained_state_dir


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


def test_export_prints_only_its_own_lines(state_dir, tmp_path):
    """`edge-client export --int8` printed ~70-100 lines of kernels, torch.onnx, onnxscript
    and onnxruntime internals (offline trust check, torchvision missing, graph passes,
    tensors left in float)."""
    done = subprocess.run([sys.executable, "-m", "edge_client", "export", "--state-dir",
                           str(state_dir), "--out", str(tmp_path / "m.onnx"), "--int8"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # as on a device
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()  # JSON lines: standard error is not a terminal
    assert lines and all('"logger": "fedsa.' in line for line in lines), done.stderr[-3000:]


def test_export_cli_and_missing_state(state_dir, tmp_path):
    result = CliRunner().invoke(app, ["export", "--state-dir", str(tmp_path / "nothing"),
                                      "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert "train at least one round" in re.sub(r"\s+", " ", result.output)
    result = CliRunner().invoke(app, ["export", "--state-dir", str(state_dir),
                                      "--out", str(tmp_path / "m.onnx"), "--int8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").exists() and (tmp_path / "m.json").exists()


TRICKY = ["", "a", "Crème brûlée façade naïve ÉCOLE", "日本語のテキスト and 中文", "emoji 🚀🚗 ok",
          "tabs\tand  spaces   here", " ".join(WORDS * 4), "x" * 300, "Don't STOP! (now?)"]


def test_the_tokenizers_library_gives_the_ids_transformers_gave(exported):
    """predict reads tokenizer.json with ``tokenizers`` alone; the model must see exactly the
    ids the device trained and exported with (truncation, padding, special tokens)."""
    from transformers import AutoTokenizer

    fp32, _ = exported
    reference = AutoTokenizer.from_pretrained(fp32.tokenizer_dir)
    clf = OnnxClassifier(fp32.onnx)
    for batch in (TRICKY, TRICKY[:1], TRICKY[6:7], texts(16, seed=3)):
        want = reference(batch, padding=True, truncation=True, max_length=32,
                         return_tensors="np")
        got = clf.encode(batch)
        assert got.keys() == {"input_ids", "attention_mask"}
        for name in got:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} {batch[:2]}")
    assert clf.encode(TRICKY)["input_ids"].shape == (len(TRICKY), 32)  # truncated to 32


def run_predict(*args: str, stdin: str | bytes | None = None,
                importtime: bool = False) -> subprocess.CompletedProcess:
    """``edge-client predict`` as a user runs it: a fresh interpreter, real stdin/stdout."""
    flags = ["-X", "importtime"] if importtime else []
    data = stdin.encode() if isinstance(stdin, str) else stdin
    env = {**os.environ, "COLUMNS": "1000"}  # no wrapping inside a long path in the box
    return subprocess.run([sys.executable, *flags, "-m", "edge_client", "predict", *args],
                          input=data, capture_output=True, timeout=120, env=env)


def test_predict_imports_neither_torch_nor_transformers(exported):
    fp32, _ = exported
    done = run_predict("--model", str(fp32.onnx), "--input", "-",
                       stdin="rocket launch\ncar engine\n", importtime=True)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout.decode().splitlines()) == 2
    # -X importtime writes one line per module imported: "import time: self | total | name"
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in done.stderr.decode().splitlines() if line.startswith("import time:")}
    assert {"onnxruntime", "tokenizers", "edge_client"} <= imported
    assert not imported & {"torch", "transformers", "peft", "bitsandbytes", "accelerate"}


def test_predict_reads_a_file_or_stdin_and_answers_each_line(exported, tmp_path):
    fp32, _ = exported
    lines = ["rocket launch to the moon", "", "car engine wheel", "Crème brûlée 🚀"]
    path = tmp_path / "in.txt"
    path.write_bytes(codecs.BOM_UTF8 + ("\r\n".join(lines) + "\r\n").encode())
    from_file = run_predict("--model", str(fp32.onnx), "--input", str(path), "--json",
                            "--batch-size", "3")
    assert from_file.returncode == 0, from_file.stderr.decode()
    rows = [json.loads(line) for line in from_file.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == lines  # blank line kept, line ends and BOM dropped
    expected = OnnxClassifier(fp32.onnx).predict(lines)
    for row, p in zip(rows, expected, strict=True):
        assert row["label"] == p.label and list(row["probabilities"]) == LABELS
        assert row["probability"] == pytest.approx(p.probability, abs=1e-6)
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert row["probabilities"][row["label"]] == row["probability"]
    from_stdin = run_predict("--model", str(fp32.onnx), "--input", "-", "--json",
                             stdin=path.read_bytes())
    assert from_stdin.stdout == from_file.stdout
    plain = run_predict("--model", str(fp32.onnx), "--input", str(path))
    assert [line.split("\t") for line in plain.stdout.decode().splitlines()] == [
        [p.label, f"{p.probability:.3f}", text] for p, text in zip(expected, lines, strict=True)]
    empty = run_predict("--model", str(fp32.onnx), "--input", "-", stdin="")
    assert empty.returncode == 0 and empty.stdout == b""


def test_predict_mistakes_are_one_message_exit_2(exported, tmp_path):
    fp32, _ = exported
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine\n" + "caf\xe9\n".encode("latin-1"))
    no_tokenizer = tmp_path / "bare.onnx"
    no_tokenizer.write_bytes(fp32.onnx.read_bytes())
    (tmp_path / "bare.tokenizer").mkdir()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    shutil.copytree(fp32.tokenizer_dir, tmp_path / "broken.tokenizer")
    model = str(fp32.onnx)
    for args, why in [
        (["--model", str(tmp_path / "none.onnx"), "x"], "--model: no model at"),
        (["--model", model], "--input: nothing to classify: give texts or --input FILE"),
        (["--model", model, "x", "--input", "-"], "--input: give texts or --input, not both"),
        (["--model", model, "--input", str(tmp_path / "nope.txt")],
         f"--input: {tmp_path / 'nope.txt'}: No such file or directory"),
        (["--model", model, "--input", str(latin)],
         f"--input: {latin}: line 2: not valid UTF-8 text (byte 0xe9)"),
        (["--model", str(no_tokenizer), "x"],
         f"--model: {tmp_path / 'bare.tokenizer'}: no tokenizer.json"),
        (["--model", str(broken), "x"], f"--model: {broken}: onnxruntime cannot load it"),
    ]:
        done = run_predict(*args)
        out = " ".join(done.stderr.decode().replace("│", " ").split())
        assert done.returncode == 2, (args, out)
        option, _, text = why.partition(": ")
        assert f"error: {text}" in out and option in out, (args, out)
        assert "Traceback" not in out
