"""``hub``: run a regional or cloud hub."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedsa_common.federation.config import ConfigError, load_federation_config
from fedsa_common.net.broker_auth import Credentials, read_authority_file
from fedsa_common.process import cli_auth, cli_common
from fedsa_common.wire.shards import MAX_INTAKE_SHARDS
from hub.metrics_devices import MAX_DEVICES

if TYPE_CHECKING:
    from fedsa_common.net.broker_auth import BrokerAuth
    from fedsa_common.net.broker_auth import Role as Account
    from fedsa_common.net.transport import MqttSession
    from fedsa_common.wire.protocol import Control
    from hub.lifecycle import Retained

app = typer.Typer(help="Regional and cloud hubs of a fedsa-edge federation.",
                  no_args_is_help=True, add_completion=False, cls=cli_common.OneErrorStyle)


class Role(StrEnum):
    cloud = "cloud"
    regional = "regional"
    intake = "intake"


@app.callback()
def main(version: cli_common.VersionOption = False) -> None:
    """Regional and cloud hubs of a fedsa-edge federation."""
    cli_common.quiet_known_noise()


@app.command()
def serve(
    role: Annotated[Role, typer.Option(
        help="cloud finalizes rounds; regional pre-aggregates; intake is one of a region's "
             "intake processes (started by `--role regional --intake-shards K`).")],
    federation: Annotated[str, typer.Option(help="Federation name (a topic level).")],
    state_dir: Annotated[Path, typer.Option(help="Where checkpoints and state are written.")],
    region: Annotated[str | None, typer.Option(
        help="Region served (regional and intake roles).")] = None,
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
    metrics_max_devices: Annotated[int, typer.Option(
        min=0, help="Cloud role: at most this many devices get per-device metric series "
                    "(fedsa_hub_device_*; online ones and the latest updates first, the rest "
                    "counted in fedsa_hub_devices_unlisted); 0: none.")] = MAX_DEVICES,
    connect_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for the broker; then exit 2 naming it.")] = 300.0,
    report_every: Annotated[float, typer.Option(
        min=0.1, help="Seconds between 'still waiting for ...' lines while the broker, the "
                      "federation's first announcement (regional role) or enough devices "
                      "(cloud role) are awaited.")] = 30.0,
    hub_grace: Annotated[float, typer.Option(
        min=0, help="Cloud role: seconds a region's devices may be online before its "
                    "regional hub's status is seen; after that the region's devices are not "
                    "selected until its hub serves (a region without a hub cannot deliver "
                    "updates, and every round would run to its deadline).")] = 30.0,
    torch_threads: Annotated[int, typer.Option(
        min=1, help="Torch intra-op threads. A hub's work is many small tensor operations, "
                    "where thread hand-offs cost more than they gain (several times more on "
                    "a busy machine), so 1 unless updates are large.")] = 1,
    secagg_authority: Annotated[Path | None, typer.Option(
        help="Regional role, secure aggregation: the authority's public key "
             "(secagg-authority.pub from `hub provision`; a provisioned regional hub's "
             "--credentials already hold it). With it the hub leaves a device whose "
             "certificate does not verify out of the round instead of failing the region's "
             "round.")] = None,
    intake_shards: Annotated[int, typer.Option(
        min=1, max=MAX_INTAKE_SHARDS,
        help="Regional role: serve the region with this many intake processes (children of "
             "this one, each using a core), for a region whose updates one process cannot "
             "keep up with. Must equal the federation configuration's intake_shards for the "
             "region (devices publish to the process of their shard). 1: one process.")] = 1,
    shard: Annotated[int | None, typer.Option(
        min=0, help="Intake role: which of the --intake-shards processes this is (0-based); "
                    "the regional hub starts these itself.")] = None,
    leader_pid: Annotated[int | None, typer.Option(
        hidden=True, min=1, help="Intake role: the region leader's pid; stop once it is "
                                 "gone (its intake pool passes it).")] = None,
) -> None:
    """Serve one hub until the federation finishes.

    A cloud hub restarted with the same --state-dir resumes from its checkpoint; its
    configuration may change only in `rounds` (more rounds extend the federation, see `hub
    federation`). SIGTERM stops it like Ctrl-C: state is as after the last persisted step
    (the next start resumes from it) and a broker the cloud hub started for itself is
    stopped with it."""
    cli_common.stop_on_sigterm()
    cli_common.check_names(("--federation", "federation", federation),
                           *([("--region", "region", region)] if region is not None else []))
    cli_common.usable_dir(state_dir, "--state-dir")
    from fedsa_common.process.logs import setup_logging
    from hub import api

    api.tune_process(torch_threads)
    setup_logging(log_level)
    common = {"metrics_port": metrics_port, "metrics_host": metrics_host,
               "connect_timeout_s": connect_timeout, "report_every_s": report_every}
    if role in (Role.regional, Role.intake):
        if region is None:
            raise cli_common.usage_error(f"required for --role {role}", "--region")
        conn = cli_auth.connection_from_options(
            broker, credentials, username, password_file, tls_ca,
            default_url="mqtt://127.0.0.1:1883", federation=federation, role="regional",
            region=region)
        assert conn.url is not None
        if role is Role.intake:
            if shard is None or shard >= intake_shards:
                raise cli_common.usage_error(f"--role intake needs 0 <= --shard < "
                                             f"--intake-shards ({intake_shards})", "--shard")
            sys.exit(api.serve_intake(conn.url, federation, region, shard, intake_shards,
                                      state_dir, auth=conn.auth, payload_limit=payload_limit,
                                      connect_timeout_s=connect_timeout,
                                      report_every_s=report_every, leader_pid=leader_pid))
        authority = _secagg_authority(secagg_authority, conn.credentials)
        children = {"federation": federation, "region": region, "broker": broker,
                    "credentials": credentials, "username": username,
                    "password_file": password_file, "tls_ca": tls_ca,
                    "payload_limit": payload_limit, "log_level": log_level.value,
                    "connect_timeout": connect_timeout, "report_every": report_every,
                    "torch_threads": torch_threads}
        # BrokerUnreachable is a UserError: one line, exit 2
        sys.exit(api.serve_regional(conn.url, federation, region, state_dir, auth=conn.auth,
                                    payload_limit=payload_limit,
                                    secagg_authority=authority, intake_shards=intake_shards,
                                    intake_options=children, **common))
    config_hint = "--config" if config is None else f"--config {config}"
    try:  # found now, not after the broker and hub started
        cfg = api.cloud_config(config, federation)
    except ConfigError as err:
        raise cli_common.usage_error(str(err), config_hint) from None
    conn = cli_auth.connection_from_options(
        broker, credentials, username, password_file, tls_ca, default_url=None,
        federation=federation, role="cloud")
    from hub.lifecycle import LifecycleError

    try:
        sys.exit(api.serve_cloud(
            cfg, federation, state_dir, broker=conn.url, auth=conn.auth, hub_grace_s=hub_grace,
            metrics_max_devices=metrics_max_devices,
            on_broker=lambda b: typer.echo(f"started {b.kind} broker at {b.url}"), **common))
    except LifecycleError as err:  # a checkpoint or broker state this start does not fit
        option = "--config" if err.option == "--rounds" else err.option
        raise cli_common.usage_error(str(err), option) from None


def _secagg_authority(path: Path | None, credentials: Credentials | None) -> bytes | None:
    """The authority's public key for a regional hub: ``--secagg-authority``, else the
    credentials file's (None without either); a usage error naming the option."""
    try:
        if path is not None:
            return read_authority_file(path)
        return None if credentials is None else credentials.secagg_authority_key()
    except ValueError as err:
        option = "--secagg-authority" if path is not None else "--credentials"
        raise cli_common.usage_error(str(err), option) from None


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

    from fedsa_common.net.broker_auth import redact_url
    from hub.status import collect, device_rows, duplicate_clients, render, unserved_regions

    url, auth = _connection_for(federation, broker, credentials, username, password_file,
                                tls_ca, role="monitor")
    broker = redact_url(url)  # for messages
    try:
        snap = collect(url, federation, timeout_s=timeout, auth=auth)
    except (ConnectionError, ValueError) as err:
        raise cli_common.usage_error(f"cannot read status from {broker}: {err}",
                                     "--broker") from None
    if snap.empty:
        raise cli_common.usage_error(
            f"no retained status for federation {federation!r} on {broker} within "
            f"{timeout:g}s: check the federation name and broker (hubs publish their status "
            "once connected)", "--federation")
    if json_out:
        typer.echo(json.dumps({"federation": federation, "statuses": snap.statuses,
                               "announce": snap.announce, "presence": snap.presence,
                               "intake": snap.intake,
                               "regions_without_hub": unserved_regions(snap),
                               "devices": device_rows(snap),
                               "duplicate_client_ids": duplicate_clients(snap)},
                              indent=2))
    text, healthy = render(snap)
    if not json_out:
        typer.echo(text)
    raise typer.Exit(0 if healthy else 1)


