"""One streaming aggregation interface for the hubs (pure tensor code, no I/O).

Why: a region's intake used to carry one optional field and one ``if`` per feature (norm
bound, clipping, similarity weighting, differential privacy, robust rules, importance
reports, secure aggregation), in every method that takes, forwards or persists updates.
Here, as in NVIDIA FLARE's ``Aggregator.accept``/``aggregate`` and Flower's one class per
strategy (where DP wraps a strategy; here it is a step), an update passes a list of
*admission steps* and is then accepted by *one aggregator*; a feature is a step or an
aggregator, and the intake runs whatever it was given without knowing which features
are on:

- ``AdmissionStep.admit(update) -> update``: refuses (``WireError``) or changes the delta,
  its weight or what else travels with it.  The round policy's own steps (``policy_steps``:
  ``ValueBound``, ``NormBound``, ``ClipNorm``) are rebuilt from the persisted policy; the
  configured ones (``ImportanceReports`` here, ``hub.similarity.SimilarityWeighting``,
  ``hub.privacy.IntakeDp``) have a state ``key`` and persist themselves under it.
- ``Aggregator``: ``accept(update)`` folds one admitted update in, ``result()`` is what the
  region forwards (an ``Aggregate``: sums, weight, count, ids, importance), and
  ``to_state(tag)``/``from_state`` save and restore it inside the intake's state (one per
  base version, under ``tag``).  The rule registry (``aggregator_class``) maps
  ``round_policy.aggregation.rule`` to ``RunningMean`` (mean) or ``KeptUpdates`` (median,
  trimmed mean); ``SecureSum`` is a secure round's aggregator, built by the region's
  secure-aggregation driver around that round's protocol server.

The aggregators' sums are ``sum_i w_i delta_i`` (or a robust rule's stand-in for it:
``estimate x count``, each update weighing 1), so ``sums / weight`` is the region's
estimate whichever rule it used; the cloud's intake (hub/cloud_intake.py) merges them into
one running sum, and under a robust rule also keeps each region's estimate to combine them
robustly.  No aggregator lets its float32 result overflow: an update that could make it
non-finite is refused (``overflow``), so one device cannot make the cloud refuse its
region's partial.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import torch

from fedsa_common.federation.adaptive_split import ImportanceStats
from fedsa_common.federation.config import AggregationSection, RoundPolicySection
from fedsa_common.privacy.secagg.messages import MaskedInput
from fedsa_common.privacy.secagg.protocol import AggregateResult, SecAggServer
from fedsa_common.privacy.secagg.vector import scatter
from fedsa_common.wire.codecs.layout import flat_of
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import UpdateHeader
from hub.aggregation import RunningSum, l2_norm
from hub.robust import clip_to_norm, robust_aggregate

Shapes = Mapping[str, tuple[int, ...]]

# what a forwarded partial's values must stay below: float32's largest finite value, with
# a margin for the float64 -> float32 rounding of the sum
FLOAT32_LIMIT = float(torch.finfo(torch.float32).max) / 2


def max_abs(delta: Mapping[str, torch.Tensor]) -> float:
    """The largest absolute value in ``delta`` (0 for no values; inf or nan propagate)."""
    flat = flat_of(delta)  # a decoded update: one reduction instead of one per tensor
    if flat is not None:
        return float(flat.abs().max()) if flat.numel() else 0.0
    peaks = [float(t.abs().max()) for t in delta.values() if t.numel()]
    return max(peaks, default=0.0)


# ---------------------------------------------------------------------------- updates
@dataclass(frozen=True)
class Update:
    """One device's update on its way through admission to an aggregator."""

    header: UpdateHeader  # the message it came in
    delta: dict[str, torch.Tensor]  # decoded (a secure round: the masked words, ``y``)
    weight: float  # its weight in the mean: the sample count until a step changes it
    factor: float = 1.0  # what weighting steps multiplied the sample count by (for the log)
    report: Mapping[str, float] | None = None  # importance report, once a step admitted it
    # adaptive clipping (``hub.privacy.IntakeDp``): whether it was within the round's clip
    unclipped: bool | None = None

    @property
    def id(self) -> str:
        return self.header.update_id


