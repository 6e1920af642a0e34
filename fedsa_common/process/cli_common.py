"""What the three command lines (``edge-client``, ``hub``, ``scenarios``) do the same way.

``--version``, ``--log-level`` (with its help and a closed set of values), the filters for
known third-party start-up noise, SIGTERM handling and the one way user errors are printed
(``OneErrorStyle``) are defined here once so that the CLIs cannot drift apart.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from fedsa_common.wire.errors import UserError
from fedsa_common.wire.names import check_name

DISTRIBUTION = "fedsa-edge"


class Level(StrEnum):
    """The values --log-level accepts (any case)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


# ctx.meta key (shared by a command's context and its parents') saying --log-level DEBUG
# was given, so that the error handler knows whether to print the traceback behind a message
DEBUG_META = "fedsa.debug"


def _remember_level(ctx: typer.Context, value: Level) -> Level:
    ctx.meta[DEBUG_META] = value is Level.DEBUG
    return value


LogLevel = Annotated[Level, typer.Option(
    "--log-level", case_sensitive=False, callback=_remember_level,
    help="Least severe log level shown, on standard error (JSON lines when it is not a "
         "terminal); DEBUG also prints the traceback behind an error message.")]

# Known third-party messages that every start printed and that say nothing actionable.
# Each is dropped by its exact text, so that any other warning from the same library
# still shows.
#
# bitsandbytes >= 0.49 logs this at import on CPUs with AVX512-BF16 when the optional
# ``kernels`` package (a faster 4-bit CPU matmul fetched from the Hugging Face Hub) is not
# installed; the fallback kernel is used and works. Shown again with --log-level DEBUG.
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_HINT = "pip install kernels"
# With ``kernels`` installed, bitsandbytes fetches that kernel at import; with
# HF_HUB_OFFLINE=1 (usual on a device, and set by quant.base_model for the local model)
# ``kernels`` warns on every start that it cannot check the publisher offline.
KERNELS_HUB_LOGGER = "kernels._internals.hf_hub"
KERNELS_OFFLINE_HINT = "Skipping publisher trust check"
# torch.onnx's exporter (``edge-client export``) looks up torchvision's operators and warns
# once per operator that torchvision, an image library this kit never uses, is missing.
TORCH_ONNX_LOGGER = "torch.onnx._internal.exporter._registration"
TORCHVISION_HINT = "torchvision is not installed"
# onnxruntime's dynamic quantization (``edge-client export --int8``) logs through the root
# logger: a warning to pre-process (shape inference, which it runs itself) and an INFO line
# per tensor it leaves in float, neither anything a user acts on.
ROOT_LOGGER = "root"
ORT_QUANTIZATION_LINES = ("Please consider to run pre-processing before quantization",
                          "Quantization parameters for tensor:",
                          "Ignore MatMul due to non constant B")
# (logger, fragment of the format string) of every known log line dropped
DROPPED_LINES = ((BNB_LOGGER, BNB_KERNELS_HINT), (KERNELS_HUB_LOGGER, KERNELS_OFFLINE_HINT),
                 (TORCH_ONNX_LOGGER, TORCHVISION_HINT),
                 *((ROOT_LOGGER, text) for text in ORT_QUANTIZATION_LINES))
# transformers 5 deprecated ``PreTrainedModel.is_gradient_checkpointing``; peft's
# ``PeftModel.__init__`` still reads it (``getattr(model, "is_gradient_checkpointing")``),
# so every adapter construction warned.
GRADIENT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"


def distribution_version() -> str:
    """The installed distribution's version (what ``pip`` installed, not a copy in code)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {distribution_version()}")
        raise typer.Exit()


VersionOption = Annotated[bool, typer.Option(
    "--version", callback=_print_version, is_eager=True,
    help="Print the fedsa-edge version and exit.")]


class DropMessage(logging.Filter):
    """Drops records whose format string contains ``fragment`` unless DEBUG is on."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        if self.fragment not in str(record.msg):
            return True
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_known_noise() -> None:
    """Install the filters for the known third-party noise (idempotent).

    Called from each app's callback, i.e. before any command imports transformers,
    bitsandbytes or peft, so that the import-time bitsandbytes line is caught too.
    """
    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_WARNING,
                            category=FutureWarning)
    for name, fragment in DROPPED_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.fragment == fragment
                   for f in logger.filters):
            logger.addFilter(DropMessage(fragment))


def stop_on_sigterm() -> None:
    """Make SIGTERM (``systemctl stop``, ``docker stop``, ``kill``) behave like Ctrl-C.

    The default action ends the process at once, so ``finally`` blocks never run: a cloud
    hub's own Mosquitto outlived it and a device never said it went offline. Raising
    ``KeyboardInterrupt`` in the main thread takes the same clean-up path as Ctrl-C.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def usage_error(message: str, param_hint: str | None = None) -> typer.BadParameter:
    """A user's mistake found by a command: ``raise usage_error(str(err), "--option") from
    None``. ``OneErrorStyle`` prints it as ``error: MESSAGE (--option)`` and exits 2; with
    --log-level DEBUG it prints the traceback of the error being handled first (the one
    ``from None`` hides)."""
    return typer.BadParameter(message, param_hint=param_hint)


def check_names(*names: tuple[str, str, str]) -> None:
    """Check ``(option, kind, value)`` names (federation, region, client id) before anything
    connects: they become MQTT topic levels, and a bad one used to fail deep in a hub."""
    for option, kind, value in names:
        try:
            check_name(kind, value)
        except ValueError as err:
            raise usage_error(str(err), option) from None


def usable_dir(path: Path, option: str) -> Path:
    """Create ``path`` (a state or output directory) or say in one line why it cannot be:
    a file in its place, no permission."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise usage_error(f"{path} exists and is not a directory", option) from None
    except OSError as err:
        raise usage_error(f"cannot create directory {path}: {err.strerror or err}",
                          option) from None
    return path