@app.command()
def export(
    state_dir: Annotated[Path, typer.Option(help="The cloud hub's --state-dir.")],
    out: Annotated[Path, typer.Option(help="Directory to write the peft adapter to.")],
    config: Annotated[Path | None, typer.Option(
        help="The cloud's --config; needed only for a checkpoint that does not record "
             "its configuration.")] = None,
    base_name: Annotated[str | None, typer.Option(
        help="The base model name to record in adapter_config.json (e.g. the Hub id of "
             "the same weights; default: the local model path).")] = None,
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
) -> None:
    """Export the global shared parameters of the cloud's last checkpoint as a peft adapter
    (adapter_config.json + adapter_model.safetensors, for peft.PeftModel.from_pretrained);
    tensors the federation does not share are at their common initial values."""
    from fedsa_common.process.logs import setup_logging
    from hub.export import export_global_peft

    setup_logging(log_level)
    try:
        cfg = None if config is None else load_federation_config(config)
    except ConfigError as err:
        raise cli_common.usage_error(str(err), "--config") from None
    try:
        result = export_global_peft(state_dir, out, config=cfg, base_name=base_name)
    except (FileNotFoundError, ValueError) as err:
        raise cli_common.usage_error(str(err), "--state-dir") from None
    typer.echo(f"{result.directory}: {result.config.name}, {result.weights.name} "
               f"({result.tensors} tensors), tokenizer and {result.sidecar.name}")


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
        raise cli_common.usage_error(
            f"unknown template {name!r}; available: {', '.join(TEMPLATES)}", "NAME")
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
    site: Annotated[list[str] | None, typer.Option(
        help="REGION=HOST[,HOST...] (repeatable): the region gets its own broker at HOST, "
             "bridged to the cloud broker, in OUT/sites/REGION (copy it to the gateway). "
             "Given for one region, needed for all.")] = None,
    site_port: Annotated[list[str] | None, typer.Option(
        help="REGION=PORT (repeatable): a site broker's TLS port (default: --port).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Federation YAML whose intake_shards add --intake-shards K to a region's "
             "regional-hub unit (default: OUT/federation.yaml, the file the cloud's unit "
             "runs with, when it exists).")] = None,
) -> None:
    """Write a TLS + password + ACL configuration for Mosquitto and one credentials file per
    device, regional hub, cloud hub and monitor.

    Each device may publish only its own updates, presence and metrics and read only the
    round announcement and its own acknowledgements; see docs/security.md for the full table.
    Start the broker with `mosquitto -c OUT/mosquitto.conf`. With --site, each region's
    devices and hub use their site's broker, and only round announcements, global
    parameters, partials, their acks, hub status and device presence cross the bridge."""
    from hub.provision import (
        ProvisionSpec,
        merge_regions,
        parse_region_options,
        parse_site_options,
        read_devices_csv,
        summary_text,
    )
    from hub.provision import provision as write_provision

    if config is None and (out / "federation.yaml").is_file():
        config = out / "federation.yaml"
    try:
        shards = {} if config is None else load_federation_config(config).intake_shards
    except ConfigError as err:
        raise cli_common.usage_error(str(err), "--config") from None
    try:
        regions = parse_region_options(region or [])
        if devices is not None:
            regions = merge_regions(regions, read_devices_csv(devices))
        spec = ProvisionSpec(federation=federation, regions=regions,
                             hosts=host or ["localhost", "127.0.0.1"], port=port, bind=bind,
                             broker_user=broker_user, max_packet_bytes=max_packet_bytes,
                             sites=parse_site_options(site or [], site_port or [], port),
                             intake_shards=dict(shards))
        result = write_provision(spec, out, rotate=rotate)
    except (ValueError, OSError) as err:  # the messages name the option or file
        raise cli_common.usage_error(str(err)) from None
    typer.echo(summary_text(spec, result))


