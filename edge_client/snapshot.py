"""What a device keeps so that its personalized model can be rebuilt offline.

The state directory already holds the device's local parameters (``local.safetensors``:
B and the head under FedSA-LoRA).  The shared ones (A) belong to the federation and arrive
with each announcement, so the device also keeps the last global shared parameters it
received (``global.safetensors``) and the model description from the announcement's
configuration (``model.json``: model section with ``num_labels``, algorithm, label names).
Together they are everything ``edge-client export`` needs, without a broker.

Under downlink deltas the device also keeps the global shared parameters of the last
version it held, announced or not (``held-global.safetensors``, with ``held-global.json``
naming version, configuration and digest; edge_client/downlink.py), so a rebooted device
can apply the next delta instead of fetching everything.  They are kept apart from
``global.safetensors``, which stays what the device last trained from (and, at the end, the
final global), as export and the adaptive split read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edge_client.downlink import HeldGlobal
from edge_client.state import LOCAL
from fedsa_common.federation.config import FederationConfig, ModelSection
from fedsa_common.process.atomic import read_json, read_tensors, write_json, write_tensors
from fedsa_common.wire.protocol import params_digest

GLOBAL = "global.safetensors"
MODEL = "model.json"
HELD = "held-global.safetensors"
HELD_META = "held-global.json"


@dataclass(frozen=True)
class Snapshot:
    model: ModelSection
    num_labels: int  # 0 for a causal language model
    label_names: list[str] | None
    info: dict[str, Any]
    global_shared: dict[str, torch.Tensor]
    local: dict[str, torch.Tensor]


def model_info(config: FederationConfig, label_names: list[str] | None, *, client: str,
               round_: int, config_hash: str) -> dict[str, Any]:
    return {
        "model": config.model.model_dump(mode="json"),
        "num_labels": config.model.num_labels,
        "algorithm": config.fedsa_lora.algorithm,
        "seed": config.federation.seed,
        "label_names": list(label_names) if label_names else None,
        "client": client,
        "round": round_,
        "config_hash": config_hash,
    }


def save_global(state_dir: Path, global_shared: Mapping[str, torch.Tensor],
                info: Mapping[str, Any] | None = None) -> None:
    """Keep the last global shared parameters (and, when given, the model description)."""
    write_tensors(Path(state_dir) / GLOBAL, global_shared)
    if info is not None:
        write_json(Path(state_dir) / MODEL, dict(info))


def saved_global(state_dir: Path) -> dict[str, torch.Tensor]:
    """The last global shared parameters kept by ``save_global`` ({} before any)."""
    path = Path(state_dir) / GLOBAL
    return read_tensors(path) if path.exists() else {}


def save_held(state_dir: Path, held: HeldGlobal) -> None:
    """Keep the held global (tensors first, then the JSON that names their version)."""
    write_tensors(Path(state_dir) / HELD, held.tensors)
    write_json(Path(state_dir) / HELD_META, {"version": held.version,
                                             "config_hash": held.config_hash,
                                             "digest": held.digest})


def load_held(state_dir: Path) -> HeldGlobal | None:
    """The held global kept by ``save_held``; None before any, or when the tensors do not
    match their digest (a crash between the two writes)."""
    meta_path, path = Path(state_dir) / HELD_META, Path(state_dir) / HELD
    if not (meta_path.exists() and path.exists()):
        return None
    meta = read_json(meta_path)
    tensors = read_tensors(path)
    if params_digest(tensors) != meta.get("digest"):
        return None
    return HeldGlobal(int(meta["version"]), str(meta["config_hash"]), str(meta["digest"]),
                      tensors)


def saved_info(state_dir: Path) -> dict[str, Any] | None:
    path = Path(state_dir) / MODEL
    return read_json(path) if path.exists() else None


def load_snapshot(state_dir: Path) -> Snapshot:
    """Everything needed to rebuild the device's model; FileNotFoundError names what lacks."""
    state_dir = Path(state_dir)
    missing = [n for n in (MODEL, LOCAL, GLOBAL) if not (state_dir / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{state_dir}: no {', '.join(missing)}; the device has to train at least one round "
            "(with this version of edge-client) before its model can be exported")
    info = read_json(state_dir / MODEL)
    model = ModelSection.model_validate(info["model"])
    num_labels = int(info.get("num_labels") or model.num_labels or 0)
    if num_labels < 2 and not model.causal:  # a causal model has no head to size
        raise ValueError(f"{state_dir / MODEL}: no num_labels")
    return Snapshot(model=model, num_labels=num_labels, label_names=info.get("label_names"),
                    info=info, global_shared=read_tensors(state_dir / GLOBAL),
                    local=read_tensors(state_dir / LOCAL))