# ------------------------------------------------------------------------ one error style
# The click that typer raises from: click itself up to typer 0.2x, a copy inside typer
# (typer._click) in later ones. Taken from typer's public BadParameter so that
# isinstance() matches what typer actually raises, whichever typer is installed.
_clicks = importlib.import_module(typer.BadParameter.__module__)
UsageError: type[Exception] = _clicks.UsageError
MissingParameter: type[Exception] = _clicks.MissingParameter


def error_text(message: str, hint: str | None) -> str:
    """``error: MESSAGE (HINT)``: one line, or a heading and one indented line per field
    when a message lists several (a configuration with three bad fields). The hint is left
    out when the message already names it or starts with the option at fault (``--set
    'x': ...``), and a hint ``--config FILE`` shortened to ``--config`` when the message names
    FILE."""
    first, *details = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    if len(details) == 1:  # "invalid configuration:" + one field: keep it on one line
        first, details = f"{first} {details[0].strip()}", []
    option, _, value = (hint or "").partition(" ")
    if value and value in message:  # "--config FILE" and the message names FILE
        hint = option
    named = hint is None or hint in message or message.startswith("--")
    where = "" if named else f" ({hint})"
    if not details:
        return f"error: {first}{where}"
    heading = first[:-1] if first.endswith(":") else first
    return "\n".join([f"error: {heading}{where}:",
                      *(f"  {line.strip()}" for line in details)])


def _param_hint(err: typer.BadParameter) -> str | None:
    hint = err.param_hint
    if isinstance(hint, Sequence) and not isinstance(hint, str):
        return " / ".join(hint)
    if hint is not None:
        return hint
    if err.param is None:
        return None
    if err.param.param_type_name == "option":
        return " / ".join(err.param.opts)
    return err.param.human_readable_name


def describe_user_error(exc: BaseException) -> str | None:
    """The ``error: ...`` text for a user's mistake, ``None`` for anything else (a bug)."""
    if isinstance(exc, typer.BadParameter) and not isinstance(exc, MissingParameter):
        return error_text(exc.message, _param_hint(exc))
    if isinstance(exc, UsageError):  # missing option, no such option or command
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else None
        return error_text(exc.format_message().rstrip("."),  # type: ignore[attr-defined]
                          f"see '{where} --help'" if where else None)
    if isinstance(exc, UserError):
        return error_text(str(exc), exc.option)
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError, FileExistsError)) and exc.filename is not None:
        return error_text(f"{exc.filename}: {exc.strerror or exc}", None)
    return None


@contextlib.contextmanager
def _one_error_style(ctx: typer.Context | None) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        # `hub` alone raises click's NoArgsIsHelpError (a UsageError carrying the help):
        # typer shows the help; matched by name, as typer does, since older clicks lack it
        text = None if type(exc).__name__ == "NoArgsIsHelpError" else describe_user_error(exc)
        if text is None:
            raise  # a bug: typer prints the traceback, exit 1
        _exit_with(text, exc, ctx is not None and bool(ctx.meta.get(DEBUG_META)))


def _exit_with(text: str, exc: BaseException, debug: bool) -> NoReturn:
    if debug:  # the error being handled when usage_error was raised "from None", else exc
        behind = exc.__cause__ or exc.__context__ or exc
        typer.echo("".join(traceback.format_exception(behind)).rstrip(), err=True)
    typer.echo(text, err=True)
    raise typer.Exit(2)


class OneErrorStyle(TyperGroup):
    """The root command class of the three CLIs (``typer.Typer(cls=OneErrorStyle)``).

    Typer has no exception-handler hook (its ``pretty_exceptions_*`` settings only style
    the traceback), and the three CLIs printed user errors three ways: typer's boxed
    usage errors, 30-40-line tracebacks, and one-liners of each command's own making.
    Every command and sub-command is parsed and run inside the root group's
    ``make_context`` and ``invoke``, so wrapping those two (and nothing per command) puts
    every user error (``UserError``, a usage error, a missing or unreadable user file)
    into one format, ``error: WHAT (OPTION)`` on standard error with exit code 2, the
    traceback only with --log-level DEBUG; anything else is a bug and keeps its traceback
    (exit 1). ``CliRunner`` goes through the same two methods, so tests see what users see.
    """

    def make_context(self, info_name: str | None, args: list[str],
                     parent: Any = None, **extra: Any) -> Any:
        with _one_error_style(None):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _one_error_style(ctx):
            return super().invoke(ctx)