federation_app = typer.Typer(
    help="Extend, stop or reset a federation: its total rounds, its end, and what the broker "
         "retains for its name.", no_args_is_help=True, add_completion=False)
app.add_typer(federation_app, name="federation")

Federation = Annotated[str | None, typer.Option(
    help="Federation name (with --broker or --credentials: talk to the running cloud hub).")]
Broker = Annotated[str | None, typer.Option(
    help="mqtt:// or mqtts:// URL of the cloud's broker (default: the --credentials file's). "
         "With a provisioned broker use the cloud's credentials: only the cloud account may "
         "send lifecycle commands and clear the federation's retained messages.")]
Timeout = Annotated[float, typer.Option(
    min=0.5, help="Seconds to wait for the broker and the cloud hub's answer.")]


def _connection_for(federation: str, broker: str | None, credentials: Path | None,
                    username: str | None, password_file: Path | None, tls_ca: Path | None,
                    role: Account = "cloud") -> tuple[str, BrokerAuth | None]:
    """Check the name and resolve the connection of ``hub status`` (as ``monitor``) or a
    lifecycle command (as the cloud); bad options are usage errors."""
    cli_common.check_names(("--federation", "federation", federation))
    conn = cli_auth.connection_from_options(
        broker, credentials, username, password_file, tls_ca, default_url=None,
        federation=federation, role=role)
    if conn.url is None:
        raise cli_common.usage_error("give --broker or --credentials", "--broker")
    return conn.url, conn.auth


