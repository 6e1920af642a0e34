"""Pydantic's validation errors as lines an operator can act on.

Pydantic already knows every error; this turns each into one line: the dotted field path,
what is wrong, what was given, and, where the schema fixes the choices (a literal, an
enum, or the keys of a section), what is allowed.  Every configuration error of the kit
goes through here, so ``hub serve --config`` words a bad field exactly as ``hub config
validate`` does.  Pure functions over the schema and the error; no I/O.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

# Free-form dict fields that a validator checks against a model: (field path) -> model.
VirtualModels = Mapping[tuple[str, ...], type[BaseModel]]


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str
    allowed: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.path or '<root>'}: {self.message}"
        return f"{text}; allowed: {', '.join(self.allowed)}" if self.allowed else text


def _unwrap(ann: Any) -> list[Any]:
    """The members of an Optional/Union annotation (itself otherwise)."""
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        return [a for a in typing.get_args(ann) if a is not type(None)]
    return [ann]


def annotation_at(root: type[BaseModel], loc: Sequence[str | int],
                  virtual: VirtualModels | None = None) -> Any:
    """The annotation of the field at ``loc`` below ``root`` (None when it cannot tell)."""
    virtual = virtual or {}
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


def allowed_values(root: type[BaseModel], loc: Sequence[str | int],
                   virtual: VirtualModels | None = None) -> tuple[str, ...]:
    """Literal or enum choices of the field at ``loc``, else ()."""
    for member in _unwrap(annotation_at(root, loc, virtual)):
        if typing.get_origin(member) is Literal:
            return tuple(str(a) for a in typing.get_args(member))
        if isinstance(member, type) and issubclass(member, enum.Enum):
            return tuple(str(m.value) for m in member)
    return ()


def allowed_keys(root: type[BaseModel], loc: Sequence[str | int],
                 virtual: VirtualModels | None = None) -> tuple[str, ...]:
    """The field names of the section at ``loc`` (a model), else ()."""
    for member in _unwrap(annotation_at(root, loc, virtual) if loc else root):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return tuple(member.model_fields)
    return ()


def describe_errors(root: type[BaseModel], err: ValidationError,
                    virtual: VirtualModels | None = None) -> list[FieldError]:
    """One ``FieldError`` per error of ``err``, raised validating data against ``root``."""
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        msg = str(e["msg"]).removeprefix("Value error, ")
        allowed: tuple[str, ...] = ()
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            allowed = allowed_keys(root, loc[:-1], virtual)
        elif e["type"] in ("literal_error", "enum"):
            msg = f"got {e.get('input')!r}"
            allowed = allowed_values(root, loc, virtual) or (e.get("ctx") or {}).get(
                "expected", ())
            if isinstance(allowed, str):
                allowed = (allowed,)
        elif e["type"] == "missing":
            msg = "required"
        elif ("input" in e and not isinstance(e["input"], dict | list)
              and repr(e["input"]) not in msg):
            msg = f"{msg} (got {e['input']!r})"
        out.append(FieldError(path, msg, tuple(allowed)))
    return out
