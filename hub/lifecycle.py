"""A federation's lifecycle: extend it, stop it early, reset its name (``hub federation``).

Why this exists: a federation's end is kept in two places that outlive every process.  The
cloud checkpoint says how many rounds are done, and the broker keeps the retained 'finished'
announcement (a provisioned Mosquitto persists it across restarts), on which every hub and
device exits at once.  So a federation could be neither continued (a changed ``rounds`` was
"another configuration") nor started again under its name (a fresh cloud waited forever for
devices that had exited).

* The total number of rounds is the one part of the configuration that may change on a
  restart: the checkpoint keeps the configuration it ran with, so a restart that changes
  anything else is refused naming the fields (``resume_rounds``), and ``rounds`` is left out
  of ``FederationConfig.state_digest``, which devices compare before they reset their B and
  head (they keep them across an extension).
* The checkpoint keeps the total as last decided, by the configuration file or by
  ``hub federation extend|stop``; whichever changed last wins (``resolve_total``), so an
  extension or a stop survives a restart with the unchanged file, and editing ``rounds`` in
  the file still works.
* A running cloud obeys ``Control`` messages (``Topics.control``); a stopped one is extended
  offline in its ``--state-dir`` (``extend_checkpoint``), which ``CloudLock`` keeps from
  racing a running cloud.
* ``reset_retained`` clears the broker's retained announcement, full global and cloud status
  of a name, so a new run can start under it.

Only the JSON side of the checkpoint is touched here (no torch), so the offline commands
start in well under a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedsa_common.federation.config import FederationConfig, digest_of, format_validation_error
from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession, chunk_filter
from fedsa_common.process.atomic import read_json, write_json
from fedsa_common.wire.chunking import Reassembler
from fedsa_common.wire.errors import UserError, WireError
from fedsa_common.wire.protocol import AnnounceHeader, Control, Topics, decode_message

CHECKPOINT_JSON = "checkpoint.json"
CLOUD_LOCK = "cloud.lock"
#: Checkpoints written before they kept their configuration hold only its hash; the rounds
#: it had are found by trying this many totals from the rounds completed (about 1 ms each).
OLD_ROUNDS_SEARCH = 2000
MAX_CHANGES_NAMED = 5
RETAINED_SETTLE_S = 1.0  # retained messages follow the SUBACK at once; then this much quiet


class LifecycleError(ValueError, UserError):
    """A lifecycle request that cannot be carried out as asked; the message says why and
    what to do instead, ``option`` which command-line option it concerns."""

    def __init__(self, message: str, option: str = "--state-dir") -> None:
        super().__init__(message)
        self.option = option


# --------------------------------------------------------------------- rounds on a restart
def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
                   ) -> list[str]:
    """``path: old -> new`` for every leaf that differs between two dumped configurations,
    ``rounds`` aside (the one key a restart may change)."""
    changes: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if path == "rounds":
            continue
        a, b = old.get(key, "unset"), new.get(key, "unset")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += config_changes(a, b, f"{path}.")
        elif a != b:
            changes.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")
    return changes


def checkpoint_rounds(config: FederationConfig, *, completed: int, config_hash: str,
                      saved_config: Mapping[str, Any] | None, state_dir: Path) -> int:
    """The ``rounds`` of the configuration a checkpoint was made with, after checking that
    ``config`` differs from it in nothing else (``LifecycleError`` naming what differs)."""
    if saved_config is not None:
        if digest_of({k: v for k, v in saved_config.items() if k != "rounds"}) \
                == config.state_digest():
            return int(saved_config["rounds"])
        raise LifecycleError(_mismatch(state_dir, config_changes(
            saved_config, config.model_dump(mode="json"))), "--config")
    if config_hash == config.digest():
        return config.rounds
    data = config.model_dump(mode="json")
    start = max(1, completed)
    for rounds in range(start, start + OLD_ROUNDS_SEARCH):
        data["rounds"] = rounds
        if digest_of(data) == config_hash:
            return rounds
    raise LifecycleError(_mismatch(state_dir, []), "--config")


def _mismatch(state_dir: Path, changes: list[str]) -> str:
    shown = "; ".join(changes[:MAX_CHANGES_NAMED]) + (
        f"; and {len(changes) - MAX_CHANGES_NAMED} more" if len(changes) > MAX_CHANGES_NAMED
        else "")
    what = f" ({shown})" if shown else ""
    return (f"the checkpoint in {state_dir} was made with another configuration{what}. A "
            "restart may change only rounds (or use `hub federation extend`): restore the "
            "configuration it was made with, or start over with a fresh --state-dir (after "
            "`hub federation reset` when the name was used on this broker)")


def resolve_total(file_rounds: int, *, saved_rounds: int, target: int | None,
                  file_rounds_before: int | None) -> int:
    """The federation's total rounds on a restart: the configuration file's when it changed
    since the checkpoint's last start (the newer instruction), else the target a lifecycle
    command left in the checkpoint, else the rounds the checkpoint ran with."""
    if file_rounds != (saved_rounds if file_rounds_before is None else file_rounds_before):
        return file_rounds
    return saved_rounds if target is None else target


def check_growth(config: FederationConfig, total: int, calibrated: int) -> None:
    """Differential privacy calibrated its noise to spend epsilon over the rounds it ran
    with; more rounds would spend more than epsilon, so the total may not grow past them."""
    if total > calibrated and config.fedsa_lora.privacy.differential_privacy.enable:
        raise LifecycleError(
            f"cannot extend to {total} rounds: differential privacy calibrated its noise to "
            f"spend epsilon over {calibrated} rounds, and more rounds would spend more; "
            "start a new federation (a fresh --state-dir) with the rounds and epsilon wanted",
            "--rounds")


def with_rounds(config: FederationConfig, total: int) -> FederationConfig:
    """``config`` running ``total`` rounds, validated again: head and B sharing check their
    rounds against the total (``rounds`` is at least 1 in a configuration; a federation
    stopped before its first round finishes with 0 done)."""
    try:
        return FederationConfig.model_validate(
            {**config.model_dump(mode="json"), "rounds": max(1, total)})
    except ValidationError as err:
        why = format_validation_error(err, FederationConfig)
        raise LifecycleError(f"{total} rounds do not fit this configuration: {why}",
                             "--rounds") from None


# ------------------------------------------------------------------------- offline extend
class CloudLock:
    """An exclusive ``flock`` on ``STATE_DIR/cloud.lock`` for as long as a cloud hub (or an
    offline lifecycle command) uses the state directory; the kernel drops it when the
    holder exits in any way, so a crash never leaves it behind."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / CLOUD_LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``LifecycleError`` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LifecycleError(f"{self.path.parent} is in use by a running cloud hub "
                                 f"(pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CloudLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class Extended:
    completed: int
    before: int
    total: int


