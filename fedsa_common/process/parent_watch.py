"""A child process that stops when the process that started it is gone (a region leader's
intake processes, ``hub.intake_pool``).

Why: a leader killed by SIGKILL (or the OOM killer) runs no clean-up, so its children kept
serving until the federation ended: the next leader started a second set beside them, and
the orphans held their shard's updates.  The child watches for it itself.

Why a thread that polls ``os.getppid()`` rather than Linux's ``PR_SET_PDEATHSIG``:

* the death signal fires when the *thread* that forked the child ends, not the process, and
  the intake pool restarts a crashed child from its watch thread: a restarted child would
  be tied to that thread, not to the leader;
* set by the child after its interpreter starts, it still misses a parent that died before,
  so the parent's pid has to be passed and compared anyway, which is all the poll does;
* ``os.getppid()`` works wherever Python does, and one system call a second costs nothing.

The parent's pid is passed explicitly (``--leader-pid``), not read at start: by then a
parent that died at once has already been replaced by init (or a subreaper).  When the
parent is gone the child gets SIGTERM from itself, which a ``hub serve`` process handles
like Ctrl-C (``cli_common.stop_on_sigterm``: state as after the last persist; its broker
will says it is offline); if it is still running ``grace_s`` later, it exits hard.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger("fedsa.process")

CHECK_EVERY_S = 1.0
GRACE_S = 30.0  # after the SIGTERM to itself, before os._exit


def parent_alive(parent_pid: int) -> bool:
    """Whether this process's parent is still ``parent_pid``: an orphan is re-parented at
    once to init or a subreaper, a process that was alive beside the dead parent, so its
    parent pid changes and never to the dead parent's (even if that pid is reused)."""
    return os.getppid() == parent_pid


def exit_with_parent(parent_pid: int, *, check_every_s: float = CHECK_EVERY_S,
                     grace_s: float = GRACE_S) -> threading.Thread:
    """Start a daemon thread that stops this process once its parent is no longer
    ``parent_pid`` (at once if it already is not); returns the thread."""

    def watch() -> None:
        while parent_alive(parent_pid):
            time.sleep(check_every_s)
        log.warning("parent process %d is gone (parent now %d): stopping", parent_pid,
                    os.getppid())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        log.error("still running %gs after the parent left: exiting", grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
