"""The PNG plots of one scenario report (matplotlib, Agg backend: no display needed).

Every function takes a ``report.json`` dict and returns PNG bytes, so the HTML report can
embed exactly the images that are written beside it, and tests need no files.  A report
without the data a plot needs still gets the plot, with a "no data" note, so the HTML
never has a hole in it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

Report = Mapping[str, Any]


def _png(draw: Callable[[Axes], None], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    try:
        draw(ax)
        ax.set_title(title)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    finally:
        plt.close(fig)


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this report", ha="center", va="center",
            transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _count(value: Any) -> float:
    """A count that may be given by reason (``{"stale": 2, ...}``) or missing."""
    if isinstance(value, Mapping):
        return float(sum(v for v in value.values() if isinstance(v, int | float)))
    return float(value) if isinstance(value, int | float) else 0.0


def _rounds(report: Report) -> list[Mapping[str, Any]]:
    return list(report.get("rounds") or [])


def accuracy_png(report: Report) -> bytes:
    """Mean personalized accuracy per round (and the global model's, where one exists)."""

    def draw(ax: Axes) -> None:
        rows = [r for r in _rounds(report) if r.get("accuracy") is not None]
        if not rows:
            _no_data(ax, "accuracy")
            return
        ax.plot([r["round"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                label="personalized (mean over devices)")
        glob = [r for r in rows if r.get("global_accuracy") is not None]
        if glob:
            ax.plot([r["round"] for r in glob], [r["global_accuracy"] for r in glob],
                    marker="s", linestyle="--", label="global LoRA")
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()

    return _png(draw, "Accuracy per round")


def bytes_png(report: Report) -> bytes:
    """MQTT payload bytes devices sent and received in each round."""

    def draw(ax: Axes) -> None:
        rows = _rounds(report)
        if not rows:
            _no_data(ax, "rounds")
            return
        x = [r["round"] for r in rows]
        ax.bar([v - 0.2 for v in x], [r.get("bytes_up", 0) for r in rows], width=0.4,
               label="up (devices to hubs)")
        ax.bar([v + 0.2 for v in x], [r.get("bytes_down", 0) for r in rows], width=0.4,
               label="down (announcements, fetches)")
        ax.set_xlabel("round")
        ax.set_ylabel("bytes")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()

    return _png(draw, "Bytes per round")


def participation_png(report: Report) -> bytes:
    """Selected devices against accepted and rejected updates and metric reports."""

    def draw(ax: Axes) -> None:
        rows = _rounds(report)
        if not rows:
            _no_data(ax, "rounds")
            return
        x = [r["round"] for r in rows]
        for key, label, marker in (("participants", "selected", "o"),
                                   ("accepted", "updates accepted", "s"),
                                   ("reported", "devices reporting accuracy", "^"),
                                   ("rejected", "updates rejected", "x")):
            ax.plot(x, [_count(r.get(key)) for r in rows], marker=marker, label=label)
        ax.set_xlabel("round")
        ax.set_ylabel("devices / updates")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()

    return _png(draw, "Participation per round")


def last_device_accuracy(report: Report) -> tuple[int | None, list[float]]:
    """(round, per-device accuracies) of the last round that has any."""
    for r in reversed(_rounds(report)):
        values = [float(v) for v in (r.get("device_accuracy") or {}).values()
                  if v is not None]
        if values:
            return int(r["round"]), values
    return None, []


def device_accuracy_png(report: Report) -> bytes:
    """How accuracy is spread over devices in the last round: a personalized method can
    have a good mean and still leave some devices behind."""
    rnd, values = last_device_accuracy(report)

    def draw(ax: Axes) -> None:
        if not values:
            _no_data(ax, "per-device accuracy")
            return
        ax.hist(values, bins=20, range=(0, 1), edgecolor="white")  # 0.05 wide
        ax.plot(values, [0] * len(values), "|", color="black", markersize=12, clip_on=False,
                label="one device")
        mean = sum(values) / len(values)
        ax.axvline(mean, color="black", linestyle="--", label=f"mean {mean:.3f}")
        ax.set_xlabel("personalized accuracy")
        ax.set_ylabel("devices")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()

    title = "Per-device accuracy" + (f", round {rnd}" if rnd is not None else "")
    return _png(draw, title)


# file name -> (caption, renderer); the order is the order in the HTML report
PLOTS: dict[str, tuple[str, Callable[[Report], bytes]]] = {
    "accuracy_per_round.png": ("Mean personalized accuracy per round", accuracy_png),
    "bytes_per_round.png": ("MQTT payload bytes per round", bytes_png),
    "participation_per_round.png": ("Selected devices, updates and reports per round",
                                    participation_png),
    "device_accuracy.png": ("Distribution of per-device accuracy in the last round",
                            device_accuracy_png),
}


def render_plots(report: Report) -> dict[str, bytes]:
    """Every plot of ``report`` as PNG bytes, by file name."""
    return {name: render(report) for name, (_, render) in PLOTS.items()}
