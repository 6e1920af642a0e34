"""The benchmark's two PNG plots (matplotlib, Agg backend: no display on a headless box).

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


def plot_accuracy_per_round(curves: Mapping[str, Curve], path: Path, title: str) -> None:
    """Mean personalized accuracy per round over seeds, one line per algorithm, ±std band."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
