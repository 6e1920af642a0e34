"""One running device per state directory: an exclusive OS lock held while ``join`` runs
(and, for copies on other machines, the error a regional hub's duplicate notice raises).

Two ``edge-client join`` with the same client id (a copy started twice, a unit restored
from the same image) used to fight over one MQTT session, each connect kicking the other
off, and both wrote the same local parameters.  The second one now fails at start.

The lock is ``flock(2)`` on ``STATE_DIR/device.lock``: the kernel drops it when its holder
exits in any way (a crash or ``kill -9`` included), so a lock left by a dead process never
blocks, and no pid file has to be judged stale.  The file is never truncated by a
contender and never deleted (deleting a lock file lets two processes lock two different
inodes of one name); its holder writes its pid, host and client id into it, which the
refused process reads back for its message.  Opened without inheritance (PEP 446), so a
child process does not keep the lock alive.

Light on purpose (no torch): ``join`` takes the lock before loading anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from fedsa_common.wire.errors import UserError

LOCK_FILE = "device.lock"
META = "device.json"  # the device's identity and bookkeeping, written by ``state.StateDir``


class StateDirError(ValueError, UserError):
    """A state directory this device cannot use; the message names it and what to do."""

    option = "--state-dir"


class StateDirBusy(StateDirError):
    """Another running process holds the directory's lock."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"state directory {path} is in use by {describe(holder)}; "
                         "each device needs its own --state-dir, and a client id runs once")


class DuplicateClientId(RuntimeError, UserError):
    """The regional hub saw another running device with this client id, started earlier,
    and told this one to leave (the lock above covers copies on one machine; this, copies
    on two): the message says which session holds the id."""

    option = "--client-id"


def describe(holder: dict[str, Any]) -> str:
    """``another edge-client (pid 12, client dev-0)``, with what the holder wrote."""
    facts = []
    if isinstance(holder.get("pid"), int):
        host = holder.get("host")
        here = host in (None, socket.gethostname())
        facts.append(f"pid {holder['pid']}" + ("" if here else f" on {host}"))
    else:
        facts.append("pid unknown")
    if holder.get("client"):
        facts.append(f"client {holder['client']}")
    return f"another edge-client ({', '.join(facts)})"


class StateDirLock:
    """``with StateDirLock(path, client):`` holds ``path``'s lock or raises ``StateDirBusy``.

    Also usable as ``acquire()``/``release()``.  Creates ``path`` if needed.
    """

    def __init__(self, path: Path, client: str | None = None) -> None:
        self.path = Path(path)
        self.client = client
        self._fd: int | None = None

    @property
    def file(self) -> Path:
        return self.path / LOCK_FILE

    def acquire(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # O_RDWR without O_TRUNC: a refused contender must not erase the holder's pid
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateDirError(f"state directory {self.path}: cannot use it: "
                                f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateDirBusy(self.path, holder) from None
        except OSError as exc:  # a filesystem without locks: say so rather than run unguarded
            os.close(fd)
            raise StateDirError(f"state directory {self.path}: cannot lock {LOCK_FILE}: "
                                f"{exc.strerror or exc}") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "client": self.client}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # the next reader finds no stale pid
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote (``{}`` while it is still writing, or for an unknown format)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_owner(path: Path, client: str, region: str, federation: str) -> None:
    """Refuse a state directory that holds another device's state.

    One directory belongs to exactly one device (client, region, federation), so that two
    devices can never share, and leak, each other's local parameters.
    """
    meta = Path(path) / META
    if not meta.exists():
        return
    try:
        found = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StateDirError(f"{meta}: unreadable ({exc}); move it away or use another "
                            "--state-dir") from None
    found = found if isinstance(found, dict) else {}
    have = (found.get("client"), found.get("region"), found.get("federation"))
    if have != (client, region, federation):
        raise StateDirError(
            f"state directory {path} belongs to client={have[0]} region={have[1]} "
            f"federation={have[2]}; each device needs its own --state-dir")
