"""``scenarios bench``: one scenario, once per algorithm and seed, through the real processes.

Every (algorithm, seed) is its own federation (its own name, so retained messages of runs
never mix) played by ``scenarios.runner.run_scenario`` against one broker shared by the
whole bench.  A finished run is reused when the bench is started again with the same
configuration, so a 60-minute benchmark interrupted at minute 50 costs 10 more minutes,
not 60.  Beside the algorithms every seed gets the references of ``scenarios.references``
(``majority``, and ``centralized`` trained in its own process and reused like a run), so the
tables read majority -> local -> federated -> centralized.  The numbers are computed by
``scenarios.bench_metrics``; this module runs, reuses, and writes ``bench.json``,
``bench.md`` and the plots.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedsa_common.federation.config import ConfigError, validate_model
from fedsa_common.federation.split import ALGORITHMS
from fedsa_common.net.broker import BrokerProcess, start_broker
from fedsa_common.process.atomic import write_json
from scenarios.bench_metrics import (
    PAIRED_METRICS,
    accuracy_curve,
    entry_label,
    headroom_captured,
    mean_curve,
    paired_differences,
    reference_metrics,
    run_metrics,
    summarize,
)
from scenarios.bench_plots import (
    plot_accuracy_per_round,
    plot_accuracy_vs_bytes,
    plot_accuracy_vs_upload,
)
from scenarios.bench_sweep import (
    REFERENCE_COMPRESSION,
    CompressionChoice,
    reference_label,
    sweep_pairs,
)
from scenarios.bench_table import (
    COLUMNS,
    SE_KIND,
    STD_KIND,
    format_cell,
    format_headroom,
    reference_row_name,
)
from scenarios.bench_variants import BASE as BASE_VARIANT
from scenarios.bench_variants import Variant
from scenarios.bench_variants import describe as describe_variant
from scenarios.cli_lists import parse_names
from scenarios.config import ScenarioConfig
from scenarios.overrides import apply_overrides
from scenarios.references import (
    REFERENCES,
    RESULT,
    majority_reference,
    reusable_result,
    run_centralized,
)
from scenarios.report_html import write_bench_html, write_report_html
from scenarios.runner import count_labels, run_scenario

RUN_MARKER = "bench-run.json"


@dataclass(frozen=True)
class BenchRun:
    """One (algorithm, seed) of the bench, with its overridden configuration; in a
    compression sweep also the swept codec setting (``compression``, its label); in a
    variant comparison the variant's name (``variant``; ``base`` runs as without one)."""

    algorithm: str
    seed: int
    config: ScenarioConfig
    out: Path
    compression: str | None = None
    variant: str | None = None

    @property
    def key(self) -> str:
        if self.variant not in (None, BASE_VARIANT):
            return f"{self.algorithm}-{self.variant}-s{self.seed}"
        if self.compression is None:
            return f"{self.algorithm}-s{self.seed}"
        return f"{self.algorithm}-{self.compression.replace(':', '-')}-s{self.seed}"

    @property
    def label(self) -> str:
        """What bench.md, bench.json's summary and the plots call this run's group."""
        if self.variant not in (None, BASE_VARIANT):
            return f"{self.algorithm} {self.variant}"
        return self.algorithm if self.compression is None else \
            f"{self.algorithm} {self.compression}"


def parse_algorithms(text: str) -> list[str]:
    """``fedsa,fedit`` -> names; an unknown or repeated name is a ValueError naming it."""
    return parse_names(text, "--algorithms", ALGORITHMS, "algorithm")


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> seeds; a non-integer, negative or repeated seed is a ValueError."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts:
        raise ValueError("--seeds: no seed given")
    seeds = []
    for part in parts:
        try:
            seed = int(part)
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not an integer") from None
        if seed < 0:
            raise ValueError(f"--seeds: {seed} is negative")
        seeds.append(seed)
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise ValueError(f"--seeds: {', '.join(map(str, dupes))} given more than once")
    return seeds


