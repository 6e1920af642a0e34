"""The benchmark's PNG plots (matplotlib, Agg backend: no display on a headless box).

Curves are computed by ``scenarios.bench_metrics.mean_curve``; this module only draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
from matplotlib.ticker import MaxNLocator

# (round, mean accuracy, std accuracy, mean cumulative bytes up per device)
Curve = Sequence[tuple[int, float, float, float]]


def plot_accuracy_per_round(curves: Mapping[str, Curve], path: Path, title: str,
                            levels: Mapping[str, float] | None = None) -> None:
    """Mean personalized accuracy per round over seeds, one line per algorithm, ±std band;
    ``levels`` (e.g. the majority reference, which has no rounds) as dashed horizontal
    lines."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, value in (levels or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1.0, color="gray", label=name)
    for alg, curve in curves.items():
        if not curve:
            continue
        rounds = [c[0] for c in curve]
        mean = [c[1] for c in curve]
        std = [c[2] for c in curve]
        (line,) = ax.plot(rounds, mean, marker="o", label=alg)
        ax.fill_between(rounds, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)],
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean personalized accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_bytes(curves: Mapping[str, Curve], path: Path, title: str) -> None:
    """Accuracy against cumulative uploaded bytes per device (log x): the price of accuracy
    in uplink traffic.  Points at zero bytes have no place on a log axis and are left out."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for alg, curve in curves.items():
        points = [(c[3], c[1]) for c in curve if c[3] > 0]
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=alg)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes uploaded per device")
    ax.set_ylabel("mean personalized accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

# (mean/std/n of bytes up per device-round, mean/std/n of final accuracy), per run label
Stats = dict[str, float | int | None]


def plot_accuracy_vs_upload(points: Mapping[str, tuple[Stats, Stats]], reference: str,
                            path: Path, title: str) -> None:
    """The bytes/accuracy frontier of a compression sweep: final personalized accuracy
    (±std over seeds) against uploaded bytes per device-round (log x), one point per run
    label, the ``reference`` (FedIT, dense fp32) drawn as a star with guide lines so every
    codec reads as "this much accuracy for this fraction of the reference's upload"."""
    fig, ax = plt.subplots(figsize=(10, 5))
    ref = points.get(reference)
    ref_bytes = ref[0]["mean"] if ref else None
    for label, (up, acc) in points.items():
        if not up["mean"] or acc["mean"] is None:
            continue
        x, y = float(up["mean"]), float(acc["mean"])
        is_ref = label == reference
        note = label + (" (reference)" if is_ref else
                        f"  1/{float(ref_bytes) / x:.1f}" if ref_bytes else "")
        # named in the legend, not next to the point: codecs of equal size sit on top of
        # each other, and their annotations did too
        ax.errorbar([x], [y], yerr=[float(acc["std"] or 0.0)], capsize=3,
                    marker="*" if is_ref else "o", markersize=14 if is_ref else 7,
                    color="black" if is_ref else None, linestyle="none", label=note)
    if ref and ref_bytes and ref[1]["mean"] is not None:
        ax.axhline(float(ref[1]["mean"]), color="gray", linestyle="--", linewidth=0.8)
        ax.axvline(float(ref_bytes), color="gray", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("uploaded bytes per device-round (log; 1/N = N times less than reference)")
    ax.set_ylabel("final mean personalized accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