@contextlib.contextmanager
def _lifecycle_session(url: str, federation: str, auth: BrokerAuth | None, timeout: float,
                       action: str) -> Iterator[MqttSession]:
    """A short session for ``hub federation ACTION``; a broker that cannot be reached (or
    stops answering) is one line and exit 2."""
    from hub.lifecycle import connected

    try:
        with connected(url, federation, auth, timeout) as session:
            yield session
    except (ConnectionError, TimeoutError) as err:
        raise cli_common.usage_error(f"hub federation {action}: {err}", "--broker") from None


def _serving_cloud(session: MqttSession, federation: str, timeout: float, action: str
                   ) -> Retained:
    """What is retained for ``federation``, after checking that its cloud hub serves; a
    finished federation or no cloud is a usage error saying what to do instead."""
    from fedsa_common.wire.protocol import Topics
    from hub.lifecycle import collect_retained

    retained = collect_retained(session, Topics(federation), max_bytes=256_000_000,
                                timeout_s=timeout)
    ann = retained.announce
    if ann is not None and ann.status == "finished":
        hint = ("its cloud hub has exited: extend it with `hub federation extend --state-dir "
                "CLOUD_STATE_DIR --by N`, then start the cloud again" if action == "extend"
                else "nothing to stop")
        raise cli_common.usage_error(
            f"federation {federation!r} finished at round {ann.round} on "
            f"{session.broker_url}; {hint}", "--federation")
    if not retained.cloud_alive:
        raise cli_common.usage_error(
            f"no cloud hub of federation {federation!r} is serving on {session.broker_url} "
            "(no retained cloud status that says online)" + (
                "; a stopped cloud is extended with --state-dir" if action == "extend" else ""),
            "--federation")
    return retained


