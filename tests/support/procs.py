"""Looking at real processes from a test (Linux ``/proc``): a process's children, and
whether one has exited even when it is no longer the test's child to wait for."""

from __future__ import annotations

import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cmdline(pid: int) -> list[str]:
    """``pid``'s command line (empty once it exited)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]
    except FileNotFoundError:
        return []


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (an orphan's new parent may
    be a container's pid 1 that reaps late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_gone(pids: list[int], bound_s: float = 60.0) -> list[int]:
    """Poll until every one of ``pids`` exited or ``bound_s`` passed; those still running."""
    until = time.monotonic() + bound_s
    while time.monotonic() < until and not all(gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not gone(p)]
