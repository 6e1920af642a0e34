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
        sys.exit(CloudHub(broker, cfg, state_dir).run())
    finally:
        if started is not None:
            started.stop()
