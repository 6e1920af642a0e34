"""Benchmark numbers from scenario reports (pure; no I/O).

Inputs are ``report.json`` dicts as ``scenarios.report.build_report`` writes them.  The
per-run numbers follow what the FedSA-LoRA paper reports (the best round) next to the final
round, so that a late collapse is not hidden by the best-round figure; the worst-10%
accuracy shows whether a personalized method leaves some devices behind.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean, stdev
from typing import Any, Literal

RUN_METRICS: tuple[str, ...] = (
    "final_accuracy",
    "final_accuracy_se",
    "best_accuracy",
    "worst10_accuracy",
    "rounds_to_95",
    "global_accuracy",
    "bytes_up_per_device_round",
    "bytes_down_per_device_round",
    "wall_s",
)
# What a comparison reports as paired differences against its baseline run of the same seed.
PAIRED_METRICS: tuple[str, ...] = ("final_accuracy", "worst10_accuracy")

Report = Mapping[str, Any]


def reported_rounds(report: Report) -> list[Mapping[str, Any]]:
    """Rounds for which at least one device reported an accuracy, in round order."""
    return [r for r in report.get("rounds", []) if r.get("accuracy") is not None]


def worst_mean(values: Iterable[float], percent: int = 10) -> float | None:
    """Mean of the lowest ``percent``% of values, at least one value (None when empty).

    The count is ``ceil(n * percent / 100)`` in integer arithmetic, so 10 devices give 1,
    11 give 2, and no float rounding can add a device.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    k = max(1, -(-len(ordered) * percent // 100))
    return fmean(ordered[:k])


def bytes_per_device_round(report: Report, direction: Literal["up", "down"] = "up"
                           ) -> float | None:
    """Bytes per device and round, ``direction`` "up" (uploaded) or "down" (announcements
    and fetches received): all bytes over all device-round reports.

    Dividing by reports rather than by ``devices x rounds`` keeps the figure honest when
    sampling or stragglers leave some devices out of some rounds.
    """
    rows = report.get("rounds", [])
    reports = sum(r.get("reported", 0) for r in rows)
    if reports == 0:
        return None
    return sum(r.get(f"bytes_{direction}", 0) for r in rows) / reports


def run_metrics(report: Report) -> dict[str, float | None]:
    """The benchmark's numbers for one run (see ``RUN_METRICS``).

    ``final_accuracy`` is the mean personalized accuracy of the last round that reported
    one, ``final_accuracy_se`` its standard error over devices (``device_standard_error``),
    ``best_accuracy`` the best round mean, ``worst10_accuracy`` the mean over the worst
    10% of devices in that last round, ``global_accuracy`` the last round's global accuracy
    (None for algorithms without a global model).
    """
    rows = reported_rounds(report)
    last = rows[-1] if rows else None
    device_acc = (last or {}).get("device_accuracy") or {}
    return {
        "final_accuracy": last["accuracy"] if last else None,
        "final_accuracy_se": device_standard_error(device_acc.values()),
        "best_accuracy": max(r["accuracy"] for r in rows) if rows else None,
        "worst10_accuracy": worst_mean(device_acc.values()),
        "rounds_to_95": rounds_to_fraction([(r["round"], r["accuracy"]) for r in rows]),
        "global_accuracy": last.get("global_accuracy") if last else None,
        "bytes_up_per_device_round": bytes_per_device_round(report),
        "bytes_down_per_device_round": bytes_per_device_round(report, "down"),
        "wall_s": report.get("final", {}).get("wall_s"),
    }


def rounds_to_fraction(curve: Sequence[tuple[int, float]], fraction: float = 0.95
                       ) -> int | None:
    """The first round whose mean accuracy reaches ``fraction`` of the last round's: how
    fast a run gets to (nearly) where it ends, the convergence figure of the seed plan (§7).
    None for an empty curve.  Read it next to the final accuracy: a run that ends low
    reaches 95 % of it early."""
    if not curve:
        return None
    target = fraction * curve[-1][1]
    return next(int(r) for r, acc in curve if acc >= target)


def device_standard_error(values: Iterable[float]) -> float | None:
    """Standard error of a mean over devices: sample std (n-1) / sqrt(n); None below two.

    Test splits of tens of texts make one device's accuracy noisy, so a mean over ten
    devices carries an error that is often as large as the differences between methods;
    this is that error, next to the spread over seeds (which also moves the partition).
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if len(xs) < 2:
        return None
    return stdev(xs) / math.sqrt(len(xs))


def headroom_captured(federated: float | None, local: float | None,
                      centralized: float | None) -> float | None:
    """(federated - local) / (centralized - local): the share of what pooling all devices'
    data would add over training alone that the federation actually gets (1 = as good as
    pooling, 0 = no better than alone, negative = worse than alone).

    None when a figure is missing or pooling is no better than training alone (there is
    then no headroom to capture and the ratio would be meaningless or explode).
    """
    if federated is None or local is None or centralized is None:
        return None
    gap = centralized - local
    if not gap > 0:
        return None
    return (federated - local) / gap


def reference_metrics(device_accuracy: Mapping[str, float],
                      curve: Sequence[tuple[int, float]] = (),
                      wall_s: float | None = None) -> dict[str, float | None]:
    """The ``RUN_METRICS`` of a reference (centralized, majority) from its final per-device
    accuracies and its curve of (round's worth, mean accuracy), so that references sit in
    the same tables as federated runs: final and worst-10% as for a run's last round, best
    over the curve; no global model and no bytes."""
    accs = list(device_accuracy.values())
    final = fmean(accs) if accs else None
    points = [acc for _, acc in curve]
    return {
        "final_accuracy": final,
        "final_accuracy_se": device_standard_error(accs),
        "best_accuracy": max([*points, final]) if final is not None else None,
        "worst10_accuracy": worst_mean(accs),
        "rounds_to_95": None,
        "global_accuracy": None,
        "bytes_up_per_device_round": None,
        "bytes_down_per_device_round": None,
        "wall_s": wall_s,
    }


def accuracy_curve(report: Report) -> list[tuple[int, float, float]]:
    """(round, mean accuracy, cumulative bytes uploaded per device) for reported rounds.

    Bytes per device in a round are that round's bytes up over its reporting devices, so
    the curve is the upload cost of one typical device up to and including that round.
    """
    out: list[tuple[int, float, float]] = []
    cumulative = 0.0
    for r in report.get("rounds", []):
        if r.get("reported"):
            cumulative += r.get("bytes_up", 0) / r["reported"]
        if r.get("accuracy") is not None:
            out.append((int(r["round"]), float(r["accuracy"]), cumulative))
    return out


def mean_std(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean and *sample* standard deviation (n-1 denominator; 0 when n=1) of the non-null
    values, with their count; mean and std are None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": fmean(xs), "std": stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def summarize(runs: Sequence[Mapping[str, Any]], algorithms: Sequence[str],
              key: str = "algorithm") -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Per algorithm (or per other ``key`` of the entries, e.g. a sweep's ``label``),
    mean/std/n over seeds of every run metric.

    ``runs`` are ``{"algorithm": ..., "metrics": {...}}`` entries; runs without metrics
    (failed) do not count.
    """
    summary: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for alg in algorithms:
        mine = [r["metrics"] for r in runs if r.get(key) == alg and r.get("metrics")]
        summary[alg] = {m: mean_std(run[m] for run in mine) for m in RUN_METRICS}
    return summary


def entry_label(entry: Mapping[str, Any]) -> str:
    """The group a bench entry counts in: its label in a sweep or variant comparison (plain
    runs there are labelled with the algorithm), its algorithm otherwise."""
    return entry.get("label", entry["algorithm"])


def paired_differences(runs: Sequence[Mapping[str, Any]], baselines: Mapping[str, str]
                       ) -> dict[str, dict[str, Any]]:
    """Per label, mean/std/n over seeds of (its metric − its baseline's metric on the same
    seed) for ``PAIRED_METRICS``, with the baseline and the seeds both ran.

    The seed fixes a run's data partition and initialisation, and seed-to-seed spread is
    several times the effect of most options, so a comparison is only readable paired.
    ``baselines`` maps a label to the label it is compared against; ``runs`` are bench
    entries (grouped by ``label``, or by ``algorithm`` when they have none); failed runs
    and seeds missing on either side do not count.
    """
    def by_seed(label: str) -> dict[int, Mapping[str, Any]]:
        return {r["seed"]: r["metrics"] for r in runs
                if entry_label(r) == label and r.get("metrics")}

    out: dict[str, dict[str, Any]] = {}
    for label, baseline in baselines.items():
        mine, theirs = by_seed(label), by_seed(baseline)
        seeds = sorted(mine.keys() & theirs.keys())
        entry: dict[str, Any] = {"baseline": baseline, "seeds": seeds}
        for metric in PAIRED_METRICS:
            entry[metric] = mean_std(
                mine[s][metric] - theirs[s][metric] for s in seeds
                if mine[s][metric] is not None and theirs[s][metric] is not None)
        out[label] = entry
    return out


def mean_curve(curves: Sequence[Sequence[tuple[int, float, float]]]
               ) -> list[tuple[int, float, float, float]]:
    """Across seeds: (round, mean accuracy, sample std of accuracy, mean cumulative bytes
    per device), for every round that at least one seed reported."""
    by_round: dict[int, list[tuple[float, float]]] = {}
    for curve in curves:
        for rnd, acc, cum in curve:
            by_round.setdefault(rnd, []).append((acc, cum))
    out = []
    for rnd in sorted(by_round):
        accs = [a for a, _ in by_round[rnd]]
        stats = mean_std(accs)
        out.append((rnd, float(stats["mean"] or 0.0), float(stats["std"] or 0.0),
                    fmean(c for _, c in by_round[rnd])))
    return out
