"""The columns of a bench's summary table and how a cell is written (pure).

Shared by ``bench.md`` (``scenarios.bench``) and the bench's ``report.html``
(``scenarios.report_html``); a leaf because the bench imports the HTML report, so the
report cannot import the bench for them.
"""

from __future__ import annotations

from typing import Any

STD_KIND = "sample standard deviation over seeds (n-1 denominator; 0 when n=1)"
SE_KIND = ("standard error of the final mean accuracy over devices (sample std of the "
           "devices' final accuracies / sqrt(devices)) of each seed, averaged over seeds")

# (metric, title, format) of each summary column
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("final_accuracy", "final acc", "{:.3f}"),
    ("final_accuracy_se", "SE over devices", "{:.3f}"),
    ("best_accuracy", "best acc", "{:.3f}"),
    ("worst10_accuracy", "worst-10% acc", "{:.3f}"),
    ("rounds_to_95", "rounds to 95%", "{:.1f}"),
    ("global_accuracy", "global acc", "{:.3f}"),
    ("bytes_up_per_device_round", "bytes up / device-round", "{:,.0f}"),
    ("bytes_down_per_device_round", "bytes down / device-round", "{:,.0f}"),
    ("wall_s", "wall s", "{:.0f}"),
)
# shown as their mean over seeds alone: the spread of an error estimate is not worth a cell
MEAN_ONLY = frozenset({"final_accuracy_se"})


def format_cell(stats: dict[str, Any] | None, metric: str, fmt: str) -> str:
    """``mean ± std`` over seeds (the mean alone for ``MEAN_ONLY`` metrics), n/a when no
    seed has the figure."""
    if not stats or stats.get("mean") is None:
        return "n/a"
    if metric in MEAN_ONLY:
        return fmt.format(stats["mean"])
    return f"{fmt.format(stats['mean'])} ± {fmt.format(stats['std'])}"


def reference_row_name(kind: str) -> str:
    return f"{kind} (reference)"


def format_headroom(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"
