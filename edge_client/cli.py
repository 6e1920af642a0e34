"""``edge-client``: run a device (or, for scenarios, several virtual devices on one base)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedsa_common.process import cli_auth, cli_common

if TYPE_CHECKING:
    from edge_client.predict import OnnxClassifier, Prediction

class ExportFormat(StrEnum):
    onnx = "onnx"
    peft = "peft"


app = typer.Typer(help="The device side of a fedsa-edge federation.", no_args_is_help=True,
                  add_completion=False, cls=cli_common.OneErrorStyle)


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
    secagg_unauthenticated: Annotated[bool, typer.Option(
        help="Take part in secure-aggregation rounds without a signing identity (none in "
             "the --credentials file). Then the hub could swap in keys of its own and read "
             "this device's update: only for a hub you trust to follow the protocol.")]
    = False,
    report_every: Annotated[float, typer.Option(
        min=0.1, help="Seconds after which the device reports what it still waits for: a "
                      "regional hub serving --region (without one the cloud never selects "
                      "it), the broker, the federation's first round announcement.")] = 30.0,
    connect_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for the broker; then exit 2 naming it.")] = 600.0,
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
) -> None:
    """Join a federation and train whenever selected, until it finishes.

    The broker URL, the credentials and the data (file, columns, encoding, this device's
    share) are checked first, before torch and the model load or the broker is contacted.
    The state directory is then locked for as long as the device runs: a second join on the
    same directory (the same device started twice) exits at once with exit code 2.
    SIGTERM stops the device like Ctrl-C: it finishes its current step, says it is
    offline and exits; a second signal exits at once."""
    from edge_client.api import join as join_federation
    from fedsa_common.process.logs import setup_logging

    cli_common.stop_on_sigterm()
    setup_logging(log_level)
    cli_common.check_names(("--federation", "federation", federation),
                           ("--region", "region", region),
                           ("--client-id", "client id", client_id))
    conn = cli_auth.connection_from_options(
        broker, credentials, username, password_file, tls_ca,
        default_url="mqtt://127.0.0.1:1883", federation=federation, role="device",
        region=region, client=client_id)
    try:
        identity = conn.credentials.secagg_identity() if conn.credentials else None
    except ValueError as err:
        raise cli_common.usage_error(str(err), "--credentials") from None
    assert conn.url is not None
    # its errors (data, state directory, unreachable broker) are UserErrors naming the
    # option: one line, exit 2
    sys.exit(join_federation(
        federation, region, client_id, data, state_dir, broker=conn.url, auth=conn.auth,
        secagg_identity=identity, secagg_unauthenticated=secagg_unauthenticated,
        precision=precision, threads=threads, memory_mb=memory_mb,
        report_every_s=report_every, connect_timeout_s=connect_timeout))


@app.command()
def load(
    federation: Annotated[str, typer.Option(help="Federation name.")],
    region: Annotated[list[str], typer.Option(
        help="Region of the devices (repeat for several: --devices in each).")],
    devices: Annotated[int, typer.Option(
        min=1, help="Light devices in each region (one process holds as many as its "
        "file-descriptor limit, ulimit -Hn, allows: one each).")],
    broker: Annotated[str, typer.Option(
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (TLS) of the regions' broker.")]
    = "mqtt://127.0.0.1:1883",
    client_prefix: Annotated[str, typer.Option(
        help="Client ids are PREFIX REGION-0000, ...; give each load process its own.")]
    = "load-",
    samples: Annotated[int, typer.Option(
        min=1, help="Sample count each update declares (its weight).")] = 10,
    workers: Annotated[int, typer.Option(
        min=1, help="Threads that build and publish the updates.")] = 4,
    username: cli_auth.Username = None,
    password_file: cli_auth.PasswordFile = None,
    tls_ca: cli_auth.TlsCa = None,
    report_every: Annotated[float, typer.Option(
        min=0.1, help="Seconds after which a device says it still waits for the broker.")]
    = 30.0,
    connect_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for the broker; then exit 2 naming it.")] = 600.0,
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
) -> None:
    """Run many light devices in this process against running hubs: a load generator.

    Each joins like a device (its own MQTT session, presence, the round announcement and
    its selection, acknowledged and resent updates) and sends real encoded updates (seeded
    random deltas of the announced shared tensors, through the federation's codec and
    update header) without a model or data; it exits when the federation finishes. Logs
    per round how many updates were sent and acknowledged. Exit 1 when updates were left
    unacknowledged at the end."""
    import logging

    from edge_client.api import load_devices
    from fedsa_common.process.logs import setup_logging

    cli_common.stop_on_sigterm()
    setup_logging(log_level)
    if log_level != cli_common.Level.DEBUG:  # one line per session and reconnect otherwise
        logging.getLogger("fedsa_common.net.transport").setLevel(logging.WARNING)
    conn = cli_auth.connection_from_options(
        broker, None, username, password_file, tls_ca, default_url=None,
        federation=federation, role="device")
    assert conn.url is not None
    sys.exit(load_devices(federation, region, devices, broker=conn.url, auth=conn.auth,
                      client_prefix=client_prefix, samples=samples, workers=workers,
                      report_every_s=report_every, connect_timeout_s=connect_timeout))


@app.command(hidden=True)
def worker(
    spec: Annotated[Path, typer.Option(help="JSON file listing the virtual devices to host.")],
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
) -> None:
    """Host several virtual devices over one shared base model (used by scenarios)."""
    import torch

    from edge_client.host import ModelHost
    from edge_client.worker import read_worker_spec, run_devices, write_link_report
    from fedsa_common.process.logs import setup_logging

    setup_logging(log_level)
    broker, devices, raw = read_worker_spec(spec)
    torch.set_num_threads(int(raw.get("threads", 1)))
    try:
        code = run_devices(devices, broker, ModelHost(raw.get("precision")),
                           int(raw.get("payload_limit", 1_000_000)))
    finally:  # also when stopped: what the links lost until then
        if raw.get("link_report"):
            write_link_report(Path(raw["link_report"]), devices)
    sys.exit(code)


@app.command()
def export(
    state_dir: Annotated[Path, typer.Option(help="The device's --state-dir.")],
    out: Annotated[Path, typer.Option(
        help="Where to write: the .onnx file (onnx), or a directory (peft).")],
    export_format: Annotated[ExportFormat, typer.Option(
        "--format", help="onnx: merged model for 'edge-client predict' and onnxruntime; "
                         "peft: adapter_config.json + adapter_model.safetensors for "
                         "peft.PeftModel.from_pretrained(base, OUT).")] = ExportFormat.onnx,
    int8: Annotated[bool, typer.Option(help="Dynamic int8 quantization (onnx only).")]
    = False,
    base_name: Annotated[str | None, typer.Option(
        help="peft only: the base model name to record in adapter_config.json (e.g. the "
             "Hub id of the same weights; default: the local model path).")] = None,
    log_level: cli_common.LogLevel = cli_common.Level.INFO,
) -> None:
    """Export the device's model (global shared parameters, its own local ones and head).

    onnx (default): merged into an fp32 base, with OUT.tokenizer/ and OUT.json (labels)
    next to it; classifiers only.  peft: the unmerged adapter with the head
    (modules_to_save; a causal language model has none), the tokenizer and fedsa.json
    (task, labels, the precision the device trained with) in the directory OUT."""
    from edge_client.export import export_peft, export_state
    from fedsa_common.process.logs import setup_logging

    if export_format is ExportFormat.peft and int8:
        raise cli_common.usage_error("--int8 applies to the onnx format only", "--int8")
    if export_format is ExportFormat.onnx and base_name is not None:
        raise cli_common.usage_error("--base-name applies to the peft format only",
                                     "--base-name")
    setup_logging(log_level)
    try:
        if export_format is ExportFormat.peft:
            peft = export_peft(state_dir, out, base_name=base_name)
            typer.echo(f"{peft.directory}: {peft.config.name}, {peft.weights.name} "
                       f"({peft.tensors} tensors), tokenizer and {peft.sidecar.name}")
            return
        result = export_state(state_dir, out, int8=int8)
    except (FileNotFoundError, ValueError) as err:
        raise cli_common.usage_error(str(err), "--state-dir") from None
    typer.echo(f"{result.onnx} ({result.bytes / 1e6:.1f} MB{', int8' if int8 else ''}); "
               f"tokenizer in {result.tokenizer_dir}, labels in {result.sidecar}")


@app.command()
def predict(
    model: Annotated[Path, typer.Option(help="An .onnx file written by 'edge-client export'.")],
    texts: Annotated[list[str] | None, typer.Argument(
        metavar="TEXTS", help="Texts to classify (or --input).", show_default=False)] = None,
    input_file: Annotated[str | None, typer.Option(
        "--input", metavar="FILE",
        help="Classify each line of FILE (UTF-8, one text per line, blank lines included); "
             "- reads standard input.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object per text: label, probability, the probability of "
                       "every label, text.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per onnxruntime call.")] = 32,
    threads: Annotated[int, typer.Option(help="onnxruntime threads (0: its default).")] = 0,
) -> None:
    """Classify texts with an exported model: one output line per text, in input order.

    Prints label, probability and text separated by tabs, or JSON lines with --json. Needs
    only onnxruntime and the tokenizers library (no torch)."""
    from edge_client.predict import BundleError, InputError, OnnxClassifier, text_lines

    if texts and input_file is not None:
        raise cli_common.usage_error("give texts or --input, not both", "--input")
    if not texts and input_file is None:
        raise cli_common.usage_error("nothing to classify: give texts or --input FILE "
                                     "(- for standard input)", "--input")
    try:
        classifier = OnnxClassifier(model, threads=threads)
    except (FileNotFoundError, BundleError) as err:
        raise cli_common.usage_error(str(err), "--model") from None
    with contextlib.ExitStack() as opened:
        if input_file is None:
            lines: Iterator[str] = iter(texts or [])
        elif input_file == "-":
            lines = text_lines(sys.stdin.buffer, "standard input")
        else:
            try:
                stream = opened.enter_context(open(input_file, "rb"))
            except OSError as exc:
                raise cli_common.usage_error(f"{input_file}: {exc.strerror or exc}",
                                             "--input") from None
            lines = text_lines(stream, input_file)
        try:
            for text, p in classifier.predict_stream(lines, batch_size):
                sys.stdout.write(_prediction_line(classifier, text, p, as_json) + "\n")
            sys.stdout.flush()
        except InputError as err:
            raise cli_common.usage_error(str(err), "--input") from None
        except BrokenPipeError:  # `| head`: the reader left, which is not an error here
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _prediction_line(classifier: OnnxClassifier, text: str, p: Prediction, as_json: bool
                     ) -> str:
    """``label<TAB>probability<TAB>text``, or a JSON object with every label's probability."""
    if not as_json:
        return f"{p.label}\t{p.probability:.3f}\t{text}"
    probabilities = {classifier.label_name(k): round(q, 6) for k, q in enumerate(p.probabilities)}
    return json.dumps({"label": p.label, "probability": round(p.probability, 6),
                       "probabilities": probabilities, "text": text}, ensure_ascii=False)