def run_config(base: ScenarioConfig, algorithm: str, seed: int,
               rounds: int | None = None,
               compression: CompressionChoice | None = None,
               variant: Variant | None = None) -> ScenarioConfig:
    """``base`` with the algorithm, both seeds, the federation name and optionally the
    number of rounds, the compression and a variant's overrides applied; validated like a
    scenario file (errors name the field, prefixed by the variant)."""
    data = base.model_dump(mode="json")
    data["fedsa_lora"]["algorithm"] = algorithm
    data["federation"]["seed"] = seed
    middle = algorithm if compression is None else f"{algorithm}-{compression.slug}"
    if variant is not None and not variant.plain:
        middle = f"{algorithm}-{variant.name}"
    data["federation"]["name"] = f"{base.federation.name}-{middle}-s{seed}"
    if compression is not None:  # the swept uplink codec; the scenario's downlink stays
        downlink = data["fedsa_lora"]["compression"].get("downlink")
        data["fedsa_lora"]["compression"] = {
            **compression.settings, **({"downlink": downlink} if downlink else {})}
    data["scenario"]["data"] = {**data["scenario"]["data"], "seed": seed}
    if rounds is not None:
        data["rounds"] = rounds
    if variant is not None and not variant.plain:
        data = apply_overrides(data, list(variant.overrides))
        try:
            return validate_model(ScenarioConfig, data)
        except ConfigError as err:
            raise ConfigError(f"--variant {variant.name}: {err}") from None
    return validate_model(ScenarioConfig, data)


def plan_runs(base: ScenarioConfig, algorithms: Sequence[str], seeds: Sequence[int],
              out: Path, rounds: int | None = None,
              compressions: Sequence[CompressionChoice] | None = None,
              variants: Sequence[Variant] | None = None) -> list[BenchRun]:
    """Every run of the bench, algorithm-major, configurations validated up front so that
    a bad override fails before anything starts.  With ``compressions`` every algorithm
    runs with every codec setting, plus the FedIT dense fp32 reference; with ``variants``
    every algorithm runs with every variant."""
    if variants is not None:
        if compressions is not None:
            raise ValueError("--variant and --compression cannot be combined")
        planned = []
        for alg in algorithms:
            for v in variants:
                for seed in seeds:
                    run = BenchRun(alg, seed, run_config(base, alg, seed, rounds, variant=v),
                                   out, variant=v.name)
                    planned.append(replace(run, out=out / "runs" / run.key))
        return planned
    if compressions is None:
        return [BenchRun(alg, seed, run_config(base, alg, seed, rounds),
                         out / "runs" / f"{alg}-s{seed}")
                for alg in algorithms for seed in seeds]
    return [BenchRun(alg, seed, run_config(base, alg, seed, rounds, choice),
                     out / "runs" / f"{alg}-{choice.slug}-s{seed}", choice.label)
            for alg, choice in sweep_pairs(list(algorithms), list(compressions))
            for seed in seeds]


def comparison_baselines(runs: Sequence[BenchRun]) -> dict[str, str]:
    """Label -> the label its runs are paired against: in a variant comparison the same
    algorithm's plain (``base``) runs, in a compression sweep the same algorithm's
    ``dense:fp32`` runs (uncompressed); none for a label whose baseline is not in the bench."""
    labels = {run.label for run in runs}
    out: dict[str, str] = {}
    for run in runs:
        if run.variant is not None:
            baseline = run.algorithm
        elif run.compression is not None:
            baseline = f"{run.algorithm} {REFERENCE_COMPRESSION}"
        else:
            continue
        if run.label != baseline and baseline in labels:
            out[run.label] = baseline
    return out


def scenario_digest(config: ScenarioConfig) -> str:
    """Hash of everything that can change a run's numbers.

    The report's ``config_hash`` covers only the federation configuration; data caps,
    partition and topology live in the scenario section, so they are hashed here too.
    Broker and timeout do not change results and are left out.
    """
    data = config.model_dump(mode="json")
    for key in ("broker", "timeout_s"):
        data["scenario"].pop(key, None)
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_hash(config: ScenarioConfig) -> str:
    """The ``config_hash`` that ``run_scenario`` writes into this run's report."""
    return config.federation_config(count_labels(config)).digest()


