"""``scenarios``: replay a federation scenario against real processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsa_common.process import cli_common

app = typer.Typer(help="Replay federation scenarios against real broker, hub and device "
                       "processes.", no_args_is_help=True, add_completion=False,
                  cls=cli_common.OneErrorStyle)


@app.callback()
def main(version: cli_common.VersionOption = False) -> None:
    """Replay federation scenarios against real broker, hub and device processes."""
    cli_common.quiet_known_noise()


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Scenario YAML, e.g. scenarios/quickstart.yaml.")],
    out: Annotated[Path, typer.Option(help="Directory for report.json, logs and state.")],
    broker: Annotated[str | None, typer.Option(
        help="Use this broker (mqtt://HOST:PORT) instead of starting one.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a value of FILE: KEY=VALUE with a dotted KEY, e.g. "
                      "round_policy.aggregation.rule=median (repeatable).")] = None,
    log_level: cli_common.LogLevel = cli_common.Level.WARNING,
) -> None:
    """Run FILE once and write OUT/report.json.

    SIGTERM stops it like Ctrl-C: every process it started (broker, hubs, device workers)
    is stopped and no report is written."""
    from edge_client.data import DataError
    from fedsa_common.federation.config import ConfigError
    from fedsa_common.process.logs import setup_logging
    from scenarios import api

    cli_common.stop_on_sigterm()
    setup_logging(log_level)
    api.check_broker(broker)
    try:
        config = api.load(file, set_)
    except (ConfigError, DataError) as err:
        raise cli_common.usage_error(str(err), str(file)) from None
    cli_common.usable_dir(out, "--out")
    try:
        report = api.run(config, out, broker=broker, echo=typer.echo)
    except (RuntimeError, TimeoutError) as err:
        typer.echo(f"scenario failed: {err}", err=True)
        raise typer.Exit(1) from None
    final = report["final"]
    acc = final["accuracy"]
    typer.echo(f"done: {final['rounds_completed']} rounds, final accuracy "
               f"{'n/a' if acc is None else f'{acc:.3f}'}, "
               f"{final['bytes_up_total']:,} bytes up, {final['wall_s']:.0f}s; "
               f"report: {out / 'report.json'}, {out / 'report.html'}")
    expectations = report.get("expectations", {})
    if not expectations.get("ok", True):
        for failure in expectations["failures"]:
            typer.echo(f"expectation failed: {failure}", err=True)
        raise typer.Exit(1)
    if expectations.get("checked"):
        typer.echo("all expectations held")


@app.command()
def bench(
    file: Annotated[Path, typer.Argument(help="Scenario YAML, e.g. scenarios/bench-20ng.yaml.")],
    out: Annotated[Path, typer.Option(help="Directory for bench.json, bench.md, plots and "
                                           "runs/ALG-sSEED/.")],
    algorithms: Annotated[str, typer.Option(
        help="Comma-separated: fedsa, fedit, ffa, local.")] = "fedsa,fedit,ffa,local",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    rounds: Annotated[int | None, typer.Option(
        min=1, help="Override the scenario's number of rounds.")] = None,
    broker: Annotated[str | None, typer.Option(
        help="Use this broker (mqtt://HOST:PORT) instead of starting one.")] = None,
    compression: Annotated[str | None, typer.Option(
        help="Sweep codecs: comma-separated METHOD:RATIO:VALUES[:bN][:zstd], e.g. "
             "'topk:0.1:int8,topk:0.01:int4,randk:0.05:int8,dense:fp32'; every algorithm "
             "runs with each, plus fedit dense:fp32 as the reference, and "
             "OUT/accuracy_vs_upload.png is drawn.")] = None,
    variant: Annotated[list[str] | None, typer.Option(
        help="Compare configuration variants (repeatable): NAME:KEY=VALUE[,KEY=VALUE] or a "
             "preset: base (the scenario as it is), prox:MU, ft:N, sim[:FLOOR], "
             "importance[:THRESHOLD], layer_wise[:LAST]; every algorithm runs with each, "
             "as runs/ALG-NAME-sSEED.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a value of FILE for every run: KEY=VALUE with a dotted KEY, "
                      "e.g. scenario.data.alpha=0.1 (repeatable).")] = None,
    references: Annotated[str, typer.Option(
        help="Reference rows computed per seed beside the algorithms: comma-separated "
             "centralized (one model trained on the union of the devices' training splits "
             "for as many samples as the federation; runs in its own process, reused on a "
             "rerun) and majority (each device predicts its most frequent training label), "
             "or none.")] = "centralized,majority",
    log_level: cli_common.LogLevel = cli_common.Level.WARNING,
) -> None:
    """Run FILE once per algorithm and seed (and codec, with --compression, or variant,
    with --variant), each as its own federation on one broker, plus the references of every
    seed, and write OUT/bench.json, OUT/bench.md and plots. Finished runs and centralized
    references are reused on a rerun."""
    from edge_client.data import DataError
    from fedsa_common.federation.config import ConfigError
    from fedsa_common.process.logs import setup_logging
    from scenarios import api
    from scenarios.bench import parse_algorithms, parse_seeds, plan_runs, run_bench
    from scenarios.bench_sweep import parse_compressions
    from scenarios.bench_variants import parse_variants
    from scenarios.config import load_scenario
    from scenarios.references import parse_references

    cli_common.stop_on_sigterm()
    setup_logging(log_level)
    api.check_broker(broker)
    try:
        refs = parse_references(references)
        algs = parse_algorithms(algorithms)
        seed_list = parse_seeds(seeds)
        sweep = None if compression is None else parse_compressions(compression)
        variants = None if variant is None else parse_variants(variant)
        if sweep is not None and variants is not None:
            raise ValueError("--variant and --compression cannot be combined")
    except ValueError as err:  # the messages name the option
        raise cli_common.usage_error(str(err)) from None
    try:
        config = load_scenario(file, set_)
        for run_ in plan_runs(config, algs, seed_list, out, rounds, sweep, variants):
            run_.config.scenario.device_data(0)  # partition=column: owners vs topology
    except (ConfigError, DataError) as err:
        raise cli_common.usage_error(str(err), str(file)) from None
    cli_common.usable_dir(out, "--out")
    result = run_bench(config, out, algs, seed_list, rounds=rounds, broker_url=broker,
                       scenario_file=str(file), compressions=sweep, variants=variants,
                       references=refs, echo=typer.echo)
    failed = [r for r in result["runs"] if "error" in r]
    failed_refs = [r for r in result.get("reference_runs", []) if "error" in r]
    frontier = f", {out / 'accuracy_vs_upload.png'}" if sweep else ""
    typer.echo(f"bench: {len(result['runs']) - len(failed)}/{len(result['runs'])} runs; "
               f"{out / 'bench.md'}, {out / 'bench.json'}, {out / 'report.html'}, "
               f"{out / 'accuracy_per_round.png'}, {out / 'accuracy_vs_bytes.png'}{frontier}")
    typer.echo((out / "bench.md").read_text())
    if failed or failed_refs:
        raise typer.Exit(1)


@app.command()
def tune(
    file: Annotated[Path, typer.Argument(help="Scenario YAML; an optional tune: section sets "
                                              "the search space.")],
    out: Annotated[Path, typer.Option(help="Directory for study.db, history.json, best.yaml "
                                           "and trials/NNN/.")],
    trials: Annotated[int, typer.Option(min=1, help="Trials the study should have finished "
                                                    "(a rerun adds only the missing ones).")]
    = 10,
    broker: Annotated[str | None, typer.Option(
        help="Use this broker (mqtt://HOST:PORT) instead of starting one.")] = None,
    log_level: cli_common.LogLevel = cli_common.Level.WARNING,
) -> None:
    """Search learning rate, LoRA rank, local steps and compression ratio with Optuna TPE,
    one real federation per trial; resumes an interrupted study from OUT/study.db."""
    from edge_client.data import DataError
    from fedsa_common.federation.config import ConfigError
    from fedsa_common.process.logs import setup_logging
    from fedsa_common.wire.errors import require_extra
    from scenarios import api

    require_extra("optuna", "tune", "scenarios tune")  # before scenarios.tune imports it
    from scenarios.tune import run_tune

    cli_common.stop_on_sigterm()
    setup_logging(log_level)
    api.check_broker(broker)
    try:
        api.load(file)  # down to the first device's data: partition=column vs topology
    except (ConfigError, DataError) as err:
        raise cli_common.usage_error(str(err), str(file)) from None
    cli_common.usable_dir(out, "--out")
    # ConfigError from the study (another tune on OUT, a study of another scenario) names
    # OUT itself: a UserError, one line and exit 2
    result = run_tune(file, trials, out, broker, echo=typer.echo)
    best = result["best"]
    if best is None:
        typer.echo(f"no trial succeeded; see {out / 'history.json'}", err=True)
        raise typer.Exit(1)
    typer.echo(f"best: trial {best['number']}, final accuracy {best['value']:.3f}, "
               f"params {best['params']}; {out / 'best.yaml'}, {out / 'history.json'}")
