"""The federation configuration: one validated schema shared by the cloud hub and scenarios.

The cloud hub owns this configuration and broadcasts it inside every round announcement,
so devices and regional hubs never need a copy of their own that could drift.  The shape
follows the seed plan's ``fedsa_lora:`` block.  Unknown keys are errors so a typo never
silently falls back to a default.

The sections are defined in ``fedsa_common.config.sections`` (a leaf, so that the
cross-field checks run here can read them without importing this module) and re-exported
here: import configuration types from this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from fedsa_common.config.adaptive import adaptive_conflicts
from fedsa_common.config.errors import FieldError, describe_errors
from fedsa_common.config.sections import (
    AdaptiveSplitSection,
    AggregationSection,
    Algorithm,
    CodecSection,
    CompressionSection,
    DifferentialPrivacySection,
    DownlinkSection,
    FederationSection,
    FedsaLoraSection,
    LayerRule,
    LoraInit,
    LoraSection,
    ModelSection,
    PersonalizationSection,
    Precision,
    PrivacySection,
    RoundPolicySection,
    SamplingSection,
    SecureAggregationSection,
    ServerOptimizerSection,
    Strict,
    Task,
    TrainingSection,
    TransportSection,
)
from fedsa_common.config.shards import intake_conflicts
from fedsa_common.privacy.dp import config_conflicts
from fedsa_common.privacy.secagg.config_check import secagg_conflicts
from fedsa_common.wire.errors import UserError, WireError
from fedsa_common.wire.protocol import AnnounceHeader

__all__ = [
    "AdaptiveSplitSection",
    "AggregationSection",
    "Algorithm",
    "CodecSection",
    "CompressionSection",
    "ConfigError",
    "DifferentialPrivacySection",
    "DownlinkSection",
    "FederationConfig",
    "FederationSection",
    "FedsaLoraSection",
    "LayerRule",
    "LoraInit",
    "LoraSection",
    "ModelSection",
    "PersonalizationSection",
    "Precision",
    "PrivacySection",
    "RoundPolicySection",
    "SamplingSection",
    "SecureAggregationSection",
    "ServerOptimizerSection",
    "Strict",
    "Task",
    "TrainingSection",
    "TransportSection",
    "announced_config",
    "digest_of",
    "federation_config_from",
    "format_validation_error",
    "load_federation_config",
    "read_yaml",
    "validate_model",
]


# the algorithms whose unset ``training.round_lr_decay`` is 0.9 (measured on the bench suite)
DECAYED_ALGORITHMS = ("fedsa", "fedit", "local")


class FederationConfig(Strict):
    federation: FederationSection = FederationSection()
    model: ModelSection = ModelSection()
    fedsa_lora: FedsaLoraSection = FedsaLoraSection()
    rounds: int = Field(10, ge=1)
    training: TrainingSection = TrainingSection()
    sampling: SamplingSection = SamplingSection()
    round_policy: RoundPolicySection = RoundPolicySection()
    # the server step size, for every server optimizer (see ServerOptimizerSection); unset:
    # ``server_step``'s default
    server_lr: float | None = Field(None, gt=0, allow_inf_nan=False)
    server_optimizer: ServerOptimizerSection = ServerOptimizerSection()
    transport: TransportSection = TransportSection()
    # region -> how many intake processes serve it (hub/intake_worker.py; default 1, one
    # regional hub process): announced with the configuration, so a region's devices know
    # which of its intake processes takes their updates (fedsa_common/wire/shards.py)
    intake_shards: dict[str, int] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _omit_default_server_optimizer(self, handler: SerializerFunctionWrapHandler
                                       ) -> dict[str, Any]:
        """Leave ``server_optimizer`` out at sgd, ``server_lr`` when unset (its default
        depends on the optimizer) and ``intake_shards`` when no region has more than one,
        so that digests stay as they were."""
        data = handler(self)
        if not any(k > 1 for k in data.get("intake_shards", {}).values()):
            data.pop("intake_shards", None)
        if data.get("server_optimizer") == {}:
            del data["server_optimizer"]
        if data.get("server_lr", 0) is None:
            del data["server_lr"]
        return data

    @property
    def server_step(self) -> float:
        """The server learning rate in force: ``server_lr``, or unset 2.0 under ``sgd``
        (FedAvg with a server step of 2 reaches the same accuracy in about half the rounds
        on the bench suite: docs/benchmarks.md, "Choosing the defaults") and 1.0 under the
        others (FedAvgM's momentum already lengthens the step; the adaptive rules want
        1e-2 to 1e-1, which the user sets)."""
        if self.server_lr is not None:
            return self.server_lr
        return 2.0 if self.server_optimizer.name == "sgd" else 1.0

    @property
    def round_lr_decay(self) -> float:
        """The per-round decay of the local learning rates in force: ``training.round_lr_decay``,
        or unset 0.9 under fedsa, fedit and local and 1.0 under ffa.  Under FedSA-LoRA
        each device's B keeps moving with its own data while A is averaged; smaller local
        steps in later rounds let the averaged A settle against every device's B (+2.7
        points on the data-scarce task, +1.7 on sentiment: docs/benchmarks.md, "A per-round
        decay as fedsa's default").  FedIT gains from it on all three bench tasks too
        (+0.7, +1.7, +0.4 over three seeds: "FedIT with the per-round decay"), and so
        does training alone (+1.4, +1.5, +1.3), so a device's own model is measured at its
        best schedule too.  FFA-LoRA, whose B is averaged over a frozen A, loses with it
        (bench-scarce: "One decay rule").  ``training.round_lr_floor`` bounds it from
        below."""
        if self.training.round_lr_decay is not None:
            return self.training.round_lr_decay
        return 0.9 if self.fedsa_lora.algorithm in DECAYED_ALGORITHMS else 1.0

    @property
    def lora_init(self) -> LoraInit:
        """Which LoRA matrix starts random: ``model.lora.init``, or unset ``b_random`` under
        fedsa and ``a_random`` (peft's) under the others.  Under fedsa B stays on the device,
        so with peft's zero B the first steps of every round train B alone (A has no gradient
        while B is zero) and the federation learns slowly; a common seeded B lets the shared A
        learn from the first step (docs/benchmarks.md, "A seeded B").  FFA-LoRA freezes A, so
        it needs a random A; fedit and local keep the init they were measured with."""
        if self.model.lora.init is not None:
            return self.model.lora.init
        return "b_random" if self.fedsa_lora.algorithm == "fedsa" else "a_random"

    @model_validator(mode="after")
    def _lora_init_fits(self) -> FederationConfig:
        """FFA-LoRA freezes A at its starting value: A at zero would leave nothing to train."""
        if self.model.lora.init == "b_random" and self.fedsa_lora.algorithm == "ffa":
            raise ValueError("model.lora.init: b_random starts A at zero, and the ffa "
                             "algorithm freezes A: use a_random with ffa")
        return self

    @model_validator(mode="after")
    def _task_fits(self) -> FederationConfig:
        """A causal language model has no classification head: settings of the head would
        silently do nothing, so they are refused."""
        if not self.model.causal:
            return self
        problems = []
        if self.training.head_lr is not None:
            problems.append("training.head_lr: not used with model.task causal_lm (no "
                            "classification head)")
        for field in ("share_head_rounds", "personal_head"):
            if getattr(self.fedsa_lora.personalization, field) not in (None, False):
                problems.append(f"fedsa_lora.personalization.{field}: not used with "
                                "model.task causal_lm (no classification head)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _intake_shards_fit(self) -> FederationConfig:
        """Several intake processes per region fold partial sums: refuse, naming the field,
        what that cannot do correctly instead of half-supporting it (``intake_conflicts``)."""
        problems = intake_conflicts(self.intake_shards, self.round_policy,
                                    self.fedsa_lora.privacy.secure_aggregation.enable)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def shards_of(self, region: str) -> int:
        """How many intake processes serve ``region`` (1: its regional hub alone)."""
        return self.intake_shards.get(region, 1)

    @model_validator(mode="after")
    def _privacy_fits(self) -> FederationConfig:
        problems = config_conflicts(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _secure_aggregation_fits(self) -> FederationConfig:
        problems = secagg_conflicts(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _adaptive_fits(self) -> FederationConfig:
        problems = adaptive_conflicts(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def digest(self) -> str:
        """Short stable hash, carried in announcements so every party can tell configs apart."""
        return digest_of(self.model_dump(mode="json"))

    def state_digest(self) -> str:
        """Hash of everything but ``rounds``: what the cloud's checkpoint and a device's local
        state (B, head, residual) were made under.  Extending or stopping a federation
        changes ``rounds`` and so ``digest()``, never this, so both are kept across it."""
        return digest_of({k: v for k, v in self.model_dump(mode="json").items() if k != "rounds"})


def digest_of(data: dict[str, Any]) -> str:
    """The digest of a dumped configuration (``FederationConfig.model_dump(mode="json")``)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# A federation config without a label count is fine in a scenario (its data gives the count)
