"""``--set KEY=VALUE`` overrides of a scenario file (pure; no I/O).

One scenario file then serves several variants of the same experiment, e.g. the malicious
scenario under each aggregation rule:
``scenarios run scenarios/malicious.yaml --set round_policy.aggregation.rule=median``.
KEY is a dotted path into the YAML mapping (missing mappings are created); VALUE is parsed
as YAML, so ``0.2``, ``null``, ``[a, b]`` and ``{x: 1}`` keep their types.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from fedsa_common.federation.config import ConfigError, yaml_where


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, "
                          "e.g. round_policy.aggregation.rule=median")
    try:
        return path, yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML{yaml_where(err)}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with every override applied in order."""
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not a mapping")
            node = child
        node[path[-1]] = value
    return out
