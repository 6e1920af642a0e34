"""A device's private state directory: local parameters (B and head under FedSA-LoRA), the
error-feedback residual, round bookkeeping, and the last update until the broker acked it.

One directory belongs to exactly one device: opening it under another client id is refused,
so two devices can never end up sharing (and leaking) each other's local parameters; while
``edge-client join`` runs, ``state_lock`` keeps a second process out of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edge_client.state_lock import META, check_owner
from fedsa_common.process.atomic import (
    read_json,
    read_tensors,
    write_bytes,
    write_json,
    write_tensors,
)

LOCAL = "local.safetensors"
RESIDUAL = "residual.safetensors"
PENDING = "pending-update.bin"


@dataclass
class DeviceState:
    client: str
    region: str
    federation: str
    config_hash: str | None = None
    # FederationConfig.state_digest of that configuration: everything but `rounds`, so an
    # extended federation (same digest) keeps the local parameters
    state_hash: str | None = None
    last_round: int = 0
    base_version: int = 0
    local: dict[str, torch.Tensor] = field(default_factory=dict)
    residual: dict[str, torch.Tensor] = field(default_factory=dict)


class StateDir:
    def __init__(self, path: Path, client: str, region: str, federation: str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.identity = (client, region, federation)
        check_owner(self.path, client, region, federation)

    def load(self) -> DeviceState:
        client, region, federation = self.identity
        meta_path = self.path / META
        if not meta_path.exists():
            return DeviceState(client, region, federation)
        meta = read_json(meta_path)
        local = self.path / LOCAL
        residual = self.path / RESIDUAL
        return DeviceState(
            client, region, federation,
            config_hash=meta.get("config_hash"),
            state_hash=meta.get("state_hash"),
            last_round=int(meta.get("last_round", 0)),
            base_version=int(meta.get("base_version", 0)),
            local=read_tensors(local) if local.exists() else {},
            residual=read_tensors(residual) if residual.exists() else {},
        )

    def save(self, state: DeviceState) -> None:
        write_tensors(self.path / LOCAL, state.local)
        write_tensors(self.path / RESIDUAL, state.residual)
        write_json(self.path / META, {
            "client": state.client,
            "region": state.region,
            "federation": state.federation,
            "config_hash": state.config_hash,
            "state_hash": state.state_hash,
            "last_round": state.last_round,
            "base_version": state.base_version,
        })

    def save_pending(self, payload: bytes) -> None:
        write_bytes(self.path / PENDING, payload)

    def load_pending(self) -> bytes | None:
        p = self.path / PENDING
        return p.read_bytes() if p.exists() else None

    def clear_pending(self) -> None:
        (self.path / PENDING).unlink(missing_ok=True)
