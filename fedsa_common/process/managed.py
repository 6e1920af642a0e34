"""A fedsa-edge command run as a child process that its owner stops (the library API's
"managed" hubs and devices, and every process a scenario plays): SIGTERM first, which every
command handles like Ctrl-C (children stopped, state saved), then SIGKILL after a grace
period.  ``stop_all`` stops several at once against one deadline.

The command runs as ``python -m PACKAGE ARGS`` with this interpreter, so it uses the same
installation as its owner, in a session of its own (a terminal's Ctrl-C reaches the owner
only, which stops it); its output goes to a log file, never to a pipe nobody reads.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def option_args(options: Mapping[str, Any]) -> list[str]:
    """``{"state_dir": p, "metrics_port": 0, "force": True}`` as ``--state-dir p
    --metrics-port 0 --force``: None leaves an option out, False a flag, a list repeats it."""
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


class ManagedProcess:
    """``with ManagedProcess("hub", ["serve", ...], log):`` runs ``python -m hub serve ...``
    and stops it on leaving the block (or ``stop()``)."""

    def __init__(self, package: str, args: list[str], log_path: Path | None = None) -> None:
        self.package, self.command = package, list(args)
        self.args = [sys.executable, "-m", package, *args]
        self.log_path = None if log_path is None else Path(log_path)
        self._log: IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop/wait
        self.popen = subprocess.Popen(
            self.args, stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, None while it runs."""
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status once it ends (``subprocess.TimeoutExpired`` after ``timeout``)."""
        code = self.popen.wait(timeout=timeout)
        self._close_log()
        return code

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM (a clean stop, as after Ctrl-C), SIGKILL if it lingers past ``grace_s``;
        returns its exit status."""
        return stop_all([self], grace_s)[0]

    def kill(self) -> int:
        """SIGKILL at once (a crash, as a scenario's fault plays it); its exit status."""
        self.popen.kill()
        return self.wait()

    def send_signal(self, sig: int) -> None:
        """``sig`` to the process, if it still runs (e.g. SIGSTOP to freeze it)."""
        self.popen.send_signal(sig)

    def restarted(self) -> ManagedProcess:
        """The same command started again, appending to the same log."""
        return ManagedProcess(self.package, self.command, self.log_path)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def stop_all(processes: Sequence[ManagedProcess], grace_s: float = 10.0) -> list[int]:
    """Stop every process, cleanly where it can, in at most ``grace_s`` in all (not per
    process): each running one gets SIGCONT (a SIGSTOPped process acts on SIGTERM only once
    it runs again) and SIGTERM first, then all are waited for against one deadline, and
    any still running then gets SIGKILL.  Their exit statuses, in order."""
    for proc in processes:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGCONT)
            proc.popen.send_signal(signal.SIGTERM)
    until = time.monotonic() + grace_s
    codes = []
    for proc in processes:
        try:
            proc.popen.wait(timeout=max(0.1, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
        codes.append(proc.wait())
    return codes
