"""``hub config validate``: check a federation configuration or a scenario file and name
every problem at once.

Pydantic already knows every error; this module turns each into one line an operator can
act on: the dotted field path, what is wrong, what was given, and, where the schema fixes
the choices (a literal, or the keys of a section), what is allowed.  A file is a scenario
when it has a top-level ``scenario:`` key, otherwise a cloud hub's ``--config``.

It lives with the scenarios, the top floor, because a scenario file is a ``ScenarioConfig``;
the hub's CLI imports it when that command starts (the one import from ``hub`` upwards).
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from edge_client.data.spec import DataSpec
from fedsa_common.config import NUM_LABELS_REQUIRED, ConfigError, FederationConfig, read_yaml
from scenarios.config import ScenarioConfig
from scenarios.tune_space import search_space

Kind = Literal["federation", "scenario"]


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str
    allowed: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.path or '<root>'}: {self.message}"
        return f"{text}; allowed: {', '.join(self.allowed)}" if self.allowed else text


@dataclass(frozen=True)
class CheckResult:
    kind: Kind | None  # None when the file could not be read as a mapping
    errors: tuple[FieldError, ...]
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


def _unwrap(ann: Any) -> list[Any]:
    """The members of an Optional/Union annotation (itself otherwise)."""
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        return [a for a in typing.get_args(ann) if a is not type(None)]
    return [ann]


def _virtual_models() -> dict[tuple[str, ...], type[BaseModel]]:
    """Free-form dict fields that are validated against a model in a validator."""
    return {("scenario", "data"): DataSpec}


def annotation_at(root: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The annotation of the field at ``loc`` below ``root`` (None when it cannot tell)."""
    virtual = _virtual_models()
    ann: Any = root
    for depth, key in enumerate(loc):
        nxt = None
        for member in _unwrap(ann):
            origin = typing.get_origin(member)
            if isinstance(member, type) and issubclass(member, BaseModel):
                field = member.model_fields.get(str(key))
                if field is not None:
                    nxt = virtual.get(tuple(map(str, loc[: depth + 1])), field.annotation)
            elif origin is dict:
                nxt = typing.get_args(member)[1]
            elif origin is list:
                nxt = typing.get_args(member)[0]
            if nxt is not None:
                break
        if nxt is None:
            return None
        ann = nxt
    return ann


def allowed_values(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[str, ...]:
    """Literal or enum choices of the field at ``loc``, else ()."""
    for member in _unwrap(annotation_at(root, loc)):
        if typing.get_origin(member) is Literal:
            return tuple(str(a) for a in typing.get_args(member))
        if isinstance(member, type) and issubclass(member, enum.Enum):
            return tuple(str(m.value) for m in member)
    return ()


def allowed_keys(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[str, ...]:
    """The field names of the section at ``loc`` (a model), else ()."""
    for member in _unwrap(annotation_at(root, loc) if loc else root):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return tuple(member.model_fields)
    return ()


def describe_errors(root: type[BaseModel], err: ValidationError) -> list[FieldError]:
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        msg = str(e["msg"]).removeprefix("Value error, ")
        allowed: tuple[str, ...] = ()
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            allowed = allowed_keys(root, loc[:-1])
        elif e["type"] in ("literal_error", "enum"):
            msg = f"got {e.get('input')!r}"
            allowed = allowed_values(root, loc) or (e.get("ctx") or {}).get("expected", ())
            if isinstance(allowed, str):
                allowed = (allowed,)
        elif e["type"] == "missing":
            msg = "required"
        elif ("input" in e and not isinstance(e["input"], dict | list)
              and repr(e["input"]) not in msg):
            msg = f"{msg} (got {e['input']!r})"
        out.append(FieldError(path, msg, tuple(allowed)))
    return out


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
        return CheckResult(kind, tuple(describe_errors(cls, err)))
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
