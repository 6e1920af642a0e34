"""``exit_with_parent`` with real processes: a child stops once its parent is SIGKILLed,
stops at once when started after its parent already left, and keeps running while the
parent lives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.support.procs import gone, wait_gone

pytestmark = pytest.mark.integration

WATCHED_CHILD = textwrap.dedent("""
    import sys, time
    from fedsa_common.process.parent_watch import exit_with_parent
    exit_with_parent(int(sys.argv[1]), check_every_s=0.05, grace_s=30)
    time.sleep(float(sys.argv[2]))
""")


def child(parent_pid: int, sleep_s: float) -> list[str]:
    return [sys.executable, "-c", WATCHED_CHILD, str(parent_pid), str(sleep_s)]


def test_child_stops_when_its_parent_is_sigkilled():
    # a parent that starts a watched child, says its pid and waits forever
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", {WATCHED_CHILD!r}, str(os.getpid()),
                              "600"])
        print(p.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert not gone(grandchild)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert wait_gone([grandchild]) == [], "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        if grandchild is not None and not gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_child_whose_parent_left_before_it_watched_stops_at_once():
    # the pid it is told is not its parent's: as if the parent died before the child started
    not_parent = os.getpid() + 1_000_000
    done = subprocess.run(child(not_parent, 600), timeout=60)
    assert done.returncode == -signal.SIGTERM


def test_child_keeps_running_while_its_parent_lives():
    done = subprocess.run(child(os.getpid(), 1.0), timeout=60)
    assert done.returncode == 0