def extend_checkpoint(state_dir: Path, *, total: int | None = None, by: int | None = None
                      ) -> Extended:
    """Raise (or set) the total rounds kept in a stopped cloud's checkpoint; the cloud
    started again on it runs the rounds that are left from its last global version."""
    state_dir = Path(state_dir)
    path = state_dir / CHECKPOINT_JSON
    if not path.exists():
        raise LifecycleError(f"no cloud checkpoint in {state_dir} ({CHECKPOINT_JSON} is "
                             "missing): give the --state-dir the cloud hub ran with")
    with CloudLock(state_dir):
        meta = read_json(path)
        completed = int(meta["round"])
        saved = meta.get("config") or {}
        before = next(int(v) for v in (meta.get("rounds"), saved.get("rounds"), completed)
                      if v is not None)  # a stop before round 1 leaves a total of 0
        new = before + by if by is not None else total
        if new is None:
            raise ValueError("give total or by")
        if new < completed:
            raise LifecycleError(f"{completed} rounds are already done; the total cannot "
                                 f"be {new}", "--rounds")
        if saved:
            config = FederationConfig.model_validate(saved)
            check_growth(config, new, int(saved["rounds"]))
            with_rounds(config, new)
        write_json(path, {**meta, "rounds": new})
    return Extended(completed, before, new)


def set_target(state_dir: Path, total: int) -> None:
    """Record a running cloud's new total in its checkpoint.json (it holds the lock)."""
    path = Path(state_dir) / CHECKPOINT_JSON
    write_json(path, {**read_json(path), "rounds": total})


# ------------------------------------------------------------------------- broker side
def read_retained_announce(session: MqttSession, topics: Topics, max_bytes: int,
                           wait_s: float = RETAINED_SETTLE_S
                           ) -> tuple[AnnounceHeader, bytes] | None:
    """The retained round announcement of a connected session's federation (header and
    whole payload), if any: what every hub and device acts on when it (re)joins.
    Subscribes, waits ``wait_s`` for it, unsubscribes."""
    got: list[bytes] = []
    arrived = threading.Event()

    def keep(_topic: str, payload: bytes) -> None:
        if payload:
            got.append(payload)
            arrived.set()

    session.subscribe(topics.announce, keep)
    try:
        arrived.wait(wait_s)
    finally:
        session.unsubscribe(topics.announce, keep)
    if not got:
        return None
    try:
        return decode_message(AnnounceHeader, got[-1], max_bytes=max_bytes)[0], got[-1]
    except WireError:
        return None


