"""``edge-client``: run a device (or, for scenarios, several virtual devices on one base)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedsa_common import cli_auth, cli_common

app = typer.Typer(help="The device side of a fedsa-edge federation.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def main(version: cli_common.VersionOption = False) -> None:
    """The device side of a fedsa-edge federation."""
    cli_common.quiet_known_noise()


@app.command()
def join(
    federation: Annotated[str, typer.Option(help="Federation name.")],
    region: Annotated[str, typer.Option(help="Region whose hub collects this device's updates.")],
    client_id: Annotated[str, typer.Option(help="Unique, stable device id.")],
    data: Annotated[str, typer.Option(
        help="Local data: a CSV/JSONL path, 20newsgroups or sentiment, with ?key=value "
             "options, e.g. '20newsgroups?classes=4&partition=dirichlet&num_clients=6&shard=0'.")],
    state_dir: Annotated[Path, typer.Option(help="Private state of this device (local B, head).")],
    broker: Annotated[str | None, typer.Option(
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (TLS) of the region's broker. Default: "
             "the --credentials file's broker, else mqtt://127.0.0.1:1883.")] = None,
    credentials: cli_auth.Credentials = None,
    username: cli_auth.Username = None,
    password_file: cli_auth.PasswordFile = None,
    tls_ca: cli_auth.TlsCa = None,
    precision: Annotated[str | None, typer.Option(
        help="Override the base precision: nf4, fp4, int8, fp16, bf16, fp32.")] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 0,
    memory_mb: Annotated[float | None, typer.Option(
        min=1, help="Memory budget (peak RSS of this process, MiB): training reaches the "
                    "federation's batch size by accumulating micro-batches sized to fit.")]
    = None,
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
) -> None:
    """Join a federation and train whenever selected, until it finishes.

    The broker URL, the credentials and the data (file, columns, encoding, this device's
    share) are checked first, before torch and the model load or the broker is contacted.
    The state directory is then locked for as long as the device runs: a second join on the
    same directory (the same device started twice) exits at once with exit code 2.
    SIGTERM stops the device like Ctrl-C: it finishes its current step, says it is
    offline and exits; a second signal exits at once."""
    from edge_client.data import DataError, check_device_data
    from edge_client.state_lock import StateDirError, StateDirLock, check_owner
    from fedsa_common.logs import setup_logging
    from fedsa_common.protocol import check_name

    cli_common.stop_on_sigterm()
    setup_logging(log_level)
    for option, kind, value in (("--federation", "federation", federation),
                                ("--region", "region", region),
                                ("--client-id", "client id", client_id)):
        try:
            check_name(kind, value)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint=option) from None
    conn = cli_auth.connection_from_options(
        broker, credentials, username, password_file, tls_ca,
        default_url="mqtt://127.0.0.1:1883", federation=federation, role="device",
        region=region, client=client_id)
    if precision not in (None, "nf4", "fp4", "int8", "fp16", "bf16", "fp32"):
        raise typer.BadParameter(f"unknown precision {precision!r}", param_hint="--precision")
    try:
        data_spec, share = check_device_data(data)
    except DataError as err:
        raise cli_common.usage_error(str(err), "--data") from None
    logging.getLogger("fedsa.device").info(
        "%s: data %s: %d training and %d test rows, %d labels", client_id, data_spec.source,
        len(share.train.texts), len(share.test.texts), share.num_labels)
    lock = StateDirLock(state_dir, client_id)
    try:
        lock.acquire()
        check_owner(state_dir, client_id, region, federation)
    except StateDirError as err:
        lock.release()
        raise cli_common.usage_error(str(err), "--state-dir") from None

    try:  # held until the device ends; the kernel drops it after a crash too
        import torch

        from edge_client.device import DeviceSpec, run_devices
        from edge_client.host import ModelHost

        if threads:
            torch.set_num_threads(threads)
        spec = DeviceSpec(client=client_id, region=region, federation=federation,
                          data=data_spec, state_dir=state_dir, memory_mb=memory_mb,
                          auth=conn.auth)
        sys.exit(run_devices([spec], conn.url, ModelHost(precision)))  # type: ignore[arg-type]
    finally:
        lock.release()


@app.command(hidden=True)
def worker(
    spec: Annotated[Path, typer.Option(help="JSON file listing the virtual devices to host.")],
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
) -> None:
    """Host several virtual devices over one shared base model (used by scenarios)."""
    import torch

    from edge_client.device import device_specs_from_json, run_devices
    from edge_client.host import ModelHost
    from fedsa_common.logs import setup_logging

    setup_logging(log_level)
    broker, specs, raw = device_specs_from_json(spec)
    torch.set_num_threads(int(raw.get("threads", 1)))
    sys.exit(run_devices(specs, broker, ModelHost(raw.get("precision")),
                         int(raw.get("payload_limit", 1_000_000))))


@app.command()
def export(
    state_dir: Annotated[Path, typer.Option(help="The device's --state-dir.")],
    out: Annotated[Path, typer.Option(help="Where to write the .onnx file.")],
    int8: Annotated[bool, typer.Option(help="Dynamic int8 quantization (onnxruntime).")]
    = False,
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
) -> None:
    """Export the device's model (global A, its own B and head, merged into an fp32 base) to
    ONNX, with OUT.tokenizer/ and OUT.json (labels) next to it."""
    from edge_client.export import export_state
    from fedsa_common.logs import setup_logging

    setup_logging(log_level)
    try:
        result = export_state(state_dir, out, int8=int8)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--state-dir") from None
    typer.echo(f"{result.onnx} ({result.bytes / 1e6:.1f} MB{', int8' if int8 else ''}); "
               f"tokenizer in {result.tokenizer_dir}, labels in {result.sidecar}")


@app.command()
def predict(
    texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
    model: Annotated[Path, typer.Option(help="An .onnx file written by 'edge-client export'.")],
    threads: Annotated[int, typer.Option(help="onnxruntime threads (0: its default).")] = 0,
) -> None:
    """Classify TEXTS with an exported model; prints label, probability and text per line."""
    from edge_client.predict import OnnxClassifier

    try:
        classifier = OnnxClassifier(model, threads=threads)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from None
    for text, p in zip(texts, classifier.predict(texts), strict=True):
        typer.echo(f"{p.label}\t{p.probability:.3f}\t{text}")
