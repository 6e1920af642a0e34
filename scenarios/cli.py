"""``scenarios``: replay a federation scenario against real processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Replay federation scenarios against real broker, hub and device "
                       "processes.", no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """Replay federation scenarios against real broker, hub and device processes."""


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Scenario YAML, e.g. scenarios/quickstart.yaml.")],
    out: Annotated[Path, typer.Option(help="Directory for report.json, logs and state.")],
    broker: Annotated[str | None, typer.Option(
        help="Use this broker (mqtt://HOST:PORT) instead of starting one.")] = None,
    log_level: Annotated[str, typer.Option()] = "WARNING",
) -> None:
    """Run FILE once and write OUT/report.json."""
    from edge_client.data import DataError
    from fedsa_common.config import ConfigError
    from fedsa_common.logs import setup_logging
    from scenarios.config import load_scenario
    from scenarios.runner import run_scenario

    setup_logging(log_level)
    try:
        config = load_scenario(file)
        config.scenario.device_data(0)  # partition=column: owners vs topology
    except (ConfigError, DataError) as err:
        typer.echo(f"{file}: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        report = run_scenario(config, out, broker, echo=typer.echo)
    except (RuntimeError, TimeoutError) as err:
        typer.echo(f"scenario failed: {err}", err=True)
        raise typer.Exit(1) from None
    final = report["final"]
    acc = final["accuracy"]
    typer.echo(f"done: {final['rounds_completed']} rounds, final accuracy "
               f"{'n/a' if acc is None else f'{acc:.3f}'}, "
               f"{final['bytes_up_total']:,} bytes up, {final['wall_s']:.0f}s; "
               f"report: {out / 'report.json'}")


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
    log_level: Annotated[str, typer.Option()] = "WARNING",
) -> None:
    """Run FILE once per algorithm and seed, each as its own federation on one broker, and
    write OUT/bench.json, OUT/bench.md and plots. Finished runs are reused on a rerun."""
    from edge_client.data import DataError
    from fedsa_common.config import ConfigError
    from fedsa_common.logs import setup_logging
    from scenarios.bench import parse_algorithms, parse_seeds, plan_runs, run_bench
    from scenarios.config import load_scenario

    setup_logging(log_level)
    try:
        algs = parse_algorithms(algorithms)
        seed_list = parse_seeds(seeds)
    except ValueError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    try:
        config = load_scenario(file)
        for run_ in plan_runs(config, algs, seed_list, out, rounds):
            run_.config.scenario.device_data(0)  # partition=column: owners vs topology
    except (ConfigError, DataError) as err:
        typer.echo(f"{file}: {err}", err=True)
        raise typer.Exit(2) from None
    result = run_bench(config, out, algs, seed_list, rounds=rounds, broker_url=broker,
                       scenario_file=str(file), echo=typer.echo)
    failed = [r for r in result["runs"] if "error" in r]
    typer.echo(f"bench: {len(result['runs']) - len(failed)}/{len(result['runs'])} runs; "
               f"{out / 'bench.md'}, {out / 'bench.json'}, {out / 'accuracy_per_round.png'}, "
               f"{out / 'accuracy_vs_bytes.png'}")
    typer.echo((out / "bench.md").read_text())
    if failed:
        raise typer.Exit(1)
