"""``report.html``: one self-contained page per scenario run (and per bench).

Plots are embedded as base64 ``data:`` URIs and the style is inline, so the file can be
mailed, attached to a ticket or opened from an air-gapped machine and looks the same: it
loads nothing from anywhere.  ``render_*`` are pure (a report dict and PNG bytes in, HTML
text out); ``write_*`` draw the plots, write them beside ``report.json`` and write the page.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scenarios.bench_metrics import run_metrics
from scenarios.bench_table import COLUMNS, MEAN_ONLY, SE_KIND, format_headroom, reference_row_name
from scenarios.report_plots import PLOTS, render_plots

log = logging.getLogger("fedsa.scenarios.report")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.k, th.k { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { width: 520px; max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
.note { color: #666; font-size: 0.9em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = "{:,}") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and fmt == "{:,}":
        fmt = "{:,.3f}"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figures(images: Mapping[str, bytes], captions: Mapping[str, str]) -> str:
    items = []
    for name, png in images.items():
        caption = captions.get(name, name)
        named = f" ({_e(name)})" if caption != name else ""
        items.append(f'<figure><img src="{data_uri(png)}" alt="{_e(caption)}" '
                     f'data-file="{_e(name)}"><figcaption>{_e(caption)}{named}'
                     "</figcaption></figure>")
    return '<div class="plots">' + "".join(items) + "</div>"


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f'<tr><th class="k">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The summary table of one run (key, formatted value)."""
    final = report.get("final") or {}
    m = run_metrics(report)
    rows = [
        ("scenario", str(report.get("scenario", "?"))),
        ("algorithm", str(report.get("algorithm", "?"))),
        ("devices", _num(report.get("devices"))),
        ("regions", ", ".join(report.get("regions") or []) or "n/a"),
        ("rounds completed", _num(final.get("rounds_completed"))),
        ("finished", "yes" if final.get("finished") else "NO"),
        ("final accuracy (mean personalized)", _num(m["final_accuracy"], "{:.3f}")),
        ("best round accuracy", _num(m["best_accuracy"], "{:.3f}")),
        ("worst-10% devices, last round", _num(m["worst10_accuracy"], "{:.3f}")),
        ("global accuracy", _num(m["global_accuracy"], "{:.3f}")),
        ("bytes up, total", _num(final.get("bytes_up_total"))),
        ("bytes down, total", _num(final.get("bytes_down_total"))),
        ("bytes up per device-round", _num(m["bytes_up_per_device_round"], "{:,.0f}")),
        ("wall time (s)", _num(final.get("wall_s"), "{:.1f}")),
        ("config hash", str(report.get("config_hash", "n/a"))),
    ]
    if final.get("failed_processes"):
        rows.append(("failed processes", ", ".join(final["failed_processes"])))
    expectations = report.get("expectations")
    if isinstance(expectations, Mapping) and expectations.get("checked"):
        failures = expectations.get("failures") or []
        rows.append(("expectations", "all held" if not failures
                     else "FAILED: " + "; ".join(map(str, failures))))
    return rows


def fault_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """The faults a scenario injected (time, step, action, target), if any."""
    return [[_num(f.get("t"), "{:.1f}"), str(f.get("step", "")), str(f.get("action", "")),
             str(f.get("target", ""))]
            for f in report.get("faults") or [] if isinstance(f, Mapping)]


def round_rows(report: Mapping[str, Any]) -> list[list[str]]:
    out = []
    for r in report.get("rounds") or []:
        out.append([
            str(r.get("round")), _num(r.get("participants")), _num(r.get("accepted")),
            _num(r.get("rejected")), _num(r.get("reported")),
            _num(r.get("accuracy"), "{:.3f}"), _num(r.get("global_accuracy"), "{:.3f}"),
            _num(r.get("bytes_up")), _num(r.get("bytes_down")),
            _num(r.get("duration_s"), "{:.1f}"),
        ])
    return out


ROUND_HEADERS = ("round", "selected", "accepted", "rejected", "reporting", "accuracy",
                 "global acc", "bytes up", "bytes down", "duration s")


def render_report_html(report: Mapping[str, Any], images: Mapping[str, bytes],
                       captions: Mapping[str, str] | None = None,
                       generated_at: float | None = None) -> str:
    """The page of one run: summary, plots, per-round table (pure)."""
    if captions is None:
        captions = {name: caption for name, (caption, _) in PLOTS.items()}
    title = f"{report.get('scenario', 'scenario')}: {report.get('algorithm', '?')}"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                         time.gmtime(time.time() if generated_at is None else generated_at))
    body = (f"<h1>Scenario report: {_e(title)}</h1>"
            f'<p class="note">Generated {_e(when)} from report.json; accuracies are on each '
            "device's own test split.</p>"
            "<h2>Summary</h2>" + _kv_table(summary_rows(report))
            + "<h2>Plots</h2>" + _figures(images, captions)
            + "<h2>Rounds</h2>" + _table(ROUND_HEADERS, round_rows(report)))
    faults = fault_rows(report)
    if faults:
        body += "<h2>Injected faults</h2>" + _table(("t (s)", "step", "action", "target"),
                                                    faults)
    return _page(title, body)


