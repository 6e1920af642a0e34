"""Which LoRA tensors a round shares, when the split adapts instead of following a fixed rule.

FedSA-LoRA shares every A and keeps every B.  Two alternatives from the plan:

- ``layer_wise``: a configured policy per layer range (e.g. lower layers share A and B,
  upper layers share A only), fixed for the whole run.
- ``importance_based``: devices report a per-tensor importance (mean squared gradient of the
  LoRA tensor on their data, a diagonal-Fisher proxy) with their updates; the cloud shares,
  for the next round, the tensors whose importance is *consistent* across devices (they
  learn something every device needs) and keeps divergent ones local (they personalize).

Consistency of a tensor is one minus the coefficient of variation of its normalized
importance across devices.  Importances are normalized per device *and per role*, because
A and B gradients live on different scales (B starts at zero, so A's first gradients are
zero) and a device that trained on more data has larger gradients everywhere: only the
share of a device's attention that a tensor gets is compared across devices.

Pure functions; the cloud calls them between rounds and announces the result.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from fedsa_common.split import role

_LAYER = re.compile(r"\.layer\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The transformer layer index in a wire name (``...encoder.layer.3.attention...``)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def lora_names(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if role(n) in ("lora_A", "lora_B"))


def layer_wise_shared(names: Iterable[str], rules: Sequence[tuple[int, int, frozenset[str]]],
                      default: frozenset[str] = frozenset({"lora_A"})) -> list[str]:
    """Shared tensors under a per-layer policy.

    ``rules`` are (first_layer, last_layer inclusive, roles shared there); the first rule
    that covers a layer wins, layers no rule covers share ``default`` (FedSA's A only).
    """
    shared = []
    for name in lora_names(names):
        layer = layer_of(name)
        roles = default
        for first, last, rule_roles in rules:
            if layer is not None and first <= layer <= last:
                roles = rule_roles
                break
        if role(name) in roles:
            shared.append(name)
    return shared


def normalize_importance(scores: Mapping[str, float]) -> dict[str, float]:
    """Each tensor's share of its role's total importance on one device (0 where the role's
    total is zero or not finite)."""
    totals: dict[str, float] = {}
    for name, value in scores.items():
        if math.isfinite(value) and value >= 0:
            totals[role(name)] = totals.get(role(name), 0.0) + value
    out = {}
    for name, value in scores.items():
        total = totals.get(role(name), 0.0)
        ok = math.isfinite(value) and value >= 0 and total > 0
        out[name] = value / total if ok else 0.0
    return out


def consistency(reports: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per tensor, ``1 - std/mean`` of its normalized importance over the devices that
    reported it, clipped to [0, 1]; a tensor every device ignores (mean 0) scores 0."""
    normalized = [normalize_importance(r) for r in reports]
    names = sorted({n for r in normalized for n in r})
    out = {}
    for name in names:
        values = [r[name] for r in normalized if name in r]
        mean = sum(values) / len(values)
        if mean <= 0:
            out[name] = 0.0
            continue
        var = sum((v - mean) ** 2 for v in values) / len(values)
        out[name] = min(1.0, max(0.0, 1.0 - math.sqrt(var) / mean))
    return out


def importance_based_shared(reports: Sequence[Mapping[str, float]], candidates: Iterable[str],
                            threshold: float, current: Sequence[str]) -> list[str]:
    """The next round's shared tensors: candidates whose consistency reaches ``threshold``.

    Fewer than two reports carry no evidence of agreement, so the current split stays.
    """
    candidates = lora_names(candidates)
    if len(reports) < 2:
        return sorted(current)
    scores = consistency(reports)
    return [n for n in candidates if scores.get(n, 0.0) >= threshold]
