"""What the three CLIs share (fedsa_common.process.cli_common): --version, --log-level, the filters
for known third-party noise and SIGTERM as Ctrl-C; the CLI behaviour through the real apps."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import warnings
from importlib.metadata import version
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from edge_client.cli import app as edge_app
from fedsa_common.process import cli_common
from hub.cli import app as hub_app
from scenarios.cli import app as scenarios_app
from tests.support.programs import program

APPS = {"edge-client": edge_app, "hub": hub_app, "scenarios": scenarios_app}
# the exact texts the libraries emit (bitsandbytes/backends/cpu/ops.py,
# transformers/modeling_utils.py PreTrainedModel.is_gradient_checkpointing)
BNB_TEXT = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure "
            "you already `pip install kernels` and the kernels >= 0.11.1")
# what `edge-client export [--int8]` printed (kernels/_internals/hf_hub.py with HF_HUB_OFFLINE=1,
# torch/onnx/_internal/exporter/_registration.py, onnxruntime/quantization/quantize.py,
# qdq_quantizer.py, operators/matmul.py)
EXPORT_TEXTS = [
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/"
     "quantization-bitsandbytes' because Hugging Face Hub is in offline mode."),
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed. Skipping %s"),
    ("root", "Please consider to run pre-processing before quantization. Refer to example: "),
    ("root", 'Quantization parameters for tensor:"gelu" not specified'),
    ("root", "Ignore MatMul due to non constant B: /[node_MatMul_136]"),
]
HF_TEXT = ("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
           "`is_activation_checkpointing` instead.")


@pytest.mark.parametrize("name", list(APPS))
def test_version_prints_the_distribution_version(name: str) -> None:
    result = CliRunner().invoke(APPS[name], ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"fedsa-edge {version('fedsa-edge')}"


# a command of each program that takes --log-level
LOGGING_COMMANDS = {"edge-client": "join", "hub": "serve", "scenarios": "run"}


@pytest.mark.parametrize("name", list(LOGGING_COMMANDS))
def test_each_installed_program_has_version_and_explains_log_level(name: str) -> None:
    """Through the programs themselves (entry point, real streams and exit status)."""
    shown = subprocess.run([*program(name), "--version"], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"fedsa-edge {version('fedsa-edge')}"
    helped = subprocess.run([*program(name), LOGGING_COMMANDS[name], "--help"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "240"})
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.replace("│", " ").split())
    assert "--log-level" in text and "Least severe log level shown" in text, helped.stdout
    assert "DEBUG also prints the traceback" in text


def _commands(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, command) of every leaf command (typer may use its own click classes)."""
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out += _commands(cmd, f"{prefix}{name} ")
        else:
            out.append((f"{prefix}{name}", cmd))
    return out


def test_every_log_level_option_has_help_and_a_closed_set_of_values() -> None:
    found = []
    for app_name, app in APPS.items():
        for cmd_name, cmd in _commands(typer.main.get_command(app)):  # type: ignore[arg-type]
            for param in cmd.params:
                if param.name == "log_level":
                    found.append(f"{app_name} {cmd_name}")
                    assert "DEBUG" in (getattr(param, "help", None) or ""), cmd_name
    assert {"edge-client join", "hub serve", "scenarios run"} <= set(found)
    runner = CliRunner()
    result = runner.invoke(hub_app, ["serve", "--role", "cloud", "--federation", "f",
                                     "--state-dir", "x", "--log-level", "verbose"])
    assert result.exit_code == 2
    assert "--log-level" in result.output
    # wide enough that the help column does not wrap a sentence across the box's rows
    help_text = runner.invoke(edge_app, ["join", "--help"], env={"COLUMNS": "240"}).output
    assert "Least severe log level" in " ".join(help_text.split())


@pytest.fixture
def restore_noise_filters():
    logger = logging.getLogger(cli_common.BNB_LOGGER)
    saved = list(logger.filters)
    with warnings.catch_warnings():
        yield logger
    logger.filters[:] = saved


def test_known_noise_is_dropped_by_its_text_only() -> None:
    """Runs the check below in a fresh interpreter: earlier tests of the suite import the
    libraries and change logging/warnings state, which made the check order-dependent."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "FEDSA_NOISE_CHECK": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{__file__}::test_known_noise_check"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.skipif(not __import__("os").environ.get("FEDSA_NOISE_CHECK"),
                    reason="run in a fresh interpreter by the test above")
def test_known_noise_check(restore_noise_filters, caplog) -> None:
    logger = restore_noise_filters
    warnings.simplefilter("always")
    # through a real command: the app callback installs the filters
    assert CliRunner().invoke(hub_app, ["config", "template"]).exit_code == 0
    cli_common.quiet_known_noise()  # idempotent: one filter however often it runs
    assert sum(isinstance(f, cli_common.DropMessage) for f in logger.filters) == 1

    with warnings.catch_warnings(record=True) as seen:
        warnings.warn(HF_TEXT, FutureWarning, stacklevel=1)
        warnings.warn("`other_property` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`other_property` is deprecated"]

    caplog.set_level(logging.INFO)
    logger.warning(BNB_TEXT, "no module named 'kernels'")
    logger.warning("Failed to load the CPU library")
    assert [r.getMessage() for r in caplog.records] == ["Failed to load the CPU library"]
    export_lines = [(name, logging.makeLogRecord({"name": name, "msg": text}))
                    for name, text in EXPORT_TEXTS]
    assert not any(logging.getLogger(name).filter(r) for name, r in export_lines)
    kept = logging.makeLogRecord({"name": "root", "msg": "Quantization failed"})
    assert logging.getLogger().filter(kept)  # only the known texts go
    caplog.clear()
    caplog.set_level(logging.DEBUG)  # --log-level DEBUG shows it again
    logger.warning(BNB_TEXT, "no module named 'kernels'")
    assert len(caplog.records) == 1 and "pip install kernels" in caplog.records[0].getMessage()
    assert all(logging.getLogger(name).filter(r) for name, r in export_lines)


def test_sigterm_raises_keyboard_interrupt_in_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        cli_common.stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill returns
    finally:
        signal.signal(signal.SIGTERM, before)

