"""One error style across edge-client, hub and scenarios (fedsa_common.process.cli_common): a user's
mistake is one line ``error: WHAT (OPTION)`` and exit 2, the traceback only with
--log-level DEBUG; a bug keeps its traceback and exits 1. Through the real apps."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_client.cli import app as edge_app
from fedsa_common.process.cli_common import error_text
from hub.cli import app as hub_app
from scenarios.cli import app as scenarios_app
from tests.support.programs import program

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "scenarios" / "tiny.yaml"
APPS = {"edge-client": edge_app, "hub": hub_app, "scenarios": scenarios_app}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tiny_with(tmp: Path, old: str, new: str) -> Path:
    return _write(tmp / "scenario.yaml", TINY.read_text().replace(old, new))


def _join(tmp: Path, **options: str) -> list[str]:
    data = _write(tmp / "d.csv", "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n"
                                                           for i in range(10)))
    opts = {"--federation": "fed", "--region": "north", "--client-id": "dev-0",
            "--data": str(data), "--state-dir": str(tmp / "state"),
            "--broker": "mqtt://127.0.0.1:1", **options}
    return ["join", *[x for kv in opts.items() for x in kv]]


def _serve(tmp: Path, **options: str) -> list[str]:
    good = _write(tmp / "good.yaml", "model: {num_labels: 3}\n")
    opts = {"--role": "cloud", "--federation": "fed", "--state-dir": str(tmp / "cloud"),
            "--broker": "mqtt://127.0.0.1:1", "--connect-timeout": "1", "--config": str(good),
            **options}
    return ["serve", *[x for kv in opts.items() for x in kv]]


# (app, argv from tmp_path, what the one line must contain: the fault and what names it)
Mistake = tuple[str, Callable[[Path], list[str]], Callable[[Path], list[str]]]
MISTAKES: dict[str, Mistake] = {
    "hub serve: config is not YAML": (
        "hub", lambda t: _serve(t, **{"--config": str(_write(t / "c.yaml", "rounds: [1\n"))}),
        lambda t: [f"{t / 'c.yaml'}: not valid YAML at line 2, column 1", "(--config)"]),
    "hub serve: unknown config field": (
        "hub", lambda t: _serve(t, **{"--config": str(_write(t / "c.yaml",
                                                             "training:\n  lrr: 1\n"))}),
        lambda t: ["invalid configuration: training.lrr: unknown key; allowed: local_steps, "
                   "batch_size, lr,", f"(--config {t / 'c.yaml'})"]),
    "hub serve: config without num_labels": (  # used to fail after the broker started
        "hub", lambda t: _serve(t, **{"--config": str(_write(t / "c.yaml", "rounds: 2\n"))}),
        lambda t: ["model.num_labels: required in a cloud hub's --config",
                   f"(--config {t / 'c.yaml'})"]),
    "hub serve: a scenario file as config": (  # the tiny-test template, a scenario
        "hub", lambda t: _serve(t, **{"--config": str(TINY)}),
        lambda t: [f"{TINY} is a scenario file (it has a top-level scenario: section), not a "
                   "cloud hub's configuration: play it with 'scenarios run FILE --out DIR'",
                   "delete its scenario: and tune: sections and set model.num_labels",
                   "(--config)"]),
    "hub serve: missing config": (
        "hub", lambda t: _serve(t, **{"--config": str(t / "nope.yaml")}),
        lambda t: [f"configuration file not found: {t / 'nope.yaml'}"]),
    "hub serve: state dir is a file": (
        "hub", lambda t: _serve(t, **{"--state-dir": str(_write(t / "f", ""))}),
        lambda t: [f"{t / 'f'} exists and is not a directory", "(--state-dir)"]),
    "hub serve: bad federation name": (
        "hub", lambda t: _serve(t, **{"--federation": "a/b"}),
        lambda t: ["federation 'a/b' must match", "(--federation)"]),
    "hub serve: bad broker URL": (
        "hub", lambda t: _serve(t, **{"--broker": "http://broker:1883"}),
        lambda t: ["broker URL must look like mqtt://host:port", "(--broker)"]),
    "hub serve: CA file missing": (
        "hub", lambda t: _serve(t, **{"--broker": "mqtts://127.0.0.1:1",
                                      "--tls-ca": str(t / "ca.pem")}),
        lambda t: [f"cannot load the TLS CA from {t / 'ca.pem'}", "--tls-ca"]),
    "hub serve: regional without region": (
        "hub", lambda t: ["serve", "--role", "regional", "--federation", "fed",
                          "--state-dir", str(t / "r")],
        lambda t: ["required for --role regional", "(--region)"]),
    "hub serve: secagg authority not a key": (
        "hub", lambda t: ["serve", "--role", "regional", "--region", "north", "--federation",
                          "fed", "--state-dir", str(t / "r"), "--broker", "mqtt://127.0.0.1:1",
                          "--secagg-authority", str(_write(t / "a.pub", "c2hvcnQ=\n"))],
        lambda t: [f"secagg authority file {t / 'a.pub'}: an Ed25519 public key is 32 bytes, "
                   "not 5", "(--secagg-authority)"]),
    "hub export: empty state dir": (
        "hub", lambda t: ["export", "--state-dir", str(t), "--out", str(t / "out")],
        lambda t: [f"{t}: no cloud checkpoint", "(--state-dir)"]),
    "hub status: no broker": (
        "hub", lambda t: ["status", "--federation", "fed"],
        lambda t: ["give --broker or --credentials"]),  # names the options itself
    "hub config template: unknown": (
        "hub", lambda t: ["config", "template", "huge"],
        lambda t: ["unknown template 'huge'", "(NAME)"]),
    "hub: unknown command": (
        "hub", lambda t: ["serv"], lambda t: ["No such command 'serv'", "--help"]),
    "edge-client export: missing state dir": (
        "edge-client", lambda t: ["export", "--state-dir", str(t / "none"), "--out",
                                  str(t / "m.onnx")],
        lambda t: [f"{t / 'none'}: no model.json", "(--state-dir)"]),
    "edge-client join: missing data file": (
        "edge-client", lambda t: _join(t, **{"--data": str(t / "missing.csv")}),
        lambda t: [f"{t / 'missing.csv'}: no such file", "(--data)"]),
    "edge-client join: bad broker URL": (
        "edge-client", lambda t: _join(t, **{"--broker": "ws://broker:9001"}),
        lambda t: ["WebSockets is not supported", "(--broker)"]),
    "edge-client join: missing option": (
        "edge-client", lambda t: [a for a in _join(t) if a not in ("--data", str(t / "d.csv"))],
        lambda t: ["Missing option '--data'", "join --help"]),
    "edge-client join: bad precision": (
        "edge-client", lambda t: _join(t, **{"--precision": "nf3"}),
        lambda t: ["unknown precision 'nf3'", "(--precision)"]),
    "edge-client predict: missing model": (
        "edge-client", lambda t: ["predict", "--model", str(t / "m.onnx"), "hello"],
        lambda t: [f"no model at {t / 'm.onnx'}", "(--model)"]),
    "scenarios run: missing file": (
        "scenarios", lambda t: ["run", str(t / "nope.yaml"), "--out", str(t / "out")],
        lambda t: [f"configuration file not found: {t / 'nope.yaml'}"]),
    "scenarios run: invalid field": (
        "scenarios", lambda t: ["run", str(_tiny_with(t, "rounds: 2", "rounds: many")),
                                "--out", str(t / "out")],
        lambda t: ["invalid configuration: rounds: Input should be a valid integer",
                   f"({t / 'scenario.yaml'})"]),
    "scenarios run: a directory as the file": (
        "scenarios", lambda t: ["run", str(t), "--out", str(t / "out")],
        lambda t: [f"cannot read configuration file {t}: Is a directory"]),
    "scenarios run: bad --set": (
        "scenarios", lambda t: ["run", str(TINY), "--out", str(t / "out"), "--set", "rounds"],
        lambda t: ["--set 'rounds': expected KEY=VALUE"]),
    "scenarios run: out is a file": (
        "scenarios", lambda t: ["run", str(TINY), "--out", str(_write(t / "o", "")),
                                "--broker", "mqtt://127.0.0.1:1"],
        lambda t: [f"{t / 'o'} exists and is not a directory", "(--out)"]),
}


def assert_one_error_line(stderr: str, parts: list[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_user_mistake_is_one_line_naming_what_to_fix_and_exit_2(case: str,
                                                                   tmp_path: Path) -> None:
    app, argv, expected = MISTAKES[case]
    result = CliRunner().invoke(APPS[app], argv(tmp_path))
    assert result.exit_code == 2, (result.output, result.exception)
    assert_one_error_line(result.stderr, expected(tmp_path))
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", ["hub serve: a scenario file as config",
                                  "edge-client join: missing data file",
                                  "scenarios run: invalid field"])
def test_each_installed_program_reports_a_mistake_the_same_way(case: str,
                                                               tmp_path: Path) -> None:
    """The same, one mistake per program, through the program itself: its entry point,
    the real standard error and exit status."""
    name, argv, expected = MISTAKES[case]
    done = subprocess.run([*program(name), *argv(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, expected(tmp_path))
    assert done.stdout == ""


def test_log_level_debug_adds_the_traceback_behind_the_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(edge_app, _join(tmp_path, **{
        "--data": str(tmp_path / "missing.csv"), "--log-level": "DEBUG"}))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    # the error that was turned into the message (the DataError raised by the data checks)
    assert lines[0].startswith("Traceback (most recent call last)"), result.stderr
    assert any(line.startswith("edge_client.data.dataset.DataError: ") for line in lines)
    assert lines[-1] == f"error: {tmp_path / 'missing.csv'}: no such file (--data)"


def test_a_bug_keeps_its_traceback_and_exits_1(tmp_path: Path) -> None:
    """A ValueError that is no user error (here planted in `hub config template`'s table)
    is a bug in our code: the traceback shows, and no 'error:' line hides it."""
    plant = ("import sys, hub.templates\n"
             "class Broken(dict):\n"
             "    def items(self):\n"
             "        raise ValueError('planted bug')\n"
             "hub.templates.TEMPLATES = Broken()\n"
             "from hub.cli import app\n"
             "sys.argv = ['hub', 'config', 'template']\n"
             "app()\n")
    done = subprocess.run([sys.executable, "-c", plant], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "ValueError: planted bug" in done.stderr
    assert not any(line.startswith("error: ") for line in done.stderr.splitlines())


def test_error_text_keeps_one_line_and_names_the_option_once() -> None:
    assert error_text("no such file", "--data") == "error: no such file (--data)"
    # a heading with one field stays on one line; with several, one line per field
    assert error_text("invalid configuration:\n  rounds: bad", "--config c.yaml") == (
        "error: invalid configuration: rounds: bad (--config c.yaml)")
    assert error_text("invalid configuration:\n  a: x\n  b: y", "f.yaml") == (
        "error: invalid configuration (f.yaml):\n  a: x\n  b: y")
    # not repeated when the message names it already, or starts with the option
    assert error_text("a.yaml: not valid YAML", "a.yaml") == "error: a.yaml: not valid YAML"
    assert error_text("--set 'x': expected KEY=VALUE", "f.yaml") == (
        "error: --set 'x': expected KEY=VALUE")
    assert error_text("c.yaml: not valid YAML", "--config c.yaml") == (
        "error: c.yaml: not valid YAML (--config)")
    assert error_text("broken", None) == "error: broken"