def _obey(session: MqttSession, control: Control, timeout: float) -> dict[str, Any]:
    """Send ``control`` to the running cloud and return its status answer (exit 1 without
    one, exit 2 when it refused)."""
    from fedsa_common.wire.protocol import Topics
    from hub.lifecycle import send_control

    answer = send_control(session, Topics(control.federation), control, timeout)
    if answer is None:
        typer.echo(f"no answer from the cloud hub of {control.federation!r} within "
                   f"{timeout:g}s; the command is not kept (a cloud ignores commands older "
                   "than a minute): send it again once the cloud serves", err=True)
        raise typer.Exit(1)
    reply = answer.get("control") or {}
    if not reply.get("accepted"):
        raise cli_common.usage_error(f"the cloud hub refused: {reply.get('reason')}",
                                     "--rounds" if control.action == "extend" else "--now")
    return answer


@federation_app.command("extend")
def federation_extend(
    by: Annotated[int | None, typer.Option(min=1, help="Rounds to add to the total.")] = None,
    rounds: Annotated[int | None, typer.Option(
        min=1, help="The new total number of rounds (instead of --by).")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        help="The --state-dir of a cloud hub that is not running (finished or stopped): "
             "raise its checkpoint's total, then start the cloud again.")] = None,
    federation: Federation = None,
    broker: Broker = None,
    credentials: cli_auth.Credentials = None,
    username: cli_auth.Username = None,
    password_file: cli_auth.PasswordFile = None,
    tls_ca: cli_auth.TlsCa = None,
    timeout: Timeout = 10.0,
) -> None:
    """Add rounds to a federation from its last global version; devices keep their B and
    head (they keep their local state whenever only `rounds` changed).

    Finished or stopped cloud: `--state-dir DIR` raises the total kept in its checkpoint;
    then start `hub serve` again with the same --state-dir and --config (it clears the
    retained 'finished' announcement), then the regional hubs and devices, which exited when
    the federation finished. Editing `rounds` in the --config file does the same.
    Running cloud: `--federation` with `--broker`/`--credentials`; the cloud hub takes the
    new total at once. Refused under differential privacy (its noise was calibrated for
    the rounds it runs)."""
    if (by is None) == (rounds is None):
        raise cli_common.usage_error("give exactly one of --by N and --rounds TOTAL", "--by")
    if (state_dir is None) == (federation is None):
        raise cli_common.usage_error(
            "give --state-dir (the cloud is not running) or --federation with --broker or "
            "--credentials (it is running)", "--state-dir")
    from hub.lifecycle import LifecycleError, extend_checkpoint

    if state_dir is not None:
        try:
            done = extend_checkpoint(state_dir, total=rounds, by=by)
        except LifecycleError as err:
            raise cli_common.usage_error(str(err), err.option) from None
        typer.echo(f"{state_dir}: {done.completed} rounds done, total {done.before} -> "
                   f"{done.total}; start the cloud hub again with this --state-dir, then the "
                   "regional hubs and devices")
        return
    import time

    from fedsa_common.wire.protocol import Control

    assert federation is not None
    url, auth = _connection_for(federation, broker, credentials, username, password_file,
                                tls_ca)
    with _lifecycle_session(url, federation, auth, timeout, "extend") as session:
        retained = _serving_cloud(session, federation, timeout, "extend")
        ann = retained.announce
        before = (retained.cloud_status or {}).get("rounds") or (
            ann.config.get("rounds") if ann is not None else None)
        if by is not None and before is None:
            raise cli_common.usage_error("the cloud hub has not said its total rounds yet; "
                                         "give --rounds TOTAL", "--by")
        total = rounds if rounds is not None else int(before) + (by or 0)
        answer = _obey(session, Control(federation=federation, action="extend",
                                        rounds=total, issued_at=time.time()), timeout)
    typer.echo(f"federation {federation}: {answer.get('rounds')} rounds in all (was "
               f"{before}); {answer.get('round')} done")


