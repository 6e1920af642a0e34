"""``scenarios bench --variant``: parsing and planning (pure), and one variant run end to end
on the tiny scenario (real broker, hubs and devices started by the bench)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scenarios.bench import comparison_baselines, plan_runs, render_markdown
from scenarios.bench_sweep import parse_compressions
from scenarios.bench_variants import Variant, parse_variant, parse_variants
from scenarios.cli import app
from scenarios.config import load_scenario

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"


@pytest.mark.parametrize(("item", "name", "overrides"), [
    ("base", "base", ()),
    ("prox:0.01", "prox-0.01", ("fedsa_lora.personalization.proximal_mu=0.01",)),
    ("ft:2", "ft-2", ("fedsa_lora.personalization.finetune_steps=2",)),
    ("sim", "sim", ("round_policy.aggregation.weighting=similarity",)),
    ("sim:0.3", "sim-0.3", ("round_policy.aggregation.weighting=similarity",
                            "round_policy.aggregation.similarity_floor=0.3")),
    ("adam:0.03", "adam-0.03", ("server_optimizer.name=adam", "server_lr=0.03")),
    ("yogi:0.1", "yogi-0.1", ("server_optimizer.name=yogi", "server_lr=0.1")),
    ("avgm", "avgm", ("server_optimizer.name=avgm",)),
    ("avgm:0.5", "avgm-0.5", ("server_optimizer.name=avgm", "server_lr=0.5")),
    ("headshare:3", "headshare-3", ("fedsa_lora.personalization.share_head_rounds=3",)),
    ("headshare:all", "headshare-all", ("fedsa_lora.personalization.share_head_rounds=all",)),
    ("epochs:0.5", "epochs-0.5", ("training.local_epochs=0.5",)),
    ("personal", "personal", ("fedsa_lora.personalization.personal_head=true",)),
    ("init:b_random", "init-b_random", ("model.lora.init=b_random",)),
    ("cosine:2", "cosine-2", ("training.lr_schedule=cosine", "training.warmup_steps=2")),
    ("mine:training.lr=0.01, fedsa_lora.adaptive_split={enable: true, strategy: layer_wise, "
     "layers: [{layers: 0-1, share: [lora_A, lora_B]}]}", "mine",
     ("training.lr=0.01", "fedsa_lora.adaptive_split={enable: true, strategy: layer_wise, "
      "layers: [{layers: 0-1, share: [lora_A, lora_B]}]}")),
])
def test_variants_parse_to_named_overrides(item, name, overrides) -> None:
    assert parse_variant(item) == Variant(name, overrides)


@pytest.mark.parametrize("item", ["prox", "prox:x", "ft:1.5", "fedprox:0.1", "base:rounds=2",
                                  "a b:rounds=2", "x:rounds", "adam", "yogi:fast", "headshare",
                                  "headshare:1.5", "epochs:x", "cosine", "init:zero"])
def test_bad_variants_name_themselves(item) -> None:
    with pytest.raises(ValueError, match="--variant"):
        parse_variant(item)


def test_repeated_variant_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"prox-0\.1 given more than once"):
        parse_variants(["prox:0.1", "prox:0.1"])


def test_plan_keeps_base_runs_and_names_variant_runs() -> None:
    base = load_scenario(TINY, ["scenario.data.alpha=0.1"])
    variants = parse_variants(["base", "importance:0.5", "layer_wise:0"])
    runs = plan_runs(base, ["fedsa"], [1], Path("/x"), rounds=2, variants=variants)
    assert [r.out.name for r in runs] == ["fedsa-s1", "fedsa-importance-0.5-s1",
                                          "fedsa-layer_wise-0-s1"]
    assert [r.label for r in runs] == ["fedsa", "fedsa importance-0.5", "fedsa layer_wise-0"]
    plain = plan_runs(base, ["fedsa"], [1], Path("/x"), rounds=2)[0]
    assert runs[0].config == plain.config  # so a finished plain run is reused
    assert runs[1].config.federation.name == "tiny-fedsa-importance-0.5-s1"
    assert runs[1].config.fedsa_lora.adaptive_split.threshold == 0.5
    assert runs[2].config.fedsa_lora.adaptive_split.rules() == [
        (0, 0, frozenset({"lora_A", "lora_B"}))]
    assert all(r.config.scenario.data["alpha"] == 0.1 for r in runs)
    (adam,) = plan_runs(base, ["fedit"], [1], Path("/x"), rounds=2,
                        variants=parse_variants(["adam:0.03"]))
    assert adam.config.server_optimizer.name == "adam" and adam.config.server_lr == 0.03


def test_lever_presets_plan_valid_configs() -> None:
    base = load_scenario(TINY)
    variants = parse_variants(["headshare:1", "epochs:2", "cosine:1"])
    head, epochs, cosine = (r.config for r in plan_runs(base, ["fedsa"], [0], Path("/x"),
                                                          rounds=2, variants=variants))
    assert head.fedsa_lora.personalization.share_head_rounds == 1
    assert epochs.training.local_epochs == 2.0
    assert (cosine.training.lr_schedule, cosine.training.warmup_steps) == ("cosine", 1)


def test_a_variant_that_does_not_validate_fails_before_anything_starts(tmp_path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", str(TINY), "--algorithms", "ffa", "--seeds",
                                      "0", "--variant", "importance", "--out", str(out)])
    assert result.exit_code == 2
    assert "--variant importance" in result.output and "not ffa" in result.output
    assert not out.exists()


@pytest.mark.integration
def test_one_variant_runs_end_to_end(tmp_path) -> None:
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [
        "bench", str(TINY), "--algorithms", "fedsa", "--seeds", "0", "--rounds", "2",
        "--variant", "prox:0.01", "--set", "scenario.data.alpha=1.0",
        "--references", "majority", "--out", str(out)])
    assert result.exit_code == 0, result.output
    bench = json.loads((out / "bench.json").read_text())
    assert bench["labels"] == ["fedsa prox-0.01"]
    assert bench["variants"] == [{"name": "prox-0.01",
                                  "overrides": ["fedsa_lora.personalization.proximal_mu=0.01"]}]
    (run,) = bench["runs"]
    assert run["finished"] and run["variant"] == "prox-0.01"
    for metric in ("final_accuracy", "worst10_accuracy", "bytes_up_per_device_round"):
        assert math.isfinite(run["metrics"][metric]), metric
    assert bench["summary"]["fedsa prox-0.01"]["final_accuracy"]["n"] == 1
    report = json.loads((out / "runs" / "fedsa-prox-0.01-s0" / "report.json").read_text())
    assert report["final"]["rounds_completed"] == 2
    md = (out / "bench.md").read_text()
    assert "| fedsa prox-0.01 |" in md
    # the majority reference of the scenario's own data (alpha 1.0 as set), beside the runs
    assert bench["references"] == ["majority"]
    (ref,) = bench["reference_runs"]
    assert ref["seed"] == 0 and 0 < ref["metrics"]["final_accuracy"] <= 1
    assert "| majority (reference) |" in md and "headroom" not in md
    assert "`fedsa_lora.personalization.proximal_mu=0.01`" in md


def test_variants_pair_with_base_and_sweeps_with_dense_of_the_same_algorithm() -> None:
    base = load_scenario(TINY)
    with_base = plan_runs(base, ["fedsa", "fedit"], [0], Path("/x"), rounds=2,
                          variants=parse_variants(["base", "ft:2"]))
    assert comparison_baselines(with_base) == {"fedsa ft-2": "fedsa", "fedit ft-2": "fedit"}
    without = plan_runs(base, ["fedsa"], [0], Path("/x"), rounds=2,
                        variants=parse_variants(["ft:2"]))
    assert comparison_baselines(without) == {}
    sweep = plan_runs(base, ["fedsa"], [0], Path("/x"), 2,
                      parse_compressions("dense:fp32,topk:0.05:int8"))
    # the fedit reference has no fedit dense run of its own to pair with but itself
    assert comparison_baselines(sweep) == {"fedsa topk:0.05:int8": "fedsa dense:fp32"}
    assert comparison_baselines(plan_runs(base, ["fedsa"], [0], Path("/x"))) == {}


def test_markdown_shows_paired_columns_in_points() -> None:
    from scenarios.bench_metrics import RUN_METRICS

    labels = ["fedsa", "fedsa ft-2"]
    summary = {lb: {m: {"mean": 0.7, "std": 0.01, "n": 2} for m in RUN_METRICS}
               for lb in labels}
    bench = {"scenario": "t", "seeds": [0, 1], "rounds": 2, "std": "std", "runs": [],
             "algorithms": ["fedsa"], "labels": labels, "summary": summary,
             "variants": [{"name": "base", "overrides": []},
                          {"name": "ft-2", "overrides": ["x=1"]}],
             "paired": {"fedsa ft-2": {
                 "baseline": "fedsa", "seeds": [0, 1],
                 "final_accuracy": {"mean": 0.0734, "std": 0.0123, "n": 2},
                 "worst10_accuracy": {"mean": -0.02, "std": 0.0, "n": 2}}}}
    md = render_markdown(bench)
    assert "| final − baseline | worst-10% − baseline |" in md
    assert md.count("|---|") == 1 and "---:|" * 9 in md
    assert "| +7.3 ± 1.2 pts | -2.0 ± 0.0 pts |" in md
    assert next(line for line in md.splitlines() if line.startswith("| fedsa |")).endswith(
        "| – | – |")
    assert "Baselines: fedsa." in md
