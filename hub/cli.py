"""``hub``: run a regional or cloud hub."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedsa_common.config import ConfigError, load_federation_config

app = typer.Typer(help="Regional and cloud hubs of a fedsa-edge federation.",
                  no_args_is_help=True, add_completion=False)


class Role(StrEnum):
    cloud = "cloud"
    regional = "regional"


@app.callback()
def main() -> None:
    """Regional and cloud hubs of a fedsa-edge federation."""


@app.command()
def serve(
    role: Annotated[Role, typer.Option(help="cloud finalizes rounds; regional pre-aggregates.")],
    federation: Annotated[str, typer.Option(help="Federation name (a topic level).")],
    state_dir: Annotated[Path, typer.Option(help="Where checkpoints and state are written.")],
    region: Annotated[str | None, typer.Option(help="Region served (regional role).")] = None,
    broker: Annotated[str | None, typer.Option(
        help="mqtt://HOST:PORT. Cloud role without it starts a broker (Mosquitto if installed, "
             "else the embedded one) and prints its URL.")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Federation YAML (cloud role): model, fedsa_lora, rounds, training, ...")] = None,
    payload_limit: Annotated[int, typer.Option(help="Largest MQTT payload sent (bytes).")]
    = 1_000_000,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
    metrics_port: Annotated[int, typer.Option(
        min=0, max=65535, help="Serve Prometheus metrics on this port (0: off).")] = 0,
    metrics_host: Annotated[str, typer.Option(
        help="Address the metrics server binds; 0.0.0.0 to be scraped from other hosts.")]
    = "127.0.0.1",
) -> None:
    """Serve one hub until the federation finishes."""
    from fedsa_common.logs import setup_logging

    setup_logging(log_level)
    if role is Role.regional:
        if region is None:
            raise typer.BadParameter("required for --role regional", param_hint="--region")
        from hub.regional import RegionalHub

        hub = RegionalHub(broker or "mqtt://127.0.0.1:1883", federation, region, state_dir,
                          payload_limit)
        _start_metrics(hub, metrics_port, metrics_host)
        sys.exit(hub.run())
    try:
        cfg = load_federation_config(config)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"name": federation})})
    from fedsa_common.broker import start_broker
    from hub.cloud import CloudHub

    started = None
    if broker is None:
        started = start_broker()
        broker = started.url
        typer.echo(f"started {started.kind} broker at {broker}")
    try:
        cloud = CloudHub(broker, cfg, state_dir)
        _start_metrics(cloud, metrics_port, metrics_host)
        sys.exit(cloud.run())
    finally:
        if started is not None:
            started.stop()


def _start_metrics(hub: object, port: int, host: str) -> None:
    if not port:
        return
    from hub.metrics import serve_metrics

    try:
        serve_metrics(hub, port, host)  # type: ignore[arg-type]
    except OSError as err:
        typer.echo(f"--metrics-port {port}: cannot serve metrics on {host}: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def status(
    broker: Annotated[str, typer.Option(help="mqtt://HOST:PORT of a broker the hubs use.")],
    federation: Annotated[str, typer.Option(help="Federation name.")],
    timeout: Annotated[float, typer.Option(
        min=0.5, help="Seconds to wait for retained messages.")] = 5.0,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print what was retained as JSON instead of the summary.")] = False,
) -> None:
    """Current round, participants and hub health from the retained status messages.

    Exit 0 when healthy (or finished), 1 when degraded, 2 when nothing is retained or the
    broker cannot be reached."""
    import json

    from fedsa_common.protocol import check_name
    from hub.status import collect, render

    try:
        check_name("federation", federation)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--federation") from None
    try:
        snap = collect(broker, federation, timeout_s=timeout)
    except (ConnectionError, ValueError) as err:
        typer.echo(f"cannot read status from {broker}: {err}", err=True)
        raise typer.Exit(2) from None
    if snap.empty:
        typer.echo(f"no retained status for federation {federation!r} on {broker} within "
                   f"{timeout:g}s: check the federation name and broker (hubs publish their "
                   "status once connected)", err=True)
        raise typer.Exit(2)
    if json_out:
        typer.echo(json.dumps({"federation": federation, "statuses": snap.statuses,
                               "announce": snap.announce, "presence": snap.presence},
                              indent=2))
    text, healthy = render(snap)
    if not json_out:
        typer.echo(text)
    raise typer.Exit(0 if healthy else 1)


config_app = typer.Typer(help="Validate configuration files and print templates.",
                         no_args_is_help=True, add_completion=False)
app.add_typer(config_app, name="config")


@config_app.command("validate")
def config_validate(
    file: Annotated[Path, typer.Argument(help="A federation config or a scenario file.")],
) -> None:
    """Check FILE and report every error with its field path (exit 2), or print a one-line
    summary (exit 0)."""
    from hub.config_check import check_file

    result = check_file(file)
    if result.ok:
        typer.echo(result.summary)
        return
    noun = "error" if len(result.errors) == 1 else "errors"
    what = f" in this {result.kind} file" if result.kind else ""
    typer.echo(f"{file}: {len(result.errors)} {noun}{what}:", err=True)
    for err in result.errors:
        typer.echo(f"  {err}", err=True)
    raise typer.Exit(2)


@config_app.command("template")
def config_template(
    name: Annotated[str | None, typer.Argument(help="Template name; none lists them.")] = None,
) -> None:
    """Print a ready configuration template (validate-clean) to standard output."""
    from hub.templates import TEMPLATES

    if name is None:
        for key, (about, _) in TEMPLATES.items():
            typer.echo(f"{key:<16} {about}")
        return
    if name not in TEMPLATES:
        typer.echo(f"unknown template {name!r}; available: {', '.join(TEMPLATES)}", err=True)
        raise typer.Exit(2)
    typer.echo(TEMPLATES[name][1], nl=False)