def reusable_report(run: BenchRun, expected_hash: str) -> dict[str, Any] | None:
    """The run's earlier report if it finished under the same configuration, else None."""
    report_path = run.out / "report.json"
    marker_path = run.out / RUN_MARKER
    try:
        report = json.loads(report_path.read_text())
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(marker, dict):
        return None
    if not report.get("final", {}).get("finished"):
        return None
    if report.get("config_hash") != expected_hash:
        return None
    if marker.get("scenario_digest") != scenario_digest(run.config):
        return None
    return report


def run_entry(run: BenchRun, report: dict[str, Any] | None, reused: bool,
              error: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"algorithm": run.algorithm, "seed": run.seed,
                             "federation": run.config.federation.name,
                             "dir": str(run.out), "reused": reused}
    if run.compression is not None:
        entry["compression"] = run.compression
        entry["label"] = run.label
    if run.variant is not None:
        entry["variant"] = run.variant
        entry["label"] = run.label
    if report is not None:
        entry["finished"] = bool(report.get("final", {}).get("finished"))
        entry["metrics"] = run_metrics(report)
        entry["curve"] = accuracy_curve(report)
    if error is not None:
        entry["error"] = error
    return entry


def _fmt_acc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def reference_config(base: ScenarioConfig, seed: int, rounds: int | None) -> ScenarioConfig:
    """The configuration the references of ``seed`` are computed from: the scenario as it
    is (its own algorithm, no variant or codec: references do not depend on them) with the
    seed and rounds of the bench's runs, so the devices' data are the runs' own."""
    return run_config(base, base.fedsa_lora.algorithm, seed, rounds)


def reference_entry(kind: str, seed: int, out: Path, result: dict[str, Any] | None,
                    reused: bool, error: str | None = None) -> dict[str, Any]:
    """A reference's bench entry, shaped like a run's (``label``, ``metrics``, ``curve``
    with zero bytes) so that summaries, tables and plots treat both alike."""
    entry: dict[str, Any] = {"reference": kind, "label": kind, "seed": seed,
                             "dir": str(out), "reused": reused}
    if result is not None:
        curve = [(int(r), float(acc)) for r, acc in result.get("curve", [])]
        entry["finished"] = True
        entry["metrics"] = reference_metrics(result["device_accuracy"], curve,
                                             result.get("wall_s"))
        entry["curve"] = [(r, acc, 0.0) for r, acc in curve]
        entry["device_accuracy"] = result["device_accuracy"]
        for key in ("samples", "target_samples", "steps", "pooled_train"):
            if key in result:
                entry[key] = result[key]
    if error is not None:
        entry["error"] = error
    return entry


