"""Exporting a device's personalized model: to ONNX for inference without torch, or as a
peft adapter for the Hugging Face ecosystem (``export_peft``; quant.peft_export).

The model is rebuilt from the state directory (``edge_client.snapshot``) on a full-precision
base: a 4-bit bitsandbytes base cannot be merged into or exported, and the adapters were
trained against a quantization of these same weights, so the fp32 base is the faithful
(and the only portable) one to merge into.  LoRA (global A, local B) is merged into the
weights with peft's ``merge_and_unload``, the head is the device's own, and the graph takes
``input_ids`` and ``attention_mask`` with dynamic batch and sequence axes.  ``int8``
applies onnxruntime's dynamic quantization (int8 weights, activations quantized on the
fly), which shrinks the file about 4x and usually speeds CPU inference up.

Next to ``model.onnx`` go ``model.tokenizer/`` (the tokenizer, saved with transformers;
``edge-client predict`` reads its ``tokenizer.json`` with the ``tokenizers`` library alone)
and ``model.json`` (label names, max length, provenance); see ``edge_client.bundle``.

The peft export is not merged: ``adapter_config.json`` and ``adapter_model.safetensors``
hold LoRA and the head, for ``peft.PeftModel.from_pretrained`` on the same base.  It is
the only export of a causal language model (``model.task: causal_lm``): LoRA alone, task
type ``CAUSAL_LM``, for ``AutoModelForCausalLM``; the ONNX bundle is a classifier's.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edge_client.bundle import FORMAT, INPUTS, TOKENIZER_FILE, sidecar_path, tokenizer_dir
from edge_client.snapshot import Snapshot, load_snapshot
from fedsa_common.process.atomic import write_json
from fedsa_common.wire.errors import require_extra
from quant.adapters import AdapterModel
from quant.peft_export import PeftExport, bnb_settings, fp32_adapter, save_peft_adapter
from quant.personal_head import fold_personal_head

log = logging.getLogger("fedsa.export")


@dataclass(frozen=True)
class ExportResult:
    onnx: Path
    tokenizer_dir: Path
    sidecar: Path
    bytes: int
    int8: bool


def rebuild_adapter(snapshot: Snapshot) -> AdapterModel:
    """The device's personalized model, unmerged, on an fp32 base (for export and tests),
    with a personal head folded into its head (the formats know one head)."""
    return fp32_adapter(snapshot.model, snapshot.num_labels,
                        fold_personal_head({**snapshot.local, **snapshot.global_shared}))


def merged_model(snapshot: Snapshot) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, int]:
    adapter = rebuild_adapter(snapshot)
    model = adapter.model.merge_and_unload()
    model.eval()
    return model, adapter.tokenizer, adapter.max_length


class _Logits(torch.nn.Module):
    """Only the logits, so the ONNX graph has one plain output."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, *,
                int8: bool = False) -> int:
    """Write ``out`` (a single self-contained .onnx file); returns its size in bytes."""
    for module in ("onnx", "onnxscript", "onnxruntime"):  # the exporter and int8 and the check
        require_extra(module, "export", "the ONNX export")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["an example", "a somewhat longer example sentence"], padding=True,
                       return_tensors="pt")
    kwargs = {k: sample[k] for k in INPUTS}
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        plain = Path(tmp) / "fp32.onnx" if int8 else out
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Logits(model).eval(), (), str(plain), kwargs=kwargs,
                              input_names=list(INPUTS), output_names=["logits"],
                              dynamic_shapes={k: dims for k in INPUTS}, dynamo=True,
                              external_data=False, verbose=False)
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(plain), str(out), weight_type=QuantType.QInt8)
    return out.stat().st_size


def export_state(state_dir: Path, out: Path, *, int8: bool = False) -> ExportResult:
    """Export the device model kept in ``state_dir`` to ``out`` with tokenizer and sidecar;
    a classifier only (the bundle and ``edge-client predict`` are about labels)."""
    snapshot = load_snapshot(state_dir)
    if snapshot.model.causal:
        raise ValueError(f"{state_dir}: model.task causal_lm: the ONNX export is for "
                         "classifiers; export a causal language model with --format peft")
    model, tokenizer, max_length = merged_model(snapshot)
    size = export_onnx(model, tokenizer, out, int8=int8)
    tok_dir = tokenizer_dir(out)
    tokenizer.save_pretrained(tok_dir)
    if not (tok_dir / TOKENIZER_FILE).exists():
        log.warning("%s: no %s (the model's tokenizer is not a fast one): edge-client "
                    "predict cannot read it", tok_dir, TOKENIZER_FILE)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "inputs": list(INPUTS),
        "max_length": max_length,
        "num_labels": snapshot.num_labels,
        "label_names": snapshot.label_names,
        "int8": int8,
        "tokenizer": tok_dir.name,
        "source": {k: snapshot.info.get(k) for k in
                   ("client", "round", "algorithm", "config_hash", "model")},
    }
    write_json(sidecar_path(out), meta)
    log.info("exported %s (%d bytes%s)", out, size, ", int8" if int8 else "")
    return ExportResult(onnx=Path(out), tokenizer_dir=tok_dir, sidecar=sidecar_path(out),
                        bytes=size, int8=int8)


def export_peft(state_dir: Path, out: Path, *, base_name: str | None = None) -> PeftExport:
    """Write the device's personalized adapter (the last global shared parameters, its own
    local ones and, for a classifier, its head) to the directory ``out`` in peft's format
    (quant.peft_export), which ``peft.PeftModel.from_pretrained(base, out)`` loads onto the
    same base (a sequence classifier's, or a causal language model's)."""
    snapshot = load_snapshot(state_dir)
    adapter = rebuild_adapter(snapshot)
    precision = snapshot.model.precision
    result = save_peft_adapter(adapter, out, base_name=base_name, meta={
        "label_names": snapshot.label_names,
        "trained_precision": precision,
        "bitsandbytes": bnb_settings(precision, snapshot.model.task),
        "source": {k: snapshot.info.get(k) for k in
                   ("client", "round", "algorithm", "config_hash")},
    })
    log.info("exported the peft adapter to %s (%d tensors)", out, result.tensors)
    return result
