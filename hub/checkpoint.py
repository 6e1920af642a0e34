"""The cloud hub's durable state: global shared parameters plus round bookkeeping (and,
with an adaptive split, the global value of every LoRA tensor and the current split; with
downlink deltas, the cloud's downlink residual and last delta, hub/downlink.py; with a
server optimizer other than sgd, its moments, hub/server_optimizer.py).

Written atomically after every round (tensors first, then the JSON that names them), so a
crash at any point leaves the previous complete checkpoint readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedsa_common.atomic import read_json, read_tensors, write_json, write_tensors
from hub.downlink import DownlinkState
from hub.server_optimizer import ServerOptimizerState

CHECKPOINT_JSON = "checkpoint.json"


@dataclass
class CloudState:
    round: int  # last completed round (0 before the first)
    version: int  # bumps whenever the global parameters change
    params: dict[str, torch.Tensor]
    config_hash: str
    history: list[dict[str, Any]] = field(default_factory=list)
    # adaptive split only: the tensors the next round shares (``params`` then holds every
    # LoRA tensor); None under a fixed split, where every held tensor is shared
    shared: list[str] | None = None
    # downlink deltas only (None without them, and then nothing of it is written)
    downlink: DownlinkState | None = None
    # a server optimizer other than sgd only (None with sgd, and then nothing is written)
    optimizer: ServerOptimizerState | None = None


def save_checkpoint(state_dir: Path, state: CloudState) -> None:
    tensors_name = f"global-v{state.version}.safetensors"
    write_tensors(Path(state_dir) / tensors_name, state.params)
    downlink: dict[str, Any] = {}
    downlink_name = f"downlink-r{state.round}.safetensors"
    if state.downlink is not None:
        meta, tensors = state.downlink.to_state()
        write_tensors(Path(state_dir) / downlink_name, tensors)
        downlink = {"downlink": {**meta, "tensors": downlink_name}}
    optimizer: dict[str, Any] = {}
    optimizer_name = f"optimizer-r{state.round}.safetensors"
    if state.optimizer is not None:
        meta, tensors = state.optimizer.to_state()
        write_tensors(Path(state_dir) / optimizer_name, tensors)
        optimizer = {"optimizer": {**meta, "tensors": optimizer_name}}
    write_json(
        Path(state_dir) / CHECKPOINT_JSON,
        {
            "round": state.round,
            "version": state.version,
            "tensors": tensors_name,
            "config_hash": state.config_hash,
            "history": state.history,
            **({"shared": sorted(state.shared)} if state.shared is not None else {}),
            **downlink,
            **optimizer,
        },
    )
    for old in Path(state_dir).glob("global-v*.safetensors"):
        if old.name != tensors_name:
            old.unlink(missing_ok=True)
    for old in Path(state_dir).glob("downlink-r*.safetensors"):
        if not downlink or old.name != downlink_name:
            old.unlink(missing_ok=True)
    for old in Path(state_dir).glob("optimizer-r*.safetensors"):
        if not optimizer or old.name != optimizer_name:
            old.unlink(missing_ok=True)


def load_checkpoint(state_dir: Path) -> CloudState | None:
    meta_path = Path(state_dir) / CHECKPOINT_JSON
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    downlink = None
    if meta.get("downlink") is not None:
        raw = meta["downlink"]
        downlink = DownlinkState.from_state(raw, read_tensors(Path(state_dir) / raw["tensors"]))
    optimizer = None
    if meta.get("optimizer") is not None:
        raw = meta["optimizer"]
        optimizer = ServerOptimizerState.from_state(
            raw, read_tensors(Path(state_dir) / raw["tensors"]))
    return CloudState(
        round=int(meta["round"]),
        version=int(meta["version"]),
        params=read_tensors(Path(state_dir) / meta["tensors"]),
        config_hash=str(meta["config_hash"]),
        history=list(meta.get("history", [])),
        shared=list(meta["shared"]) if meta.get("shared") is not None else None,
        downlink=downlink,
        optimizer=optimizer,
    )
