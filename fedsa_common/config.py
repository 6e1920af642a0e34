"""The federation configuration: one validated schema shared by the cloud hub and scenarios.

The cloud hub owns this configuration and broadcasts it inside every round announcement,
so devices and regional hubs never need a copy of their own that could drift.  The shape
follows the seed plan's ``fedsa_lora:`` block.  Unknown keys are errors so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Algorithm = Literal["fedsa", "fedit", "ffa", "local"]
Precision = Literal["nf4", "fp4", "int8", "fp16", "bf16", "fp32"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FederationSection(Strict):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    seed: int = 0


class LoraSection(Strict):
    r: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)


class ModelSection(Strict):
    path: str = "minilm"
    precision: Precision = "nf4"
    max_length: int = Field(128, ge=8, le=4096)
    num_labels: int | None = Field(None, ge=2)
    lora: LoraSection = LoraSection()


class CompressionSection(Strict):
    enable: bool = True
    method: str = "topk_int8"
    ratio: float = Field(0.1, gt=0.0, le=1.0)

    @field_validator("method")
    @classmethod
    def _known_codec(cls, v: str) -> str:
        from quant.codec import CODECS

        if v not in CODECS:
            raise ValueError(f"unknown codec {v!r}; allowed: {', '.join(CODECS)}")
        return v

    @property
    def codec(self) -> str:
        return self.method if self.enable else "dense"

    @property
    def codec_params(self) -> dict[str, Any]:
        return {"ratio": self.ratio} if self.enable and self.method != "dense" else {}


class FedsaLoraSection(Strict):
    algorithm: Algorithm = "fedsa"
    compression: CompressionSection = CompressionSection()


class TrainingSection(Strict):
    local_steps: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0)
    head_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_batch_size: int = Field(64, ge=1)


class SamplingSection(Strict):
    clients_per_round: int | None = Field(None, ge=1)
    min_clients: int = Field(1, ge=1)
    wait_for_clients_s: float = Field(600.0, gt=0)


class RoundPolicySection(Strict):
    deadline_s: float = Field(300.0, gt=0)
    min_quorum: int = Field(1, ge=1)
    max_update_norm: float | None = Field(None, gt=0)
    max_samples_per_update: int = Field(1_000_000, ge=1)


class TransportSection(Strict):
    payload_limit: int = Field(1_000_000, ge=4096)
    max_message_bytes: int = Field(16_000_000, ge=4096)


class FederationConfig(Strict):
    federation: FederationSection = FederationSection()
    model: ModelSection = ModelSection()
    fedsa_lora: FedsaLoraSection = FedsaLoraSection()
    rounds: int = Field(10, ge=1)
    training: TrainingSection = TrainingSection()
    sampling: SamplingSection = SamplingSection()
    round_policy: RoundPolicySection = RoundPolicySection()
    server_lr: float = Field(1.0, gt=0)
    transport: TransportSection = TransportSection()

    def digest(self) -> str:
        """Short stable hash, carried in announcements so every party can tell configs apart."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class ConfigError(ValueError):
    """A configuration file that does not validate; the message names every bad field."""


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        lines.append(f"  {path or '<root>'}: {e['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def validate_model(cls: type[BaseModel], data: Any, prefix: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_federation_config(path: Path | None) -> FederationConfig:
    return FederationConfig() if path is None else validate_model(FederationConfig, read_yaml(path))
