"""report.html and the per-run plots, built from report dicts (no federation needed); one
test opens the page in headless Chromium and checks that the plots render."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scenarios.report_html import render_bench_html, render_report_html, write_report_html
from scenarios.report_plots import PLOTS, render_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_report(rounds: int = 3, name: str = "tiny") -> dict:
    rows = []
    for i in range(1, rounds + 1):
        rows.append({"round": i, "participants": 4, "accepted": 4 - (i == 2),
                     "rejected": int(i == 2), "bytes_up": 1000 * i, "bytes_down": 5000,
                     "accuracy": 0.3 + 0.1 * i, "global_accuracy": None, "reported": 4,
                     "device_accuracy": {"n-0": 0.2 + 0.1 * i, "n-1": 0.5, "s-0": 0.62,
                                         "s-1": 0.41},
                     "duration_s": 3.2})
    return {"scenario": name, "algorithm": "fedsa", "devices": 4, "regions": ["n", "s"],
            "config_hash": "abc123", "rounds": rows,
            "final": {"rounds_completed": rounds, "accuracy": rows[-1]["accuracy"] if rows
                      else None, "bytes_up_total": 6000, "bytes_down_total": 15000,
                      "wall_s": 30.0, "finished": True}}


def test_plots_are_pngs_even_without_data():
    for report in (make_report(), make_report(rounds=0)):
        images = render_plots(report)
        assert list(images) == list(PLOTS)
        assert all(png.startswith(PNG_MAGIC) and len(png) > 2000 for png in images.values())


def test_html_embeds_every_plot_and_loads_nothing():
    report = make_report()
    html = render_report_html(report, render_plots(report))
    assert html.count('src="data:image/png;base64,') == 4
    assert not re.search(r"(src|href)=\"(?!data:)", html)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    assert "0.600" in html  # final accuracy in the summary
    assert "6,000" in html and "abc123" in html
    assert html.count("<tr>") >= 3 + 15  # three round rows and the summary


def test_html_escapes_report_strings():
    report = make_report(name="<script>alert(1)</script>")
    html = render_report_html(report, {})
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_bench_page_has_a_row_per_algorithm():
    bench = {"scenario": "b", "seeds": [0], "rounds": 2, "std": "sample std",
             "algorithms": ["fedsa", "fedit"],
             "summary": {"fedsa": {"final_accuracy": {"mean": 0.5, "std": 0.0, "n": 1}},
                         "fedit": {}},
             "runs": [{"algorithm": "fedsa", "seed": 0, "dir": "/x/runs/fedsa-s0",
                       "metrics": {"final_accuracy": 0.5}},
                      {"algorithm": "fedit", "seed": 0, "dir": "/x/runs/fedit-s0",
                       "error": "boom"}]}
    html = render_bench_html(bench, {"accuracy_per_round.png": render_plots(make_report())[
        "accuracy_per_round.png"]})
    assert "0.500 ± 0.000 (n=1)" in html and "error: boom" in html
    assert "runs/fedsa-s0/report.html" in html
    assert html.count("data:image/png;base64,") == 1


def test_writer_puts_plots_beside_the_report(tmp_path):
    path = write_report_html(make_report(), tmp_path)
    assert path == tmp_path / "report.html"
    for name in PLOTS:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    exe = chromium()
    assert exe is not None
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={user_dir}", *args],
        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install "
                    "chromium; .ci/run installs it)")
def test_chromium_renders_the_plots(tmp_path):
    from PIL import Image

    page = write_report_html(make_report(), tmp_path)
    assert page is not None
    url = page.resolve().as_uri()
    dom = run_chromium("--dump-dom", url, user_dir=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    imgs = re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom.stdout)
    assert len(imgs) == 4, dom.stdout[:500]
    shot = tmp_path / "shot.png"
    res = run_chromium(f"--screenshot={shot}", "--window-size=1200,1400",
                       "--hide-scrollbars", url, user_dir=tmp_path / "profile-shot")
    assert shot.exists(), res.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50  # not blank
    # matplotlib's first line colour (#1f77b4) appears only inside the plots
    blue = sum(n for n, (r, g, b) in colors
               if abs(r - 0x1F) < 20 and abs(g - 0x77) < 20 and abs(b - 0xB4) < 20)
    assert blue > 500, f"plots did not render ({blue} plot-blue pixels)"


def test_faults_expectations_and_rejections_by_reason():
    report = make_report()
    report["rounds"][1]["rejected"] = {"stale": 2, "norm_bound": 1}
    report["faults"] = [{"t": 22.35, "step": "do", "action": "kill", "target": "cloud"}]
    report["expectations"] = {"checked": {"rounds_completed": 3}, "failures": [], "ok": True}
    html = render_report_html(report, render_plots(report))
    assert "Injected faults" in html and "22.4" in html and "cloud" in html
    assert "all held" in html
    report["expectations"]["failures"] = ["rounds_completed 2 < 3"]
    assert "FAILED: rounds_completed 2 &lt; 3" in render_report_html(report, {})
