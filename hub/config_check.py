"""``hub config validate``: check a federation configuration or a scenario file and name
every problem at once, each in the words of ``fedsa_common.config.errors``.

A file is a scenario when it has a top-level ``scenario:`` key, otherwise a cloud hub's
``--config``.  A scenario file is a ``ScenarioConfig``, which lives with the scenarios, a
floor above the hub: the hub does not import it, the scenarios package registers its check
under the ``fedsa_edge.config_checks`` entry point (pyproject.toml) and the hub looks it
up when a scenario file comes.  An install without the scenarios package says so instead
of failing on an import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from fedsa_common.config.errors import FieldError, describe_errors
from fedsa_common.federation.config import (
    NUM_LABELS_REQUIRED,
    ConfigError,
    FederationConfig,
    read_yaml,
)

Kind = Literal["federation", "scenario"]
ENTRY_POINTS = "fedsa_edge.config_checks"  # name "scenario": check_data(dict) -> CheckResult


@dataclass(frozen=True)
class CheckResult:
    kind: Kind | None  # None when the file could not be read as a mapping
    errors: tuple[FieldError, ...]
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


Checker = Callable[[dict[str, Any]], CheckResult]


def describe(cfg: FederationConfig) -> str:
    """The one-line description of a valid configuration: algorithm, model, rounds, codec."""
    comp = cfg.fedsa_lora.compression
    comp_text = f"{comp.method} ratio {comp.ratio:g}" if comp.enable else "no compression"
    if comp.downlink.enable:
        down = comp.downlink
        comp_text += (f", downlink deltas {down.method}" +
                      ("" if down.method == "dense" else f" ratio {down.ratio:g}"))
    task = " causal LM" if cfg.model.causal else ""
    return (f"{cfg.fedsa_lora.algorithm} on {cfg.model.path}{task} ({cfg.model.precision}, LoRA "
            f"r={cfg.model.lora.r}), {cfg.rounds} rounds, {comp_text}")


def check_federation(data: dict[str, Any]) -> CheckResult:
    """A cloud hub's ``--config``; never raises for a bad configuration."""
    try:
        cfg = FederationConfig.model_validate(data)
    except ValidationError as err:
        return CheckResult("federation", tuple(describe_errors(FederationConfig, err)))
    if cfg.model.needs_num_labels:
        return CheckResult("federation", (FieldError("model.num_labels", NUM_LABELS_REQUIRED),))
    return CheckResult("federation", (),
                       f"valid federation config {cfg.federation.name!r}: {describe(cfg)}")


def scenario_checker() -> Checker | None:
    """The scenarios package's check of a scenario file, when it is installed."""
    found = entry_points(group=ENTRY_POINTS, name="scenario")
    return next(iter(found)).load() if found else None


def check_data(data: Any, scenario: Checker | None = None) -> CheckResult:
    """Validate parsed YAML (a scenario file with ``scenario``, or the installed scenario
    check when not given); never raises for a bad configuration."""
    if not isinstance(data, dict):
        return CheckResult(None, (FieldError("", "top level must be a mapping"),))
    if "scenario" not in data:
        return check_federation(data)
    check = scenario or scenario_checker()
    if check is None:
        return CheckResult("scenario", (FieldError(
            "scenario", "a scenario file; checking it needs the scenarios package, which "
            "this install does not have"),))
    return check(data)


def check_file(path: Path) -> CheckResult:
    """Validate a YAML file; a missing or unparsable file is one error at ``<root>``."""
    try:
        data = read_yaml(path)
    except ConfigError as err:
        return CheckResult(None, (FieldError("", str(err)),))
    return check_data(data)