# but not for a cloud hub, which sizes the head from it before any device reports.
NUM_LABELS_REQUIRED = ("required in a cloud hub's --config (scenarios take it from their "
                       "data)")


class ConfigError(ValueError, UserError):
    """A configuration file that does not validate; the message names every bad field."""


def format_validation_error(err: ValidationError, root: type[BaseModel] | None = None,
                            prefix: str = "") -> str:
    """Every error of ``err`` on its own line, worded as ``hub config validate`` words it
    (``root``, the model validated, lets it name the allowed keys and values)."""
    lines = []
    for field in describe_errors(root or BaseModel, err):
        path = ".".join(p for p in (prefix, field.path) if p)
        lines.append(f"  {FieldError(path, field.message, field.allowed)}")
    return "invalid configuration:\n" + "\n".join(lines)


def validate_model(cls: type[BaseModel], data: Any, prefix: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, cls, prefix)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:  # a directory, no permission, not text
        why = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise ConfigError(f"cannot read configuration file {path}: {why}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML{yaml_where(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def yaml_where(err: yaml.YAMLError) -> str:
    """`` at line L, column C: PROBLEM`` for a YAML syntax error: PyYAML's own text spans
    six lines (with a copy of the line and a caret), too long for a one-line error."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return f": {' '.join(str(err).split())}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def federation_config_from(data: dict[str, Any], source: str = "the configuration"
                           ) -> FederationConfig:
    """A cloud hub's configuration from parsed YAML (or the API's dict).  A scenario file
    (top-level ``scenario:``) is refused with how to use it instead: it is the one mistake
    pydantic would word as a bare unknown key, leaving the operator to guess that a
    scenario's body is a cloud configuration minus two sections."""
    if "scenario" in data:
        raise ConfigError(
            f"{source} is a scenario file (it has a top-level scenario: section), not a cloud "
            "hub's configuration: play it with 'scenarios run FILE --out DIR' (which writes "
            "the cloud configuration it derives to DIR/federation.yaml), or delete its "
            "scenario: and tune: sections and set model.num_labels")
    return validate_model(FederationConfig, data)


def load_federation_config(path: Path | None) -> FederationConfig:
    return FederationConfig() if path is None else federation_config_from(read_yaml(path),
                                                                           str(path))


def announced_config(header: AnnounceHeader) -> FederationConfig:
    """The federation configuration an announcement carries, validated; a configuration that
    does not validate is a ``WireError("bad_header")`` like any other bad header field, so a
    hostile announcement is counted and ignored instead of killing the hub or device.  Here
    and not beside the header: the wire floor carries the configuration as a dict."""
    try:
        return FederationConfig.model_validate(header.config)
    except ValidationError as err:
        raise WireError("bad_header", f"announced config: {str(err)[:200]}") from None
