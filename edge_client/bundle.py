"""The files of an exported model, named in one place for the exporter and the predictor.

``model.onnx`` comes with ``model.tokenizer/`` (the tokenizer as transformers saves it,
whose ``tokenizer.json`` the ``tokenizers`` library reads on its own) and ``model.json``
(label names, max length, provenance).  Light on purpose: ``edge_client.predict`` imports
it and must not pull in torch through ``edge_client.export``.
"""

from __future__ import annotations

from pathlib import Path

FORMAT = "fedsa-edge-onnx/1"
INPUTS = ("input_ids", "attention_mask")
TOKENIZER_FILE = "tokenizer.json"  # the fast tokenizer, all that predict reads of it


def sidecar_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def tokenizer_dir(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".tokenizer")
