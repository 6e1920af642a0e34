"""The cloud hub's durable state: global shared parameters plus round bookkeeping (and,
with an adaptive split, the global value of every LoRA tensor and the current split; with
downlink deltas, the cloud's downlink residual and last delta, hub/downlink.py; with a
server optimizer other than sgd, its moments, hub/server_optimizer.py).

Written atomically after every round (tensors first, then the JSON that names them), so a
crash at any point leaves the previous complete checkpoint readable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from fedsa_common.process.atomic import read_json, read_tensors, write_json, write_tensors
from hub.downlink import DownlinkState
from hub.lifecycle import CHECKPOINT_JSON
from hub.server_optimizer import ServerOptimizerState

T = TypeVar("T")


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
    # lifecycle (hub/lifecycle.py; None in checkpoints written before it): the configuration
    # the cloud ran with (its rounds = the total then), the configuration file's rounds at
    # the last start, and the total a lifecycle command set since (``hub federation``)
    config: dict[str, Any] | None = None
    file_rounds: int | None = None
    target: int | None = None


class _Part(Protocol):
    """A checkpointed component with tensors of its own (downlink state, optimizer state)."""

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]: ...


def _save_part(state_dir: Path, key: str, part: _Part | None, round_: int) -> dict[str, Any]:
    """Write ``part``'s tensors as ``KEY-rROUND.safetensors`` and return its entry for
    checkpoint.json ({} when ``part`` is None); older files of that key are pruned by the
    caller once the JSON names the new one."""
    name = f"{key}-r{round_}.safetensors"
    entry: dict[str, Any] = {}
    if part is not None:
        meta, tensors = part.to_state()
        write_tensors(state_dir / name, tensors)
        entry = {key: {**meta, "tensors": name}}
    return entry


def _prune(state_dir: Path, pattern: str, keep: str | None) -> None:
    for old in state_dir.glob(pattern):
        if old.name != keep:
            old.unlink(missing_ok=True)


def save_checkpoint(state_dir: Path, state: CloudState) -> None:
    state_dir = Path(state_dir)
    tensors_name = f"global-v{state.version}.safetensors"
    write_tensors(state_dir / tensors_name, state.params)
    parts = {key: _save_part(state_dir, key, part, state.round)
             for key, part in (("downlink", state.downlink), ("optimizer", state.optimizer))}
    write_json(
        state_dir / CHECKPOINT_JSON,
        {
            "round": state.round,
            "version": state.version,
            "tensors": tensors_name,
            "config_hash": state.config_hash,
            "history": state.history,
            **({"shared": sorted(state.shared)} if state.shared is not None else {}),
            **parts["downlink"],
            **parts["optimizer"],
            **({"config": state.config} if state.config is not None else {}),
            **({"file_rounds": state.file_rounds} if state.file_rounds is not None else {}),
            **({"rounds": state.target} if state.target is not None else {}),
        },
    )
    # only after checkpoint.json names the new files: a crash in between keeps the old set
    _prune(state_dir, "global-v*.safetensors", tensors_name)
    for key, entry in parts.items():
        _prune(state_dir, f"{key}-r*.safetensors", entry[key]["tensors"] if entry else None)


def _load_part(state_dir: Path, raw: dict[str, Any] | None,
               load: Callable[[dict[str, Any], dict[str, torch.Tensor]], T]) -> T | None:
    return None if raw is None else load(raw, read_tensors(state_dir / raw["tensors"]))


def load_checkpoint(state_dir: Path) -> CloudState | None:
    meta_path = Path(state_dir) / CHECKPOINT_JSON
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    state_dir = Path(state_dir)
    downlink = _load_part(state_dir, meta.get("downlink"), DownlinkState.from_state)
    optimizer = _load_part(state_dir, meta.get("optimizer"), ServerOptimizerState.from_state)
    return CloudState(
        round=int(meta["round"]),
        version=int(meta["version"]),
        params=read_tensors(state_dir / meta["tensors"]),
        config_hash=str(meta["config_hash"]),
        history=list(meta.get("history", [])),
        shared=list(meta["shared"]) if meta.get("shared") is not None else None,
        downlink=downlink,
        optimizer=optimizer,
        config=meta.get("config"),
        file_rounds=_int_or_none(meta.get("file_rounds")),
        target=_int_or_none(meta.get("rounds")),
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
