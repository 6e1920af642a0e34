"""Managed child processes (fedsa_common.process.managed), which the library API and the scenario
runner start every hub and device as: real processes of a probe package that answers
SIGTERM as the kit's commands do (a clean exit of its own), or ignores it, so that a clean
stop, the SIGKILL fallback and the SIGCONT for a frozen process can each be told apart by
the exit status."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedsa_common.process.managed import ManagedProcess, option_args, stop_all

pytestmark = pytest.mark.integration

CLEAN_EXIT = 3  # what the probe exits with on SIGTERM
PROBE = f"""\
import os, signal, sys, time

def leave(*_):
    print("terminated", flush=True)
    sys.exit({CLEAN_EXIT})

mode = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore" else leave)
print("ready", os.getpid(), flush=True)
if mode == "exit":
    sys.exit(0)
while True:
    time.sleep(1)
"""


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[Callable[[str, str], ManagedProcess]]:
    """``probe(mode, name)``: ``python -m probe MODE`` (term: exits CLEAN_EXIT on SIGTERM,
    ignore: ignores it, exit: exits 0 at once), its log ``tmp_path/NAME.log``."""
    (tmp_path / "pkg" / "probe").mkdir(parents=True)
    (tmp_path / "pkg" / "probe" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "probe" / "__main__.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path / "pkg"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    started: list[ManagedProcess] = []

    def start(mode: str, name: str) -> ManagedProcess:
        started.append(ManagedProcess("probe", [mode], tmp_path / "logs" / f"{name}.log"))
        return started[-1]

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()


def ready(proc: ManagedProcess, wait_for_log: Callable[..., object]) -> None:
    assert proc.log_path is not None
    wait_for_log(proc.log_path, r"ready \d+", proc.popen)


def test_option_args_spell_python_names_as_options() -> None:
    assert option_args({"state_dir": Path("s"), "metrics_port": 0, "force": True,
                        "dry_run": False, "region": None, "tag": ["a", "b"]}) == [
        "--state-dir", "s", "--metrics-port", "0", "--force", "--tag", "a", "--tag", "b"]


def test_stop_is_a_clean_sigterm_in_a_session_of_its_own(probe, wait_for_log) -> None:
    proc = probe("term", "term")
    ready(proc, wait_for_log)
    assert os.getsid(proc.pid) == proc.pid  # a terminal's Ctrl-C reaches only its owner
    assert proc.stop(grace_s=60) == CLEAN_EXIT
    assert proc.log_path is not None and "terminated" in proc.log_path.read_text()


def test_stop_kills_a_process_that_ignores_sigterm(probe, wait_for_log) -> None:
    proc = probe("ignore", "stubborn")
    ready(proc, wait_for_log)
    assert proc.stop(grace_s=1) == -signal.SIGKILL


def test_stop_all_continues_a_frozen_process_and_keeps_every_status(probe,
                                                                     wait_for_log) -> None:
    frozen, stubborn, done = probe("term", "frozen"), probe("ignore", "stubborn"), \
        probe("exit", "done")
    for proc in (frozen, stubborn, done):
        ready(proc, wait_for_log)
    assert done.wait(timeout=120) == 0
    frozen.send_signal(signal.SIGSTOP)  # as a scenario's network partition freezes a hub
    # the frozen one acts on SIGTERM (it got SIGCONT), the stubborn one is killed at the
    # one deadline, the finished one keeps its status
    assert stop_all([frozen, stubborn, done], grace_s=20) == [CLEAN_EXIT, -signal.SIGKILL, 0]


def test_kill_and_restart_append_to_the_same_log(probe, wait_for_log) -> None:
    first = probe("term", "hub")
    ready(first, wait_for_log)
    assert first.kill() == -signal.SIGKILL
    again = first.restarted()
    try:
        assert again.command == ["term"] and again.log_path == first.log_path
        assert again.log_path is not None
        wait_for_log(again.log_path, r"ready \d+\n(.|\n)*ready \d+", again.popen)
        assert again.stop(grace_s=60) == CLEAN_EXIT
    finally:
        if again.returncode is None:
            again.kill()