@dataclass
class Retained:
    """What the broker keeps for a federation, as ``hub federation`` needs it."""

    announce: AnnounceHeader | None = None
    cloud_status: dict[str, Any] | None = None
    topics: set[str] = field(default_factory=set)  # every retained frame/raw topic found

    @property
    def cloud_alive(self) -> bool:
        """A cloud status that says online and not finished: a cloud hub is serving (a
        crashed or killed one leaves its last will, online: false)."""
        s = self.cloud_status or {}
        return bool(s.get("online")) and not s.get("finished")


def collect_retained(session: MqttSession, topics: Topics, *, max_bytes: int,
                     timeout_s: float) -> Retained:
    """Gather the announcement, the full global's frames and the cloud status retained for
    ``topics``' federation (for ``reset``: every frame topic, to clear them all)."""
    found = Retained()
    lock = threading.Lock()
    last = [time.monotonic()]
    frames: dict[str, bytes] = {}

    def frame(topic: str, payload: bytes) -> None:
        with lock:
            if payload:
                found.topics.add(topic)
                frames[topic] = payload
            last[0] = time.monotonic()

    def status(topic: str, payload: bytes) -> None:
        with lock:
            if payload:
                found.topics.add(topic)
                with contextlib.suppress(ValueError):
                    body = json.loads(payload)
                    found.cloud_status = body if isinstance(body, dict) else None
            last[0] = time.monotonic()

    session.subscribe_raw(chunk_filter(topics.announce), frame)
    session.subscribe_raw(chunk_filter(topics.global_params), frame)
    session.subscribe_raw(topics.status("cloud", "cloud"), status)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with lock:
            if time.monotonic() - last[0] >= RETAINED_SETTLE_S:
                break
        time.sleep(0.05)
    with lock:
        ours = {t: p for t, p in frames.items() if t.startswith(f"{topics.announce}/")}
    reassembler = Reassembler(max_message_bytes=max_bytes)
    for topic in sorted(ours, key=lambda t: (len(t), t)):  # frame 0, 1, ..., 10, ...
        with contextlib.suppress(WireError):
            whole = reassembler.add(topics.announce, ours[topic], time.monotonic())
            if whole is not None:
                found.announce = decode_message(AnnounceHeader, whole, max_bytes=max_bytes)[0]
    return found


def reset_retained(session: MqttSession, retained: Retained, timeout_s: float = 30.0) -> int:
    """Clear every retained topic found (empty retained payloads); returns how many."""
    for topic in sorted(retained.topics):
        session.publish_raw(topic, b"", retain=True, timeout=timeout_s)
    return len(retained.topics)


def send_control(session: MqttSession, topics: Topics, control: Control,
                 timeout_s: float) -> dict[str, Any] | None:
    """Publish ``control`` to the running cloud and wait for its answer: the cloud status it
    publishes after handling the command, which echoes the command's ``issued_at``.  None
    when no answer came within ``timeout_s`` (no cloud hub runs: the command is not kept)."""
    answer: list[dict[str, Any]] = []
    got = threading.Event()

    def status(_topic: str, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            body = json.loads(payload) if payload else {}
            seen = (body.get("control") or {}) if isinstance(body, dict) else {}
            if seen.get("issued_at") == control.issued_at:
                answer.append(body)
                got.set()

    session.subscribe_raw(topics.status("cloud", "cloud"), status)
    session.publish_raw(topics.control, control.model_dump_json().encode())
    got.wait(timeout_s)
    return answer[0] if answer else None


@contextlib.contextmanager
def connected(url: str, federation: str, auth: BrokerAuth | None, timeout_s: float
              ) -> Iterator[MqttSession]:
    """A short clean session for one lifecycle command."""
    session = MqttSession(url, client_id=f"lifecycle-{federation}-{time.time_ns()}",
                          clean_session=True, max_message_bytes=256_000_000,
                          reconnect_max_s=2.0, auth=auth)
    session.connect(timeout=timeout_s)
    try:
        yield session
    finally:
        session.close()
