"""``hub config validate``: check a federation configuration or a scenario file and name
every problem at once.

Each error is one line in the words of ``fedsa_common.config_errors`` (the words every
configuration error of the kit uses).  A file is a scenario when it has a top-level
``scenario:`` key, otherwise a cloud hub's ``--config``.

It lives with the scenarios, the top floor, because a scenario file is a ``ScenarioConfig``;
the hub's CLI imports it when that command starts (the one import from ``hub`` upwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from edge_client.data.spec import DataSpec
from fedsa_common.config import NUM_LABELS_REQUIRED, ConfigError, FederationConfig, read_yaml
from fedsa_common.config_errors import FieldError, describe_errors
from scenarios.config import ScenarioConfig
from scenarios.tune_space import search_space

Kind = Literal["federation", "scenario"]


@dataclass(frozen=True)
class CheckResult:
    kind: Kind | None  # None when the file could not be read as a mapping
    errors: tuple[FieldError, ...]
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


# A scenario's ``data:`` is a free-form dict that a validator checks against DataSpec.
_VIRTUAL = {("scenario", "data"): DataSpec}


def _summary(kind: Kind, cfg: FederationConfig) -> str:
    comp = cfg.fedsa_lora.compression
    comp_text = f"{comp.method} ratio {comp.ratio:g}" if comp.enable else "no compression"
    if comp.downlink.enable:
        down = comp.downlink
        comp_text += (f", downlink deltas {down.method}" +
                      ("" if down.method == "dense" else f" ratio {down.ratio:g}"))
    head = (f"{cfg.fedsa_lora.algorithm} on {cfg.model.path} ({cfg.model.precision}, LoRA "
            f"r={cfg.model.lora.r}), {cfg.rounds} rounds, {comp_text}")
    if kind == "scenario":
        sc = cfg.scenario  # type: ignore[attr-defined]
        tune = " with a tune: section" if cfg.tune is not None else ""  # type: ignore[attr-defined]
        return (f"valid scenario {sc.name!r}: {head}; {sc.topology.num_devices} devices in "
                f"{len(sc.topology.regions)} regions{tune}")
    return f"valid federation config {cfg.federation.name!r}: {head}"


def check_data(data: Any) -> CheckResult:
    """Validate parsed YAML; never raises for a bad configuration."""
    if not isinstance(data, dict):
        return CheckResult(None, (FieldError("", "top level must be a mapping"),))
    kind: Kind = "scenario" if "scenario" in data else "federation"
    cls: type[FederationConfig] = ScenarioConfig if kind == "scenario" else FederationConfig
    try:
        cfg = cls.model_validate(data)
    except ValidationError as err:
        return CheckResult(kind, tuple(describe_errors(cls, err, _VIRTUAL)))
    if kind == "scenario":
        try:
            search_space(cfg)  # type: ignore[arg-type]
        except ConfigError as err:
            path, _, msg = str(err).partition(": ")
            return CheckResult(kind, (FieldError(path, msg),))
    elif cfg.model.num_labels is None:
        return CheckResult(kind, (FieldError("model.num_labels", NUM_LABELS_REQUIRED),))
    return CheckResult(kind, (), _summary(kind, cfg))


def check_file(path: Path) -> CheckResult:
    """Validate a YAML file; a missing or unparsable file is one error at ``<root>``."""
    try:
        data = read_yaml(path)
    except ConfigError as err:
        return CheckResult(None, (FieldError("", str(err)),))
    return check_data(data)
