"""The intake processes a region leader starts (``hub serve --role regional
--intake-shards K``): K children ``hub serve --role intake --shard i``, each with its own
state directory and log under the leader's, restarted when one dies, stopped with it; a
leader killed outright (SIGKILL) cannot stop them, so each stops by itself once the leader
is gone (``--leader-pid``, ``fedsa_common.process.parent_watch``).

Why children of the leader: one command (and one systemd unit) per region, as with a
single regional hub; the children share the leader's connection options and credentials
(the region's account may read its devices' updates and write their acknowledgements).
A child that exits 0 (its federation finished) is not restarted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from fedsa_common.process.managed import ManagedProcess, option_args, stop_all

log = logging.getLogger("fedsa.hub.intake_pool")

CHECK_EVERY_S = 1.0
MAX_RESTART_DELAY_S = 30.0  # a child that keeps failing at once is retried at most this often


def worker_dir(state_dir: Path, shard: int) -> Path:
    """Intake process ``shard``'s state directory (its log beside it)."""
    return Path(state_dir) / f"intake-{shard}"


class IntakePool:
    """``with IntakePool(k, state_dir, options):`` runs the K intake processes.

    ``options``: the ``hub serve`` options every child gets (``federation``, ``region``,
    ``broker``, credentials, log level, ...), by their Python names."""

    def __init__(self, shards: int, state_dir: Path, options: dict[str, Any]) -> None:
        self.shards, self.state_dir, self.options = shards, Path(state_dir), dict(options)
        self.procs: list[ManagedProcess] = []
        self.restarts = 0
        self._retry_at: dict[int, tuple[float, float]] = {}  # shard -> (when, next delay)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="intake-pool", daemon=True)

    def args(self, shard: int) -> list[str]:
        return ["serve", *option_args({"role": "intake", "shard": shard,
                                       "intake_shards": self.shards,
                                       # it stops once this process is gone (SIGKILLed)
                                       "leader_pid": os.getpid(),
                                       "state_dir": worker_dir(self.state_dir, shard),
                                       **self.options})]

    def __enter__(self) -> IntakePool:
        for i in range(self.shards):
            self.procs.append(ManagedProcess("hub", self.args(i), self.log_path(i)))
        log.info("started %d intake processes (logs %s)", self.shards,
                 ", ".join(str(self.log_path(i)) for i in range(self.shards)))
        self._thread.start()
        return self

    def log_path(self, shard: int) -> Path:
        return self.state_dir / f"intake-{shard}.log"

    def _watch(self) -> None:
        """Restart a child that died (a crash, the OOM killer), not one that finished; one
        that dies again within a minute waits twice as long as before (at most
        ``MAX_RESTART_DELAY_S``), so a child that cannot start does not spin."""
        while not self._stop.wait(CHECK_EVERY_S):
            now = time.monotonic()
            for i, proc in enumerate(self.procs):
                code = proc.returncode
                if code is None or code == 0 or self._stop.is_set():
                    continue
                at, delay = self._retry_at.get(i, (0.0, CHECK_EVERY_S))
                if now < at:
                    continue
                proc.wait()
                log.warning("intake process %d exited with %d; restarting it", i, code)
                self.restarts += 1
                self.procs[i] = proc.restarted()
                short = now - at < 60.0
                self._retry_at[i] = (now + (delay if short else 0.0),
                                     min(MAX_RESTART_DELAY_S, delay * 2) if short
                                     else CHECK_EVERY_S)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        stop_all(self.procs)
