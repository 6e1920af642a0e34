"""``scenarios bench --compression``: parsing, planning, bench.md and the frontier plot (no
processes are started here; the end-to-end sweep is in test_bench.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from scenarios.bench import plan_runs, render_markdown
from scenarios.bench_plots import plot_accuracy_vs_upload
from scenarios.bench_sweep import parse_compression, parse_compressions
from scenarios.cli import app
from scenarios.config import load_scenario

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"


@pytest.mark.parametrize(("item", "label", "settings"), [
    ("topk:0.1:int8", "topk:0.1:int8", {"method": "topk", "ratio": 0.1, "values": "int8"}),
    ("topk:0.1", "topk:0.1:int8", {"method": "topk", "ratio": 0.1, "values": "int8"}),
    ("randk:0.05:int4:b64:zstd", "randk:0.05:int4:b64:zstd",
     {"method": "randk", "ratio": 0.05, "values": "int4", "block_size": 64, "zstd": True}),
    ("dense:fp32", "dense:fp32", {"method": "dense"}),
    ("dense", "dense:fp32", {"method": "dense"}),
    ("dense:int8", "dense:int8", {"method": "topk", "ratio": 1.0, "values": "int8"}),
    ("topk_int8:0.1", "topk_int8:0.1", {"method": "topk_int8", "ratio": 0.1}),
])
def test_parse(item: str, label: str, settings: dict) -> None:
    choice = parse_compression(item)
    assert choice.label == label and choice.settings == {"enable": True, **settings}
    assert ":" not in choice.slug


@pytest.mark.parametrize("text", ["", "gzip:0.1", "topk", "topk:x", "topk:2", "topk:0.1:int3",
                                  "topk:0.1:fp16:b8", "topk:0.1:int8:q", "dense:fp32:zstd",
                                  "topk_int8:0.1:int4", "topk:0.1,topk:0.1:int8"])
def test_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match="--compression"):
        parse_compressions(text)


def test_plan_adds_reference_and_names_runs() -> None:
    sweep = parse_compressions("topk:0.1:int8,randk:0.05:int4")
    runs = plan_runs(load_scenario(TINY), ["fedsa"], [0, 1], Path("/x"), 2, sweep)
    assert [(r.label, r.seed) for r in runs] == [
        ("fedsa topk:0.1:int8", 0), ("fedsa topk:0.1:int8", 1),
        ("fedsa randk:0.05:int4", 0), ("fedsa randk:0.05:int4", 1),
        ("fedit dense:fp32", 0), ("fedit dense:fp32", 1)]
    first = runs[0]
    assert first.out == Path("/x/runs/fedsa-topk-0.1-int8-s0")
    assert first.config.federation.name == "tiny-fedsa-topk-0.1-int8-s0"
    comp = first.config.fedsa_lora.compression
    assert (comp.codec, comp.codec_params) == ("topk", {"ratio": 0.1, "values": "int8",
                                                        "block_size": None, "zstd": False})
    ref = runs[-1].config
    assert ref.fedsa_lora.algorithm == "fedit" and ref.fedsa_lora.compression.codec == "dense"
    assert len({r.out for r in runs}) == len(runs)
    # the reference is not added twice when the sweep has it
    both = plan_runs(load_scenario(TINY), ["fedit"], [0], Path("/x"), 2,
                     parse_compressions("dense:fp32"))
    assert [r.label for r in both] == ["fedit dense:fp32"]


def test_no_sweep_keeps_names() -> None:
    (run,) = plan_runs(load_scenario(TINY), ["fedsa"], [0], Path("/x"))
    assert run.label == "fedsa" and run.out == Path("/x/runs/fedsa-s0")
    assert run.config.federation.name == "tiny-fedsa-s0"


def _stats(mean: float | None, std: float = 0.0) -> dict:
    return {"mean": mean, "std": std, "n": 1}


def test_markdown_and_frontier_plot(tmp_path: Path) -> None:
    from scenarios.bench_metrics import RUN_METRICS

    labels = ["fedsa topk:0.1:int8", "fedit dense:fp32"]
    summary = {lb: {m: _stats(None) for m in RUN_METRICS} for lb in labels}
    summary[labels[0]].update(final_accuracy=_stats(0.8, 0.02),
                              bytes_up_per_device_round=_stats(12_000))
    summary[labels[1]].update(final_accuracy=_stats(0.82),
                              bytes_up_per_device_round=_stats(300_000))
    bench = {"scenario": "t", "seeds": [0], "rounds": 2, "std": "std", "runs": [],
             "algorithms": ["fedsa"], "labels": labels, "reference": labels[1],
             "summary": summary}
    md = render_markdown(bench)
    assert "| run |" in md and "| fedsa topk:0.1:int8 | 0.800 ± 0.020 |" in md
    assert "reference point of accuracy_vs_upload.png" in md
    path = tmp_path / "frontier.png"
    points = {lb: (summary[lb]["bytes_up_per_device_round"], summary[lb]["final_accuracy"])
              for lb in labels}
    plot_accuracy_vs_upload(points, labels[1], path, "t")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_cli_bad_compression_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", str(TINY), "--compression", "topk:0.1:int3",
                                      "--seeds", "0", "--out", str(out)])
    assert result.exit_code == 2
    assert "int3" in result.output and not out.exists()


@pytest.mark.integration
@pytest.mark.slow
def test_sweep_end_to_end(tmp_path: Path) -> None:
    """randk through the real broker, hubs and devices: the hub accepts every update (device
    and hub agree on the round's seed), and the frontier plot is drawn."""
    import json

    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["bench", str(TINY), "--algorithms", "fedsa",
                                      "--compression", "randk:0.25:int4:zstd", "--seeds", "0",
                                      "--rounds", "2", "--references", "none",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    bench = json.loads((out / "bench.json").read_text())
    assert "references" not in bench and not (out / "refs").exists()
    assert bench["labels"] == ["fedsa randk:0.25:int4:zstd", "fedit dense:fp32"]
    for run in bench["runs"]:
        assert run["finished"] and "error" not in run
        report = json.loads((Path(run["dir"]) / "report.json").read_text())
        assert all(r["accepted"] == r["participants"] and not r["rejected"]
                   for r in report["rounds"])
    up = {lb: bench["summary"][lb]["bytes_up_per_device_round"]["mean"] for lb in bench["labels"]}
    assert up["fedsa randk:0.25:int4:zstd"] < up["fedit dense:fp32"] / 10
    assert (out / "accuracy_vs_upload.png").read_bytes().startswith(b"\x89PNG")
    assert "| fedsa randk:0.25:int4:zstd |" in (out / "bench.md").read_text()
