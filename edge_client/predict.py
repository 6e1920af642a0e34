"""Classifying texts with an exported model: onnxruntime and the ``tokenizers`` library only.

Loads ``model.onnx`` with its ``model.tokenizer/`` and ``model.json`` sidecar (written by
``edge_client.export``); labels are printed by name when the device knew them.

Nothing here imports torch, transformers, peft or bitsandbytes (they made every call take
7 s and 0.5 GB, see docs/benchmarks.md): the saved ``tokenizer.json`` is read by
``tokenizers`` directly, with the truncation and padding that transformers applied at
training time (``truncation=True, max_length=N, padding=True``) set from
``tokenizer_config.json``, so the model sees the same ids.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edge_client.bundle import INPUTS, TOKENIZER_FILE, sidecar_path, tokenizer_dir
from fedsa_common.wire.errors import UserError, require_extra

TOKENIZER_CONFIG = "tokenizer_config.json"


class BundleError(ValueError, UserError):
    """An exported model that cannot be used as it is; the message names the file."""

    option = "--model"


class InputError(ValueError, UserError):
    """Texts to classify that cannot be read; the message names the file and line."""

    option = "--input"


@dataclass(frozen=True)
class Prediction:
    label_id: int
    label: str
    probability: float
    probabilities: tuple[float, ...] = ()  # of every label, in label-id order


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` holds it: a string or ``{"content": ..}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def load_tokenizer(directory: Path, max_length: int) -> Any:
    """The saved fast tokenizer, truncating to ``max_length`` and padding to the longest.

    Returns a ``tokenizers.Tokenizer``; truncation counts the special tokens ([CLS], [SEP])
    as transformers does, and padding uses the saved pad token and side.
    """
    from tokenizers import Tokenizer

    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise BundleError(f"{directory}: no {TOKENIZER_FILE} (the fast tokenizer that predict "
                          "reads); export the model again with 'edge-client export'")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise BundleError(f"{path}: not a tokenizer file: {exc}") from None
    config_path = Path(directory) / TOKENIZER_CONFIG
    config = _read_json(config_path) if config_path.is_file() else {}
    tokenizer.enable_truncation(max_length,
                                direction=config.get("truncation_side") or "right")
    saved = tokenizer.padding or {}
    pad_token = _token_text(config.get("pad_token")) or saved.get("pad_token")
    pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
    if pad_id is None:  # no pad token known: any id works, the attention mask hides it
        pad_token, pad_id = saved.get("pad_token", "[PAD]"), int(saved.get("pad_id", 0))
    tokenizer.enable_padding(direction=config.get("padding_side") or "right", pad_id=pad_id,
                             pad_token=pad_token,
                             pad_type_id=int(config.get("pad_token_type_id") or 0))
    return tokenizer


class OnnxClassifier:
    def __init__(self, model_path: Path, threads: int = 0) -> None:
        require_extra("onnxruntime", "predict", "edge-client predict")
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"no model at {model_path}")
        meta_path = sidecar_path(model_path)
        self.meta = _read_json(meta_path) if meta_path.exists() else {}
        self.max_length = int(self.meta.get("max_length", 128))
        self.label_names: list[str] | None = self.meta.get("label_names")
        tok = model_path.parent / self.meta["tokenizer"] if "tokenizer" in self.meta \
            else tokenizer_dir(model_path)
        self.tokenizer = load_tokenizer(tok, self.max_length)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"{model_path}: onnxruntime cannot load it: {first}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = sorted(set(self.inputs) - set(INPUTS) - {"token_type_ids"})
        if unknown:
            raise BundleError(f"{model_path}: the graph wants inputs {unknown}, not written "
                              f"by 'edge-client export' (it takes {list(INPUTS)})")

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The model's inputs for ``texts``: int64 ``input_ids`` and ``attention_mask``."""
        encodings = self.tokenizer.encode_batch(list(texts))
        columns = {"input_ids": [e.ids for e in encodings],
                   "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        return {name: np.asarray(columns[name], dtype=np.int64).reshape(len(encodings), -1)
                for name in self.inputs}

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.session.run(None, self.encode(texts))[0]

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            out.extend(self._classify(texts[start : start + batch_size]))
        return out

    def predict_stream(self, texts: Iterable[str], batch_size: int = 32
                       ) -> Iterator[tuple[str, Prediction]]:
        """``(text, prediction)`` as the texts come (a pipe, a large file): ``batch_size``
        texts are held at a time."""
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == batch_size:
                yield from zip(batch, self._classify(batch), strict=True)
                batch = []
        if batch:
            yield from zip(batch, self._classify(batch), strict=True)

    def _classify(self, texts: Sequence[str]) -> list[Prediction]:
        if not texts:
            return []
        logits = self.logits(texts).astype(np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = []
        for row in probs:
            k = int(row.argmax())
            out.append(Prediction(k, self.label_name(k), float(row[k]),
                                  tuple(float(p) for p in row)))
        return out

    def label_name(self, k: int) -> str:
        if self.label_names and k < len(self.label_names):
            return self.label_names[k]
        return str(k)


def text_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """The lines of ``stream`` (UTF-8, a byte-order mark skipped) without their line ends.

    Every line is one text, blank ones included, so output line N answers input line N.
    A line that is not UTF-8 raises ``InputError`` naming ``name`` and the line.
    """
    for number, raw in enumerate(stream, start=1):
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if number == 1:
            line = line.removeprefix(codecs.BOM_UTF8)
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{name}: line {number}: not valid UTF-8 text (byte 0x{line[exc.start]:02x}); "
                f"convert it first, e.g. iconv -f cp1252 -t utf-8 FILE | edge-client predict "
                f"--input - ...") from None
