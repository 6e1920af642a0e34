"""Classifying texts with an exported model: onnxruntime and the saved tokenizer, no torch.

Loads ``model.onnx`` with its ``model.tokenizer/`` and ``model.json`` sidecar (written by
``edge_client.export``); labels are printed by name when the device knew them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_client.export import sidecar_path, tokenizer_dir
from fedsa_common.atomic import read_json


@dataclass(frozen=True)
class Prediction:
    label_id: int
    label: str
    probability: float


class OnnxClassifier:
    def __init__(self, model_path: Path, threads: int = 0) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        model_path = Path(model_path)
        if not model_path.exists():
            raise FileNotFoundError(f"no model at {model_path}")
        meta_path = sidecar_path(model_path)
        self.meta = read_json(meta_path) if meta_path.exists() else {}
        self.max_length = int(self.meta.get("max_length", 128))
        self.label_names: list[str] | None = self.meta.get("label_names")
        tok = model_path.parent / self.meta["tokenizer"] if "tokenizer" in self.meta \
            else tokenizer_dir(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(tok)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_path), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="np")
        feed = {name: enc[name].astype(np.int64) for name in self.inputs}
        return self.session.run(None, feed)[0]

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            logits = self.logits(texts[start : start + batch_size]).astype(np.float64)
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
            for row in probs:
                k = int(row.argmax())
                out.append(Prediction(k, self.label_name(k), float(row[k])))
        return out

    def label_name(self, k: int) -> str:
        if self.label_names and k < len(self.label_names):
            return self.label_names[k]
        return str(k)
