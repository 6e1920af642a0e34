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

Head sharing (``fedsa_lora.personalization.share_head_rounds`` K) is orthogonal: rounds
1..K also share the classification head (``round_shared``), so even a fixed split changes
once, between rounds K and K+1 (``split_changes``).  ``share_b_rounds`` does the same for
FedSA's B matrices (a FedIT warm start before B personalizes).

Pure functions; the cloud calls them between rounds and announces the result.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsa_common.config.sections import WarmField, warm_rounds_of
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role, shared_names, shared_roles

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


def initial_split(names: Iterable[str], algorithm: str,
                  rules: Sequence[tuple[int, int, frozenset[str]]] | None = None) -> list[str]:
    """The first round's shared tensors: the algorithm's fixed split, or with ``rules`` the
    layer-wise split (layers no rule covers keep the algorithm's roles)."""
    names = list(names)
    if rules is None:
        return shared_names(names, algorithm)
    return layer_wise_shared(names, rules, frozenset(shared_roles(algorithm)))


def head_names(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if role(n) == "head")


def _warm(field: WarmField, config: FederationConfig, round_: int) -> bool:
    """Rounds 1..K, and every round (also the final announcement, numbered ``rounds + 1``
    by the cloud) when K >= ``rounds``."""
    k = warm_rounds_of(config, field)
    return k > 0 and (round_ <= k or k >= config.rounds)


def shares_head(config: FederationConfig, round_: int) -> bool:
    """Whether round ``round_`` shares the head (``share_head_rounds``)."""
    return _warm("share_head_rounds", config, round_)


def shares_b(config: FederationConfig, round_: int) -> bool:
    """Whether round ``round_`` shares every LoRA B (``share_b_rounds``)."""
    return _warm("share_b_rounds", config, round_)


def b_names(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if role(n) == "lora_B")


def round_shared(names: Iterable[str], config: FederationConfig, round_: int) -> list[str]:
    """The shared tensors of round ``round_`` under a split that does not depend on the
    devices' reports (fixed or layer-wise), with the head while ``shares_head``."""
    names = list(names)
    section = config.fedsa_lora.adaptive_split
    rules = section.rules() if section.adaptive and section.strategy == "layer_wise" else None
    shared = initial_split(names, config.fedsa_lora.algorithm, rules)
    if shares_head(config, round_):
        shared = sorted({*shared, *head_names(names)})
    if shares_b(config, round_):
        shared = sorted({*shared, *b_names(names)})
    return shared


def split_changes(config: FederationConfig) -> bool:
    """Whether the shared set can differ between rounds (an update then belongs to the round
    it was made for)."""
    return (config.fedsa_lora.adaptive_split.importance_based
            or any(0 < warm_rounds_of(config, f) < config.rounds
                   for f in ("share_head_rounds", "share_b_rounds")))


def decide_shared(stats: ImportanceStats, candidates: Iterable[str], threshold: float,
                  current: Sequence[str]) -> list[str]:
    """``importance_based_shared`` over a round's aggregated reports (see ImportanceStats);
    an empty decision (no candidate consistent enough) keeps the current split, so a round
    always has something to aggregate."""
    candidates = lora_names(candidates)
    if stats.reports < 2:
        return sorted(current)
    scores = stats.consistency()
    shared = [n for n in candidates if scores.get(n, 0.0) >= threshold]
    return shared or sorted(current)


@dataclass
class ImportanceStats:
    """Importance reports summed so that regions can pre-aggregate them, like the deltas.

    Per tensor: how many reports named it, and the sum and sum of squares of its normalized
    importance (``normalize_importance``); ``consistency`` from these equals
    ``consistency(reports)``.  A region's summary is one row per tensor, however many
    devices reported.
    """

    reports: int = 0
    rows: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    def add_report(self, scores: Mapping[str, float]) -> None:
        self.reports += 1
        for name, value in normalize_importance(scores).items():
            n, s, ss = self.rows.get(name, (0, 0.0, 0.0))
            self.rows[name] = (n + 1, s + value, ss + value * value)

    def merge(self, other: ImportanceStats) -> None:
        self.reports += other.reports
        for name, (n2, s2, ss2) in other.rows.items():
            n, s, ss = self.rows.get(name, (0, 0.0, 0.0))
            self.rows[name] = (n + n2, s + s2, ss + ss2)

    def consistency(self) -> dict[str, float]:
        out = {}
        for name, (n, s, ss) in sorted(self.rows.items()):
            mean = s / n if n else 0.0
            if mean <= 0:
                out[name] = 0.0
                continue
            var = max(0.0, ss / n - mean * mean)
            out[name] = min(1.0, max(0.0, 1.0 - math.sqrt(var) / mean))
        return out

    def to_json(self) -> dict[str, Any]:
        """The wire and state form (``PartialHeader.importance``, persisted intakes)."""
        return {"reports": self.reports, "tensors": {k: list(v) for k, v in self.rows.items()}}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ImportanceStats:
        rows = raw.get("tensors", {})
        return cls(int(raw.get("reports", 0)),
                   {str(k): (int(v[0]), float(v[1]), float(v[2])) for k, v in rows.items()})