def run_references(base: ScenarioConfig, out: Path, seeds: Sequence[int],
                   references: Sequence[str], rounds: int | None = None,
                   echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Compute (or reuse) every reference of every seed into ``out/refs/KIND-sSEED/``.

    ``majority`` takes seconds and is recomputed; ``centralized`` trains a model in a child
    process and is reused when its result was made from the same configuration.  A failed
    reference is recorded with its error and the bench goes on."""
    entries: list[dict[str, Any]] = []
    for seed in seeds:
        config = reference_config(base, seed, rounds)
        for kind in references:
            ref_dir = out / "refs" / f"{kind}-s{seed}"
            tag = f"[reference] {kind} seed {seed}"
            if kind == "majority":
                try:
                    result = majority_reference(config)
                except (OSError, ValueError) as err:
                    echo(f"{tag}: FAILED: {err}")
                    entries.append(reference_entry(kind, seed, ref_dir, None, False, str(err)))
                    continue
                write_json(ref_dir / RESULT, result)
                entries.append(reference_entry(kind, seed, ref_dir, result, reused=False))
                echo(f"{tag}: accuracy {_fmt_acc(entries[-1]['metrics']['final_accuracy'])}")
                continue
            digest = scenario_digest(config)
            result = reusable_result(ref_dir / RESULT, digest)
            if result is not None:
                entries.append(reference_entry(kind, seed, ref_dir, result, reused=True))
                echo(f"{tag}: reused {ref_dir / RESULT} (final accuracy "
                     f"{_fmt_acc(entries[-1]['metrics']['final_accuracy'])})")
                continue
            if ref_dir.exists():  # a half-finished or outdated one: start it clean
                shutil.rmtree(ref_dir)
            echo(f"{tag}: training on the devices' pooled data (log {ref_dir})")
            try:
                result = run_centralized(config, ref_dir, digest, echo=echo)
            except (RuntimeError, TimeoutError, OSError, ValueError) as err:
                echo(f"{tag}: FAILED: {err}")
                entries.append(reference_entry(kind, seed, ref_dir, None, False, str(err)))
                continue
            entry = reference_entry(kind, seed, ref_dir, result, reused=False)
            echo(f"{tag}: done in {result.get('wall_s') or 0:.0f}s, final accuracy "
                 f"{_fmt_acc(entry['metrics']['final_accuracy'])} after "
                 f"{result.get('samples')} samples")
            entries.append(entry)
    return entries


def headroom_table(summary: dict[str, Any], labels: Sequence[str]) -> dict[str, float | None]:
    """Per label, the share of the local -> centralized gap its mean final accuracy closes
    (``bench_metrics.headroom_captured`` on means over seeds); empty without both a
    ``local`` row and a ``centralized`` reference."""
    if "local" not in summary or "centralized" not in summary:
        return {}

    def mean(label: str) -> float | None:
        return summary[label]["final_accuracy"]["mean"]

    return {label: headroom_captured(mean(label), mean("local"), mean("centralized"))
            for label in labels if label != "local"}


def run_bench(base: ScenarioConfig, out: Path, algorithms: Sequence[str],
              seeds: Sequence[int], *, rounds: int | None = None,
              broker_url: str | None = None, scenario_file: str = "",
              compressions: Sequence[CompressionChoice] | None = None,
              variants: Sequence[Variant] | None = None,
              references: Sequence[str] = REFERENCES,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Compute (or reuse) the references, run (or reuse) every run, then write and return
    ``bench.json``'s content.

    A run that fails is recorded with its error and the bench goes on; the summary counts
    the runs that produced a report (``n`` per metric).  With ``compressions`` (a sweep)
    the summary, bench.md and plots group runs by label (``ALGORITHM CODEC``) and
    ``accuracy_vs_upload.png`` is drawn.  References are summarized under their own names
    beside the runs' groups.
    """
    runs = plan_runs(base, algorithms, seeds, out, rounds, compressions, variants)
    out.mkdir(parents=True, exist_ok=True)
    ref_entries = run_references(base, out, seeds, references, rounds, echo)
    broker_url = broker_for(base, broker_url)
    broker: BrokerProcess | None = None
    entries: list[dict[str, Any]] = []
    try:
        for i, run in enumerate(runs, 1):
            tag = f"[{i}/{len(runs)}] {run.label} seed {run.seed}"
            expected = config_hash(run.config)
            report = reusable_report(run, expected)
            if report is not None:
                if not (run.out / "report.html").exists():  # made before report.html existed
                    write_report_html(report, run.out)
                entry = run_entry(run, report, reused=True)
                echo(f"{tag}: reused {run.out / 'report.json'} (final accuracy "
                     f"{_fmt_acc(entry['metrics']['final_accuracy'])})")
                entries.append(entry)
                continue
            if broker_url is None:
                broker = start_bench_broker(base, out)
                broker_url = broker.url
                echo(f"started {broker.kind} broker at {broker_url} for the whole bench")
            if run.out.exists():  # a half-finished or outdated run: start it clean
                shutil.rmtree(run.out)
            echo(f"{tag}: starting ({run.config.rounds} rounds, federation "
                 f"{run.config.federation.name}, output {run.out})")
            try:
                report = run_scenario(run.config, run.out, broker_url, echo=echo)
            except (RuntimeError, TimeoutError, OSError, ValueError) as err:
                echo(f"{tag}: FAILED: {err}")
                entries.append(run_entry(run, None, reused=False, error=str(err)))
                continue
            write_json(run.out / RUN_MARKER, {"algorithm": run.algorithm, "seed": run.seed,
                                              "scenario_digest": scenario_digest(run.config),
                                              **({"compression": run.compression}
                                                 if run.compression else {}),
                                              **({"variant": run.variant}
                                                 if run.variant else {})})
            entry = run_entry(run, report, reused=False)
            m = entry["metrics"]
            echo(f"{tag}: done in {m['wall_s'] or 0:.0f}s, final accuracy "
                 f"{_fmt_acc(m['final_accuracy'])}, best {_fmt_acc(m['best_accuracy'])}")
            entries.append(entry)
    finally:
        if broker is not None:
            broker.stop()
    bench = {
        "scenario": base.scenario.name,
        "scenario_file": scenario_file,
        "algorithms": list(algorithms),
        "seeds": list(seeds),
        "rounds": runs[0].config.rounds if runs else None,
        "std": STD_KIND,
        "runs": entries,
        "summary": summarize(entries, algorithms),
    }
    if compressions is not None:  # a sweep: runs are grouped by label, not by algorithm
        labels = list(dict.fromkeys(run.label for run in runs))
        bench.update(compressions=[c.label for c in compressions], labels=labels,
                     reference=reference_label(),
                     summary=summarize(entries, labels, key="label"))
    if variants is not None:  # a comparison: runs are grouped by label as well
        labels = list(dict.fromkeys(run.label for run in runs))
        bench.update(variants=[{"name": v.name, "overrides": list(v.overrides)}
                               for v in variants],
                     labels=labels, summary=summarize(entries, labels, key="label"))
    baselines = comparison_baselines(runs)
    if baselines:
        bench["paired"] = paired_differences(entries, baselines)
    bench["se"] = SE_KIND
    if references:
        bench.update(references=list(references), reference_runs=ref_entries)
        bench["summary"].update(summarize(ref_entries, references, key="label"))
        headroom = headroom_table(bench["summary"], bench.get("labels", bench["algorithms"]))
        if headroom:
            bench["headroom"] = headroom
    write_outputs(bench, out)
    return bench


def start_bench_broker(base: ScenarioConfig, out: Path) -> BrokerProcess:
    """The scenario's broker kind (auto, mosquitto, embedded), started once for all runs."""
    kind = base.scenario.broker
    if kind.startswith("mqtt://"):
        raise ConfigError("start_bench_broker: scenario.broker is a URL; pass it instead")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    return start_broker(kind, log_path=out / "logs" / "broker.log")  # type: ignore[arg-type]


def broker_for(base: ScenarioConfig, cli_broker: str | None) -> str | None:
    """The URL to use when one is given (``--broker`` or a URL in the scenario), else None
    (the bench starts its own)."""
    if cli_broker is not None:
        return cli_broker
    return base.scenario.broker if base.scenario.broker.startswith("mqtt://") else None


# outputs --------------------------------------------------------------------------------
_PAIRED_TITLES = {"final_accuracy": "final − baseline", "worst10_accuracy": "worst-10% − baseline"}


def _paired_cells(bench: dict[str, Any], label: str) -> list[str]:
    """The paired-difference cells of one bench.md row, in accuracy points."""
    entry = bench["paired"].get(label)
    cells = []
    for metric in PAIRED_METRICS:
        stats = entry[metric] if entry else None
        if stats is None or stats["mean"] is None:
            cells.append("–")
        else:
            cells.append(f"{100 * stats['mean']:+.1f} ± {100 * stats['std']:.1f} pts")
    return cells


def render_markdown(bench: dict[str, Any]) -> str:
    """``bench.md``: one row per algorithm (per run label in a compression sweep), then one
    per reference, ``mean ± std`` cells (pure)."""
    seeds = bench["seeds"]
    sweep = "labels" in bench
    paired = "paired" in bench
    headroom = bench.get("headroom")
    titles = [title for _, title, _ in COLUMNS]
    if headroom:
        titles.append("headroom captured")
    if paired:
        titles += [_PAIRED_TITLES[m] for m in PAIRED_METRICS]
    lines = [
        f"# Benchmark: {bench['scenario']}",
        "",
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}), {bench['rounds']} rounds; "
        f"cells are mean ± {bench['std']}.",
        "",
        f"| {'run' if sweep else 'algorithm'} | " + " | ".join(titles) + " |",
        "|---|" + "---:|" * len(titles),
    ]
    references = bench.get("references") or []
    for alg in [*(bench["labels"] if sweep else bench["algorithms"]), *references]:
        cells = [format_cell(bench["summary"][alg].get(metric), metric, fmt)
                 for metric, _, fmt in COLUMNS]
        if headroom:
            cells.append(format_headroom(headroom.get(alg)))
        if paired:
            cells += _paired_cells(bench, alg)
        name = reference_row_name(alg) if alg in references else alg
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "final = last round, best = best round (the FedSA-LoRA paper reports the best round); "
        "accuracies are mean personalized test accuracy over devices; worst-10% = mean over "
        "the worst 10% of devices (at least one) in the last round; rounds to 95% = the "
        "first round whose mean reaches 95% of the last round's; global = the shared "
        "global LoRA with each device's own head, measured before local training (only "
        "fedit and ffa have one).",
        "",
        f"SE over devices: {bench.get('se', SE_KIND)}; it is how much the mean would move "
        "with other test texts on the same devices, the ± beside each mean is how much it "
        "moves with the seed (partition and initialisation).",
    ]
    if references:
        lines += ["", "References (same devices, data and test splits as the runs of each "
                  "seed): majority = each device predicts its own most frequent training "
                  "label; centralized = one model (LoRA A, B and head trained, the devices' "
                  "optimizer settings) trained on the union of all devices' training splits "
                  "for as many samples as the whole federation processes, evaluated on each "
                  "device's own test split; its best acc is the best round's worth."]
    if headroom:
        lines += ["", "headroom captured = (final acc − local's) / (centralized's − local's) "
                  "on means over seeds: the share of what pooling the data adds over "
                  "training alone that the row gets (– where centralized is no better than "
                  "local)."]
    if paired:
        baselines = sorted({e["baseline"] for e in bench["paired"].values()})
        lines += ["", "− baseline: mean ± std over seeds of (the run's figure − its baseline's "
                  "on the same seed), in accuracy points; the seed fixes the data partition "
                  "and initialisation, so this is the comparison to read. Baselines: "
                  + ", ".join(baselines) + "."]
    if "variants" in bench:
        lines += ["", "Runs are ALGORITHM VARIANT (ALGORITHM alone: the scenario as it is); "
                  "variants: " + "; ".join(describe_variant(Variant(v["name"],
                                                                      tuple(v["overrides"])))
                                           for v in bench["variants"]) + "."]
    if "reference" in bench:  # a compression sweep
        lines += ["", f"Runs are ALGORITHM CODEC (see `scenarios bench --help`); "
                  f"{bench['reference']} (A and B shared, uncompressed) is the reference "
                  "point of accuracy_vs_upload.png."]
    failed = [r for r in [*bench["runs"], *bench.get("reference_runs", [])] if "error" in r]
    if failed:
        lines += ["", "Failed runs (not counted): "
                  + ", ".join(f"{entry_label(r)} seed {r['seed']}" for r in failed) + "."]
    return "\n".join(lines) + "\n"