def _mean_std(stats: Mapping[str, Any] | None, fmt: str) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{fmt.format(stats['mean'])} ± {fmt.format(stats['std'])} (n={stats['n']})"


def render_bench_html(bench: Mapping[str, Any], images: Mapping[str, bytes],
                      captions: Mapping[str, str] | None = None) -> str:
    """The page of a bench: per-algorithm summary, plots, one row per run (pure)."""
    references = list(bench.get("references") or [])
    headroom = bench.get("headroom")
    headers = ["algorithm", *(title for _, title, _ in COLUMNS),
               *(["headroom captured"] if headroom else [])]
    summary = []
    for alg in [*(bench.get("labels") or bench.get("algorithms", [])), *references]:
        stats = bench["summary"].get(alg, {})
        row = [reference_row_name(alg) if alg in references else alg]
        for metric, _, fmt in COLUMNS:
            cell = stats.get(metric)
            row.append(_num(cell.get("mean") if cell else None, fmt) if metric in MEAN_ONLY
                       else _mean_std(cell, fmt))
        if headroom:
            row.append(format_headroom(headroom.get(alg)))
        summary.append(row)
    runs = []
    for r in [*bench.get("runs", []), *bench.get("reference_runs", [])]:
        m = r.get("metrics") or {}
        where = "refs" if "reference" in r else "runs"
        page = "result.json" if "reference" in r else "report.html"
        link = f"{where}/{Path(str(r.get('dir', '?'))).name}/{page}"
        name = r.get("label", r.get("algorithm", "?"))
        runs.append([reference_row_name(name) if "reference" in r else name,
                     str(r.get("seed", "?")),
                     _num(m.get("final_accuracy"), "{:.3f}"),
                     _num(m.get("final_accuracy_se"), "{:.3f}"),
                     _num(m.get("best_accuracy"), "{:.3f}"),
                     _num(m.get("wall_s"), "{:.0f}"),
                     "error: " + str(r["error"]) if "error" in r else link])
    title = f"Benchmark: {bench.get('scenario', '?')}"
    body = (f"<h1>{_e(title)}</h1>"
            f"<p class=\"note\">{len(bench.get('seeds', []))} seed(s) "
            f"{_e(bench.get('seeds'))}, {_e(bench.get('rounds'))} rounds; cells are mean ± "
            f"{_e(bench.get('std', 'std'))}; SE over devices: "
            f"{_e(bench.get('se', SE_KIND))}.</p>"
            "<h2>Summary</h2>" + _table(headers, summary)
            + "<h2>Plots</h2>" + _figures(images, captions or {})
            + "<h2>Runs</h2>" + _table(("algorithm", "seed", "final acc", "SE over devices",
                                         "best acc", "wall s", "report"), runs))
    return _page(title, body)


def write_report_html(report: Mapping[str, Any], out: Path) -> Path | None:
    """Draw the plots of ``report``, write them and ``report.html`` into ``out``.

    A failure here must not cost the run its ``report.json`` (already written), so it is
    logged and None returned.
    """
    try:
        images = render_plots(report)
        for name, png in images.items():
            (out / name).write_bytes(png)
        path = out / "report.html"
        path.write_text(render_report_html(report, images))
        return path
    except Exception:  # a plotting bug must not fail a finished run
        log.exception("could not write the HTML report in %s", out)
        return None


BENCH_CAPTIONS = {
    "accuracy_per_round.png": "Mean personalized accuracy per round over seeds (±std band; "
                              "references: centralized per round's worth of samples, "
                              "majority dashed)",
    "accuracy_vs_bytes.png": "Accuracy against cumulative bytes uploaded per device",
    "accuracy_vs_upload.png": "Compression sweep: final accuracy against uploaded bytes per "
                              "device-round (star: FedIT dense fp32)",
}


def write_bench_html(bench: Mapping[str, Any], out: Path) -> Path | None:
    """``out/report.html`` from ``bench`` and the bench plots already written in ``out``
    (a failure is logged: bench.json and bench.md are written already)."""
    try:
        images = {name: (out / name).read_bytes() for name in BENCH_CAPTIONS
                  if (out / name).exists()}
        path = out / "report.html"
        path.write_text(render_bench_html(bench, images, BENCH_CAPTIONS))
        return path
    except Exception:  # a rendering bug must not fail an hour-long bench at its end
        log.exception("could not write the bench HTML report in %s", out)
        return None