@dataclass
class Aggregate:
    """What an aggregator forwards: a region's partial before it gets its header."""

    sums: dict[str, torch.Tensor]  # float32: sum_i w_i delta_i, or a rule's stand-in for it
    weight: float
    count: int
    ids: list[str]  # the updates in it
    importance: dict[str, Any] | None = None  # summed importance reports (wire form), if any
    unclipped: int | None = None  # adaptive clipping: how many updates were within the clip


# ---------------------------------------------------------------------------- admission
class AdmissionStep(Protocol):
    """One check or change of an update before it reaches the aggregator."""

    def admit(self, update: Update) -> Update:
        """The update as the next step sees it; raises ``WireError`` to refuse it."""
        ...


class StatefulStep(AdmissionStep, Protocol):
    """A configured step that the intake persists under ``key``."""

    key: ClassVar[str]

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]: ...


class StepKind(Protocol):
    """A configured step's class, as the intake restores it from its state."""

    def from_state(self, meta: Any, tensors: Mapping[str, torch.Tensor]) -> StatefulStep: ...


@dataclass(frozen=True)
class ValueBound:
    """``round_policy.max_update_value`` (always set): refuses an update with a value beyond
    the bound.  The first step: a value like 3e38 is finite, passes a norm taken in float64,
    and would overflow the region's float32 partial once weighted by its sample count."""

    bound: float

    def admit(self, update: Update) -> Update:
        peak = max_abs(update.delta)
        if not peak <= self.bound:
            raise WireError("value_bound", f"{peak:.3g} > {self.bound:g}")
        return update


@dataclass(frozen=True)
class NormBound:
    """``round_policy.max_update_norm``: refuses an update longer than the bound (the first
    step, so the bound applies to what the device sent)."""

    bound: float

    def admit(self, update: Update) -> Update:
        norm = l2_norm(update.delta)
        if norm > self.bound:
            raise WireError("norm_bound", f"{norm:.3g} > {self.bound}")
        return update


@dataclass(frozen=True)
class ClipNorm:
    """``round_policy.aggregation.clip_norm``: scales a longer update down to the bound
    (``hub.robust.clip_to_norm``), for every rule."""

    bound: float

    def admit(self, update: Update) -> Update:
        return replace(update, delta=clip_to_norm(update.delta, self.bound))


@dataclass(frozen=True)
class ImportanceReports:
    """Admits the device's importance report (adaptive split, ``importance_based``).

    Without this step reports are dropped, so a device cannot make its region forward
    reports nobody asked for.  Its state is empty; in the intake's state its key also holds
    the groups' summed reports (each group writes its own under its base version)."""

    key: ClassVar[str] = "importance"

    def admit(self, update: Update) -> Update:
        return replace(update, report=update.header.importance)

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
                   ) -> ImportanceReports:
        return cls()


def policy_steps(policy: RoundPolicySection) -> list[AdmissionStep]:
    """The round policy's own steps, in the order they run: value bound, norm bound, then
    clipping."""
    steps: list[AdmissionStep] = [ValueBound(policy.max_update_value)]
    if policy.max_update_norm is not None:
        steps.append(NormBound(policy.max_update_norm))
    if policy.aggregation.clip_norm is not None:
        steps.append(ClipNorm(policy.aggregation.clip_norm))
    return steps