def write_outputs(bench: dict[str, Any], out: Path) -> None:
    """bench.json, bench.md, the two plots (three in a compression sweep) and report.html
    (the plots embedded)."""
    write_json(out / "bench.json", bench)
    (out / "bench.md").write_text(render_markdown(bench))
    groups = bench.get("labels", bench["algorithms"])
    curves = {g: mean_curve([r["curve"] for r in bench["runs"]
                             if entry_label(r) == g and r.get("curve")])
              for g in groups}
    # the centralized reference has a curve (per round's worth of samples), majority a level
    references = bench.get("references") or []
    ref_curves = {reference_row_name(k): mean_curve(
        [r["curve"] for r in bench.get("reference_runs", [])
         if r["reference"] == k and r.get("curve")]) for k in references if k != "majority"}
    levels = {reference_row_name(k): bench["summary"][k]["final_accuracy"]["mean"]
              for k in references if k == "majority"}
    title = f"{bench['scenario']}: mean over seeds {bench['seeds']}"
    plot_accuracy_per_round({**curves, **ref_curves}, out / "accuracy_per_round.png", title,
                            levels={k: v for k, v in levels.items() if v is not None})
    plot_accuracy_vs_bytes(curves, out / "accuracy_vs_bytes.png", title)
    if "reference" in bench:  # a compression sweep
        points = {g: (bench["summary"][g]["bytes_up_per_device_round"],
                      bench["summary"][g]["final_accuracy"]) for g in groups}
        plot_accuracy_vs_upload(points, bench["reference"], out / "accuracy_vs_upload.png",
                                title)
    write_bench_html(bench, out)