@federation_app.command("stop")
def federation_stop(
    federation: Annotated[str, typer.Option(help="Federation name.")],
    broker: Broker = None,
    credentials: cli_auth.Credentials = None,
    username: cli_auth.Username = None,
    password_file: cli_auth.PasswordFile = None,
    tls_ca: cli_auth.TlsCa = None,
    now: Annotated[bool, typer.Option(
        help="Close the round in flight at once with the updates that arrived (as its "
             "deadline would) instead of letting it finish.")] = False,
    timeout: Timeout = 10.0,
) -> None:
    """Finish a running federation early and cleanly: after the round in flight, the cloud
    hub checkpoints, announces the end (retained) and exits 0, and regional hubs and devices
    exit as after a last round. The stop is kept in the checkpoint; `hub federation extend`
    undoes it."""
    import time

    from fedsa_common.wire.protocol import Control

    url, auth = _connection_for(federation, broker, credentials, username, password_file,
                                tls_ca)
    with _lifecycle_session(url, federation, auth, timeout, "stop") as session:
        _serving_cloud(session, federation, timeout, "stop")
        answer = _obey(session, Control(federation=federation, action="stop", now=now,
                                        issued_at=time.time()), timeout)
    typer.echo(f"federation {federation}: ends after round {answer.get('rounds')}"
               + (", which closes now" if now else ""))


@federation_app.command("reset")
def federation_reset(
    federation: Annotated[str, typer.Option(help="Federation name.")],
    broker: Broker = None,
    credentials: cli_auth.Credentials = None,
    username: cli_auth.Username = None,
    password_file: cli_auth.PasswordFile = None,
    tls_ca: cli_auth.TlsCa = None,
    force: Annotated[bool, typer.Option(
        help="Clear even while the retained cloud status says a cloud hub serves.")] = False,
    timeout: Timeout = 10.0,
) -> None:
    """Clear what the broker retains for a federation (round announcement, full global
    parameters, cloud status), so that a new cloud hub (a fresh --state-dir) can run the name
    again from round 1; without it, hubs and devices exit at once on the retained 'finished'
    and a fresh cloud refuses to start.

    Refused while a cloud hub of the name serves (stop it first, or --force). Device presence
    and regional hub status stay (they say who is online). Start the new run's regional hubs
    and devices with fresh --state-dir directories: one that ran the old run remembers its
    rounds and would sit out the new run's first ones."""
    from fedsa_common.wire.protocol import Topics
    from hub.lifecycle import collect_retained, reset_retained

    url, auth = _connection_for(federation, broker, credentials, username, password_file,
                                tls_ca)
    with _lifecycle_session(url, federation, auth, timeout, "reset") as session:
        retained = collect_retained(session, Topics(federation), max_bytes=256_000_000,
                                    timeout_s=timeout)
        if retained.cloud_alive and not force:
            raise cli_common.usage_error(
                f"a cloud hub of federation {federation!r} is serving on "
                f"{session.broker_url} (its retained status says online): stop it first "
                "(`hub federation stop`), or give --force", "--force")
        cleared = reset_retained(session, retained, timeout)
    ann = retained.announce
    was = f" (its announcement: {ann.status}, round {ann.round})" if ann is not None else ""
    typer.echo(f"federation {federation}: cleared {cleared} retained messages{was}; a new "
               "cloud hub may start the name with a fresh --state-dir")
