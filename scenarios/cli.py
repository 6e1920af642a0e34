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
    from fedsa_common.config import ConfigError
    from fedsa_common.logs import setup_logging
    from scenarios.config import load_scenario
    from scenarios.runner import run_scenario

    setup_logging(log_level)
    try:
        config = load_scenario(file)
    except ConfigError as err:
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