# ---------------------------------------------------------------------------- aggregators
class Aggregator(ABC):
    """Accepts admitted updates one at a time and forwards their aggregate."""

    name: ClassVar[str]
    # False for a rule that judges the round's cohort as a whole: an update accepted after
    # the region's final partial would travel alone and bypass it, so it is refused as late
    after_final: ClassVar[bool] = True

    @abstractmethod
    def accept(self, update: Update) -> None:
        """Fold one admitted update in (``WireError("duplicate")`` for one already in)."""

    @abstractmethod
    def result(self) -> Aggregate:
        """The partial to forward (an empty aggregate before any update)."""

    @abstractmethod
    def to_state(self, tag: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``({section: value}, tensors)``: the intake stores each value as
        ``state[section][tag]``; tensor names carry ``tag`` themselves."""


class RunningMean(Aggregator):
    """The weighted running sum (FedAvg): one model in memory however many updates, and
    exactly flat FedAvg once the cloud divides (``hub.aggregation``)."""

    name = "mean"

    def __init__(self, shapes: Shapes, aggregation: AggregationSection) -> None:
        self.total = RunningSum.zeros(shapes)
        self.ids: list[str] = []
        self.reports = ImportanceStats()
        self.unclipped: int | None = None  # counted once an update says (adaptive clipping)
        self.bound = 0.0  # at least max|sums|: the sum of every accepted w max|delta|

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        return self.total.sums

    @property
    def weight(self) -> float:
        return self.total.weight

    @property
    def count(self) -> int:
        return self.total.count

    def accept(self, update: Update) -> None:
        # |sum + w delta| <= max|sum| + w max|delta|: refused before anything changes.
        # max|sum| is taken only when the bound kept from the updates so far (never below
        # it) does not settle it, so the decision is the exact one at a fraction of the cost
        step = update.weight * max_abs(update.delta)
        if not self.bound + step < FLOAT32_LIMIT:
            self.bound = self.peak()
        peak = self.bound + step
        if not peak < FLOAT32_LIMIT:
            raise WireError("overflow", f"{update.id}: weighted values up to {peak:.3g}")
        self.add(update, update.weight)
        self.bound = peak

    def peak(self) -> float:
        """The largest absolute value of the running sum."""
        return max_abs(self.total.sums)

    def add(self, update: Update, weight: float) -> None:
        """Fold ``update`` into the running sum with ``weight`` (checked by the caller)."""
        self.total.add(update.delta, weight)
        self.ids.append(update.id)
        if update.report:
            self.reports.add_report(update.report)
        if update.unclipped is not None:
            self.unclipped = (self.unclipped or 0) + int(update.unclipped)

    def result(self) -> Aggregate:
        return Aggregate(self.total.as_float32(), self.total.weight, self.total.count,
                         list(self.ids),
                         self.reports.to_json() if self.reports.reports else None,
                         self.unclipped)

    def to_state(self, tag: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        sections: dict[str, Any] = {"groups": [self.total.weight, self.total.count,
                                               list(self.ids)]}
        if self.reports.reports:
            sections["importance"] = self.reports.to_json()
        if self.unclipped is not None:
            sections["unclipped"] = self.unclipped
        return sections, {f"group/{tag}/{n}": t for n, t in self.total.sums.items()}

    @classmethod
    def from_state(cls, tag: str, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                   shapes: Shapes, aggregation: AggregationSection) -> RunningMean:
        """The group saved under ``tag`` in the intake's ``state``."""
        group = cls(shapes, aggregation)
        weight, count, ids = state["groups"][tag]
        sums = {n: tensors[f"group/{tag}/{n}"].to(torch.float64) for n in shapes}
        group.total = RunningSum(sums, float(weight), int(count))
        group.bound = group.peak()
        group.ids = list(ids)
        group.reports = ImportanceStats.from_json(state.get("importance", {}).get(tag, {}))
        unclipped = state.get("unclipped", {}).get(tag)
        group.unclipped = None if unclipped is None else int(unclipped)
        return group


class KeptUpdates(RunningMean):
    """Every accepted update, kept for a robust rule (median, trimmed mean; ``hub.robust``).

    A running sum is enough for the mean, but a median or trimmed mean needs every update
    of the round, so the region holds one decoded delta per accepted device (memory and
    persisted state grow with the region's cohort: about ``n x`` the shared parameters,
    e.g. 10 devices x 37k fp32 values for MiniLM's A matrices = 1.5 MB).

    Every update weighs 1, whatever sample count it declares: the rules are unweighted, and
    a region's partial weighted by declared counts would let two devices claiming 1e6
    samples each carry their region's estimate over the whole federation at the cloud.  So
    the running sum is the plain sum of the deltas, its weight is the update count, and the
    result's sums are ``robust_estimate x count``: the cloud divides by the weight to get
    the region's estimate back and combines the regions' estimates weighted by their update
    counts (``hub.robust.combine_estimates``).
    """

    name = "kept"
    after_final = False

    def __init__(self, shapes: Shapes, aggregation: AggregationSection) -> None:
        super().__init__(shapes, aggregation)
        self.rule = aggregation.rule
        self.trim_fraction = aggregation.trim_fraction
        self.deltas: list[dict[str, torch.Tensor]] = []
        self.kept_peak = 0.0  # the largest absolute value of any kept delta

    def accept(self, update: Update) -> None:
        # |estimate| <= the largest kept value, so |estimate x count| stays below the limit
        peak = max(self.kept_peak, max_abs(update.delta))
        if not peak * (len(self.deltas) + 1) < FLOAT32_LIMIT:
            raise WireError("overflow", f"{update.id}: values up to {peak:.3g}")
        self.add(update, 1.0)
        self.deltas.append({n: t.to(torch.float32) for n, t in update.delta.items()})
        self.kept_peak = peak

    def result(self) -> Aggregate:
        mean = super().result()
        if not self.deltas:
            return mean
        estimate = robust_aggregate(self.deltas, self.rule, self.trim_fraction)
        count = len(self.deltas)  # the weight, also for a group persisted sample-weighted
        return replace(mean, weight=float(count),
                       sums={n: (t.to(torch.float64) * count).to(torch.float32)
                             for n, t in estimate.items()})

    def to_state(self, tag: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        sections, tensors = super().to_state(tag)
        sections["kept"] = len(self.deltas)
        tensors.update({f"kept/{tag}/{i}/{n}": t for i, d in enumerate(self.deltas)
                        for n, t in d.items()})
        return sections, tensors

    @classmethod
    def from_state(cls, tag: str, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                   shapes: Shapes, aggregation: AggregationSection) -> KeptUpdates:
        group = super().from_state(tag, state, tensors, shapes, aggregation)
        assert isinstance(group, KeptUpdates)
        count = int(state.get("kept", {}).get(tag, 0))
        group.deltas = [{n: tensors[f"kept/{tag}/{i}/{n}"].to(torch.float32) for n in shapes}
                        for i in range(count)]
        group.kept_peak = max((max_abs(d) for d in group.deltas), default=0.0)
        return group


class SecureSum(Aggregator):
    """A secure round's aggregator: it accepts masked vectors (``Update.delta`` is
    ``{"y": words}``) into the round's ``SecAggServer`` and never sees an update; once the
    driver has run the protocol to its end (``finish``) its result is the unmasked sum of
    the survivors, scattered back to the shared tensors like a plain running sum.  Before
    that its result is empty, so a region whose secure round failed forwards nothing.

    Nothing of it is persisted: a hub restarted during a secure round fails that round."""

    name = "secure"

    def __init__(self, server: SecAggServer, shapes: Shapes, codec: str,
                 codec_params: Mapping[str, Any]) -> None:
        self.server = server
        self.shapes = dict(shapes)
        self.codec = codec
        self.codec_params = dict(codec_params)
        self.unmasked: AggregateResult | None = None

    def accept(self, update: Update) -> None:
        if not self.server.add_input(MaskedInput(update.header.client, update.delta["y"])):
            raise WireError("duplicate", update.id)

    def finish(self) -> AggregateResult:
        """Unmask the sum (the protocol's last step; ``SecAggError`` with too few answers)."""
        self.unmasked = self.server.finish()
        return self.unmasked

    def result(self) -> Aggregate:
        done = self.unmasked
        if done is None:
            total = RunningSum.zeros(self.shapes)
            return Aggregate(total.as_float32(), 0.0, 0, [])
        total = RunningSum(scatter(done.sums, self.shapes, self.codec, self.codec_params),
                           float(done.weight), done.count)
        ids = [f"{c}:{self.server.ctx.round}" for c in done.survivors]
        return Aggregate(total.as_float32(), total.weight, total.count, ids)

    def to_state(self, tag: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}


# ---------------------------------------------------------------------------- registry
RuleAggregator = type[RunningMean]

RULES: dict[str, RuleAggregator] = {
    "mean": RunningMean,
    "median": KeptUpdates,
    "trimmed_mean": KeptUpdates,
}


def aggregator_class(rule: str) -> RuleAggregator:
    """The aggregator of ``round_policy.aggregation.rule``."""
    try:
        return RULES[rule]
    except KeyError:
        raise ValueError(f"round_policy.aggregation.rule: unknown rule {rule!r}; known: "
                         f"{', '.join(RULES)}") from None

