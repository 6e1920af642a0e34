"""``scenarios bench`` end to end on the tiny scenario (real broker, hubs and devices), and
its argument checks, which must fail before anything starts.  The end-to-end runs share one
bench of two algorithms (about a minute), so they are marked slow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scenarios.bench_metrics import RUN_METRICS
from scenarios.cli import app

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_unknown_algorithm_exits_2_naming_it(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", str(TINY), "--algorithms", "fedsa,fedprox",
                                      "--seeds", "0", "--out", str(out)])
    assert result.exit_code == 2
    assert "fedprox" in result.output
    assert not out.exists()


def test_unknown_reference_exits_2_naming_it(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", str(TINY), "--references", "centralized,oracle",
                                      "--seeds", "0", "--out", str(out)])
    assert result.exit_code == 2
    assert "oracle" in result.output
    assert not out.exists()


@pytest.mark.parametrize("seeds", ["0,x", "1,1", ""])
def test_bad_seeds_exit_2(tmp_path, seeds):
    result = CliRunner().invoke(app, ["bench", str(TINY), "--seeds", seeds,
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--seeds" in result.output


def test_run_configs_override_algorithm_seeds_and_name():
    from scenarios.bench import plan_runs
    from scenarios.config import load_scenario

    runs = plan_runs(load_scenario(TINY), ["fedit"], [3], Path("/x"), rounds=5)
    (run,) = runs
    c = run.config
    assert c.fedsa_lora.algorithm == "fedit" and c.federation.seed == 3
    assert c.scenario.data["seed"] == 3 and c.rounds == 5
    assert c.federation.name == "tiny-fedit-s3" and run.out == Path("/x/runs/fedit-s3")


def bench_args(out: Path) -> list[str]:
    return ["bench", str(TINY), "--algorithms", "fedsa,fedit", "--seeds", "0",
            "--rounds", "2", "--out", str(out)]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(app, bench_args(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_bench_json_has_both_algorithms(bench_dir):
    bench = json.loads((bench_dir / "bench.json").read_text())
    assert bench["algorithms"] == ["fedsa", "fedit"] and bench["seeds"] == [0]
    assert len(bench["runs"]) == 2
    for run in bench["runs"]:
        assert run["finished"] and "error" not in run
        for name in ("final_accuracy", "best_accuracy", "worst10_accuracy",
                     "bytes_up_per_device_round", "wall_s"):
            assert math.isfinite(run["metrics"][name]), name
        assert 0 <= run["metrics"]["final_accuracy"] <= run["metrics"]["best_accuracy"] <= 1
        assert run["metrics"]["final_accuracy_se"] > 0  # 4 devices, random tiny model
    for alg in ("fedsa", "fedit", "centralized", "majority"):
        assert set(bench["summary"][alg]) == set(RUN_METRICS)
        assert bench["summary"][alg]["final_accuracy"]["n"] == 1
        assert bench["summary"][alg]["final_accuracy"]["std"] == 0.0
    assert "averaged over seeds" in bench["se"]
    by_alg = {r["algorithm"]: r for r in bench["runs"]}
    assert 0 <= by_alg["fedit"]["metrics"]["global_accuracy"] <= 1
    assert by_alg["fedsa"]["metrics"]["global_accuracy"] is None
    report = json.loads((bench_dir / "runs" / "fedit-s0" / "report.json").read_text())
    assert len(report["rounds"][-1]["device_accuracy"]) == 4


@pytest.mark.integration
@pytest.mark.slow
def test_bench_has_both_references_on_the_runs_devices(bench_dir):
    bench = json.loads((bench_dir / "bench.json").read_text())
    assert bench["references"] == ["centralized", "majority"]
    refs = {r["reference"]: r for r in bench["reference_runs"]}
    report = json.loads((bench_dir / "runs" / "fedit-s0" / "report.json").read_text())
    devices = set(report["rounds"][-1]["device_accuracy"])
    for kind in ("centralized", "majority"):
        assert "error" not in refs[kind] and refs[kind]["seed"] == 0
        assert set(refs[kind]["device_accuracy"]) == devices
        assert 0 <= refs[kind]["metrics"]["final_accuracy"] <= 1
    central = refs["centralized"]
    assert [p[0] for p in central["curve"]] == [1, 2]  # --rounds 2: two rounds' worth
    # tiny.yaml: 4 devices x 3 steps x 8 per round, every device holding over 24 texts
    assert central["samples"] == central["target_samples"] == 2 * 4 * 3 * 8
    assert (bench_dir / "refs" / "centralized-s0" / "result.json").exists()
    assert "headroom" not in bench  # no local run in this bench


@pytest.mark.integration
@pytest.mark.slow
def test_bench_md_and_plots(bench_dir):
    md = (bench_dir / "bench.md").read_text()
    for alg in ("fedsa", "fedit", "centralized (reference)", "majority (reference)"):
        assert sum(line.startswith(f"| {alg} |") for line in md.splitlines()) == 1
    assert "final = last round, best = best round" in md
    assert "| final acc | SE over devices |" in md and "References (same devices" in md
    for name in ("accuracy_per_round.png", "accuracy_vs_bytes.png"):
        data = (bench_dir / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    html = (bench_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2
    assert "centralized (reference)" in html and "refs/centralized-s0/result.json" in html
    for run in ("fedsa-s0", "fedit-s0"):  # each run's own page, beside its report.json
        assert (bench_dir / "runs" / run / "report.html").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_rerun_reuses_finished_runs(bench_dir):
    reports = sorted((bench_dir / "runs").glob("*/report.json"))
    assert len(reports) == 2
    before = {p: p.stat().st_mtime_ns for p in reports}
    result = CliRunner().invoke(app, bench_args(bench_dir))
    assert result.exit_code == 0, result.output
    # the two runs and the centralized reference (majority takes seconds: recomputed)
    assert result.output.count("reused") == 3
    assert "centralized seed 0: reused" in result.output
    assert "started" not in result.output  # no broker needed when every run is reused
    assert {p: p.stat().st_mtime_ns for p in reports} == before
    bench = json.loads((bench_dir / "bench.json").read_text())
    assert all(r["reused"] for r in bench["runs"])


def test_markdown_shows_references_se_and_headroom():
    from scenarios.bench import headroom_table, render_markdown

    def stats(final: float, se: float) -> dict:
        out = {m: {"mean": None, "std": None, "n": 0} for m in RUN_METRICS}
        out["final_accuracy"] = {"mean": final, "std": 0.02, "n": 2}
        out["final_accuracy_se"] = {"mean": se, "std": 0.004, "n": 2}
        return out

    summary = {"fedsa": stats(0.70, 0.031), "local": stats(0.60, 0.030),
               "centralized": stats(0.80, 0.025), "majority": stats(0.50, 0.040)}
    headroom = headroom_table(summary, ["fedsa", "local"])
    assert headroom == {"fedsa": pytest.approx(0.5)}
    assert headroom_table({k: v for k, v in summary.items() if k != "centralized"},
                          ["fedsa", "local"]) == {}
    bench = {"scenario": "t", "seeds": [0, 1], "rounds": 2, "std": "std", "runs": [],
             "algorithms": ["fedsa", "local"], "summary": summary, "se": "SE kind",
             "references": ["centralized", "majority"], "reference_runs": [],
             "headroom": headroom}
    md = render_markdown(bench)
    lines = md.splitlines()
    assert "| algorithm | final acc | SE over devices | best acc |" in md
    assert "| headroom captured |" in md
    fedsa = next(line for line in lines if line.startswith("| fedsa |"))
    # the SE is its mean over seeds alone; headroom (0.70-0.60)/(0.80-0.60)
    assert fedsa.startswith("| fedsa | 0.700 ± 0.020 | 0.031 | n/a |") and fedsa.endswith(
        "| 50% |")
    assert next(line for line in lines if line.startswith("| local |")).endswith("| – |")
    assert next(line for line in lines
                if line.startswith("| centralized (reference) |")).startswith(
        "| centralized (reference) | 0.800 ± 0.020 | 0.025 |")
    assert "| majority (reference) | 0.500 ± 0.020 | 0.040 |" in md
    assert "SE over devices: SE kind" in md and "headroom captured = " in md
