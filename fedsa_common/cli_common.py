"""What the three command lines (``edge-client``, ``hub``, ``scenarios``) do the same way.

``--version``, ``--log-level`` (with its help and a closed set of values), the filters for
known third-party start-up noise, SIGTERM handling and the one way user errors are printed
are defined here once so that the CLIs cannot drift apart.
"""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

DISTRIBUTION = "fedsa-edge"


class Level(StrEnum):
    """The values --log-level accepts (any case)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


LogLevel = Annotated[Level, typer.Option(
    "--log-level", case_sensitive=False,
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
    logger = logging.getLogger(BNB_LOGGER)
    if not any(isinstance(f, DropMessage) and f.fragment == BNB_KERNELS_HINT
               for f in logger.filters):
        logger.addFilter(DropMessage(BNB_KERNELS_HINT))


def stop_on_sigterm() -> None:
    """Make SIGTERM (``systemctl stop``, ``docker stop``, ``kill``) behave like Ctrl-C.

    The default action ends the process at once, so ``finally`` blocks never run: a cloud
    hub's own Mosquitto outlived it and a device never said it went offline. Raising
    ``KeyboardInterrupt`` in the main thread takes the same clean-up path as Ctrl-C.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def usage_error(message: str, param_hint: str) -> typer.BadParameter:
    """The one style for a user's mistake: a short boxed message naming the option, exit 2.

    Call it in an ``except`` block after ``setup_logging``: the traceback behind the message
    is logged at DEBUG only, since for a user error it points at our code rather than at
    what to fix.
    """
    logging.getLogger("fedsa.cli").debug("%s: %s", param_hint, message, exc_info=True)
    return typer.BadParameter(message, param_hint=param_hint)
