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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

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


_TUNABLE_CODECS = ("topk", "randk")
_OPTION_DEFAULTS: dict[str, Any] = {"values": None, "block_size": None, "zstd": False}


class CompressionSection(Strict):
    """How devices compress their A-deltas; announced by the cloud, enforced by regional hubs.

    ``method``: ``topk_int8`` (the original codec and the default), ``topk`` (largest
    magnitudes, indices as delta-varint or bitmap), ``randk`` (positions from a seed shared
    by the round, so no indices travel) or ``dense`` (lossless fp32).  ``values`` (fp32,
    fp16, int8, int4; default int8), ``block_size`` (one scale per block of that many sent
    values instead of one per tensor; int8/int4) and ``zstd`` (compress the whole body)
    apply to ``topk`` and ``randk`` only.
    """

    enable: bool = True
    method: str = "topk_int8"
    ratio: float = Field(0.1, gt=0.0, le=1.0)
    values: Literal["fp32", "fp16", "int8", "int4"] | None = None
    block_size: int | None = Field(None, ge=1, le=1_048_576)
    zstd: bool = False

    @field_validator("method")
    @classmethod
    def _known_codec(cls, v: str) -> str:
        from quant.codec import CODECS

        if v not in CODECS:
            raise ValueError(f"unknown codec {v!r}; allowed: {', '.join(CODECS)}")
        return v

    @model_validator(mode="after")
    def _options_fit_method(self) -> CompressionSection:
        if self.method not in _TUNABLE_CODECS:
            given = [k for k, default in _OPTION_DEFAULTS.items() if getattr(self, k) != default]
            if given:
                raise ValueError(f"{', '.join(given)}: only for method topk or randk, "
                                 f"not {self.method}")
        if self.block_size is not None and self.value_format not in ("int8", "int4"):
            raise ValueError(f"block_size: only for int8/int4 values, not {self.value_format}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_options(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave options at their defaults out of dumps, so a configuration that does not
        use them dumps (and digests) exactly as before they existed: checkpoints still
        resume and finished bench runs are still reused."""
        data = handler(self)
        for key, default in _OPTION_DEFAULTS.items():
            if key in data and data[key] == default:
                del data[key]
        return data

    @property
    def value_format(self) -> str:
        return self.values or "int8"

    @property
    def codec(self) -> str:
        return self.method if self.enable else "dense"

    @property
    def codec_params(self) -> dict[str, Any]:
        """The codec's parameters without the per-round seed (see ``round_codec_params``)."""
        if self.codec == "dense":
            return {}
        if self.codec == "topk_int8":
            return {"ratio": self.ratio}
        return {"ratio": self.ratio, "values": self.value_format,
                "block_size": self.block_size, "zstd": self.zstd}

    def round_codec_params(self, federation_seed: int, round_: int) -> dict[str, Any]:
        """What a device sends in round ``round_`` and the hub expects: ``codec_params``
        plus, for randk, the round's shared seed."""
        from quant.codec import round_codec_params

        return round_codec_params(self.codec, self.codec_params, federation_seed, round_)


def refuse_placeholder(field: str, enable: bool) -> bool:
    """Refuse ``enable: true`` for a placeholder section.

    The plan names these sections, so configurations may carry them, but nothing uses
    them yet: accepting ``enable: true`` would promise a protection that does not exist.
    """
    if enable:
        raise ValueError(f"not implemented yet: {field} cannot be enabled in this version; "
                         "remove it or set enable: false")
    return enable


class AdaptiveSplitSection(Strict):
    """Placeholder for the plan's adaptive A/B split; enabling it is an error."""

    enable: bool = False
    strategy: Literal["fixed", "importance_based", "layer_wise"] = "fixed"
    threshold: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("enable")
    @classmethod
    def _placeholder(cls, v: bool) -> bool:
        return refuse_placeholder("fedsa_lora.adaptive_split", v)


class DifferentialPrivacySection(Strict):
    """Placeholder for the plan's differential privacy; enabling it is an error."""

    enable: bool = False
    epsilon: float = Field(8.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)

    @field_validator("enable")
    @classmethod
    def _placeholder(cls, v: bool) -> bool:
        return refuse_placeholder("fedsa_lora.privacy.differential_privacy", v)


class PrivacySection(Strict):
    differential_privacy: DifferentialPrivacySection = DifferentialPrivacySection()


class FedsaLoraSection(Strict):
    algorithm: Algorithm = "fedsa"
    compression: CompressionSection = CompressionSection()
    # Placeholders (validated, refused when enabled) are left out of dumps, so they change
    # neither the config digest, checkpoints and bench reuse, nor what devices receive.
    adaptive_split: AdaptiveSplitSection = Field(AdaptiveSplitSection(), exclude=True)
    privacy: PrivacySection = Field(PrivacySection(), exclude=True)


class TrainingSection(Strict):
    local_steps: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0)
    head_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_batch_size: int = Field(64, ge=1)
    # Forward-pass compute precision on devices: fp32, or bf16 autocast where the CPU has
    # bf16 instructions (elsewhere devices warn and stay in fp32).
    autocast: Literal["none", "bf16"] = "none"


class SamplingSection(Strict):
    clients_per_round: int | None = Field(None, ge=1)
    min_clients: int = Field(1, ge=1)
    wait_for_clients_s: float = Field(600.0, gt=0)


class RoundPolicySection(Strict):
    """How a round opens and closes, and what happens to updates that miss it.

    ``sync``: a round closes when every selected device reported (or, with over-selection,
    when ``clients_per_round`` updates arrived) or at the deadline.  ``async`` (FedBuff):
    the cloud applies a server step whenever ``buffer_size`` updates are buffered, weighting
    an update ``tau`` versions old by 1/sqrt(1+tau) and discarding those older than
    ``max_staleness``.  ``late: stale_weight`` applies that same weighting to a synchronous
    round's late updates instead of dropping them.
    """

    mode: Literal["sync", "async"] = "sync"
    deadline_s: float = Field(300.0, gt=0)
    min_quorum: int = Field(1, ge=1)
    over_select: float = Field(1.0, ge=1.0, le=10.0)
    late: Literal["drop", "stale_weight"] = "drop"
    max_staleness: int = Field(4, ge=0)
    buffer_size: int = Field(4, ge=1)
    resend_s: float = Field(5.0, gt=0)
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
