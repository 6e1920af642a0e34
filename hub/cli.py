"""``hub``: run a regional or cloud hub."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedsa_common import cli_auth, cli_common
from fedsa_common.config import ConfigError, load_federation_config

SWITCH_INTERVAL_S = 0.0002  # see serve()

app = typer.Typer(help="Regional and cloud hubs of a fedsa-edge federation.",
                  no_args_is_help=True, add_completion=False)


class Role(StrEnum):
    cloud = "cloud"
    regional = "regional"


@app.callback()
def main(version: cli_common.VersionOption = False) -> None:
    """Regional and cloud hubs of a fedsa-edge federation."""
    cli_common.quiet_known_noise()


@app.command()
def serve(
    role: Annotated[Role, typer.Option(help="cloud finalizes rounds; regional pre-aggregates.")],
    federation: Annotated[str, typer.Option(help="Federation name (a topic level).")],
    state_dir: Annotated[Path, typer.Option(help="Where checkpoints and state are written.")],
    region: Annotated[str | None, typer.Option(help="Region served (regional role).")] = None,
    broker: Annotated[str | None, typer.Option(
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (TLS). Cloud role without it (and without "
             "--credentials) starts a broker (Mosquitto if installed, else the embedded one) "
             "and prints its URL.")] = None,
    credentials: cli_auth.Credentials = None,
    username: cli_auth.Username = None,
    password_file: cli_auth.PasswordFile = None,
    tls_ca: cli_auth.TlsCa = None,
    config: Annotated[Path | None, typer.Option(
        help="Federation YAML (cloud role): model, fedsa_lora, rounds, training, ...")] = None,
    payload_limit: Annotated[int, typer.Option(help="Largest MQTT payload sent (bytes).")]
    = 1_000_000,
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
    metrics_port: Annotated[int, typer.Option(
        min=0, max=65535, help="Serve Prometheus metrics on this port (0: off).")] = 0,
    metrics_host: Annotated[str, typer.Option(
        help="Address the metrics server binds; 0.0.0.0 to be scraped from other hosts.")]
    = "127.0.0.1",
    torch_threads: Annotated[int, typer.Option(
        min=1, help="Torch intra-op threads. A hub's work is many small tensor operations, "
                    "where thread hand-offs cost more than they gain (several times more on "
                    "a busy machine), so 1 unless updates are large.")] = 1,
) -> None:
    """Serve one hub until the federation finishes.

    SIGTERM stops it like Ctrl-C: state is as after the last persisted step (the next start
    resumes from it) and a broker the cloud hub started for itself is stopped with it."""
    cli_common.stop_on_sigterm()
    import torch

    from fedsa_common.logs import setup_logging

    torch.set_num_threads(torch_threads)
    # The network thread needs the GIL for every message it receives; with Python's default
    # 5 ms switch interval it waits that long behind each decode of the main thread, which
    # capped ingest at a few hundred updates per second.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    setup_logging(log_level)
    if role is Role.regional:
        if region is None:
            raise typer.BadParameter("required for --role regional", param_hint="--region")
        from hub.regional import RegionalHub

        conn = cli_auth.connection_from_options(
            broker, credentials, username, password_file, tls_ca,
            default_url="mqtt://127.0.0.1:1883", federation=federation, role="regional",
            region=region)
        assert conn.url is not None
        hub = RegionalHub(conn.url, federation, region, state_dir, payload_limit,
                          auth=conn.auth)
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

    conn = cli_auth.connection_from_options(
        broker, credentials, username, password_file, tls_ca, default_url=None,
        federation=federation, role="cloud")
    broker = conn.url
    started = None
    if broker is None:
        started = start_broker()
        broker = started.url
        typer.echo(f"started {started.kind} broker at {broker}")
    cloud = None
    try:
        cloud = CloudHub(broker, cfg, state_dir, auth=conn.auth)
        _start_metrics(cloud, metrics_port, metrics_host)
        sys.exit(cloud.run())
    finally:
        if started is not None:
            if cloud is not None:  # disconnect first, or it logs the broker's end as a loss
                cloud.session.close()
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
    federation: Annotated[str, typer.Option(help="Federation name.")],
    broker: Annotated[str | None, typer.Option(
        help="mqtt:// or mqtts:// URL of a broker the hubs use (required unless "
             "--credentials gives one).")] = None,
    credentials: cli_auth.Credentials = None,
    username: cli_auth.Username = None,
    password_file: cli_auth.PasswordFile = None,
    tls_ca: cli_auth.TlsCa = None,
    timeout: Annotated[float, typer.Option(
        min=0.5, help="Seconds to wait for retained messages.")] = 5.0,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print what was retained as JSON instead of the summary.")] = False,
) -> None:
    """Current round, participants and hub health from the retained status messages.

    Exit 0 when healthy (or finished), 1 when degraded, 2 when nothing is retained or the
    broker cannot be reached."""
    import json

    from fedsa_common.broker_auth import redact_url
    from fedsa_common.protocol import check_name
    from hub.status import collect, render

    try:
        check_name("federation", federation)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--federation") from None
    conn = cli_auth.connection_from_options(
        broker, credentials, username, password_file, tls_ca, default_url=None,
        federation=federation, role="monitor")
    if conn.url is None:
        raise typer.BadParameter("give --broker or --credentials", param_hint="--broker")
    broker = redact_url(conn.url)  # for messages
    try:
        snap = collect(conn.url, federation, timeout_s=timeout, auth=conn.auth)
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
    from scenarios.config_check import check_file

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


@app.command()
def provision(
    federation: Annotated[str, typer.Option(help="Federation name (a topic level).")],
    out: Annotated[Path, typer.Option(
        help="Output directory (created; re-running on it keeps the CA and existing "
             "passwords).")],
    region: Annotated[list[str] | None, typer.Option(
        help="REGION=DEV,DEV,... (repeatable); a region without '=' gets a hub and no "
             "devices.")] = None,
    devices: Annotated[Path | None, typer.Option(
        help="CSV of client,region rows (header optional), added to --region.")] = None,
    host: Annotated[list[str] | None, typer.Option(
        help="Host name or IP devices and hubs use to reach the broker (repeatable; all go "
             "into the server certificate, the first into the credentials' broker URL). "
             "Default: localhost and 127.0.0.1.")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="TLS listener port.")] = 8883,
    bind: Annotated[str | None, typer.Option(
        help="Address the listener binds (default: all interfaces).")] = None,
    broker_user: Annotated[str | None, typer.Option(
        help="Account a root-started Mosquitto switches to (its `user` option); the files it "
             "reads are handed to it. Use 'mosquitto' for the Debian package's service.")]
    = None,
    max_packet_bytes: Annotated[int, typer.Option(
        min=1024, help="Broker packet size cap (keep above the federation's payload_limit).")]
    = 4_000_000,
    rotate: Annotated[bool, typer.Option(
        help="Issue new passwords to every account (the CA is kept).")] = False,
) -> None:
    """Write a TLS + password + ACL configuration for Mosquitto and one credentials file per
    device, regional hub, cloud hub and monitor.

    Each device may publish only its own updates, presence and metrics and read only the
    round announcement and its own acknowledgements; see docs/security.md for the full table.
    Start the broker with `mosquitto -c OUT/mosquitto.conf`."""
    from hub.provision import (
        ProvisionSpec,
        merge_regions,
        parse_region_options,
        read_devices_csv,
        summary_text,
    )
    from hub.provision import provision as write_provision

    try:
        regions = parse_region_options(region or [])
        if devices is not None:
            regions = merge_regions(regions, read_devices_csv(devices))
        spec = ProvisionSpec(federation=federation, regions=regions,
                             hosts=host or ["localhost", "127.0.0.1"], port=port, bind=bind,
                             broker_user=broker_user, max_packet_bytes=max_packet_bytes)
        result = write_provision(spec, out, rotate=rotate)
    except (ValueError, OSError) as err:
        typer.echo(f"hub provision: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary_text(spec, result))
