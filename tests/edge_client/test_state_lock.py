"""One running device per state directory: a second ``edge-client join`` on the same
``--state-dir`` (the same device started twice) exits 2 at once, naming the directory and
the holder's pid, and a lock left by a crashed process never blocks the next start."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_client.state_lock import (
    LOCK_FILE,
    StateDirBusy,
    StateDirError,
    StateDirLock,
    check_owner,
)


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with StateDirLock(tmp_path / "s", "dev-0") as first:
        assert first.held
        record = json.loads((tmp_path / "s" / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["client"] == "dev-0"
        with pytest.raises(StateDirBusy) as err:  # flock: another open file, same process
            StateDirLock(tmp_path / "s", "dev-0").acquire()
        assert err.value.holder["pid"] == os.getpid()
        assert str(err.value).startswith(f"state directory {tmp_path / 's'} is in use by "
                                         f"another edge-client (pid {os.getpid()}, client dev-0)")
        # the refused contender left the holder's record in place
        assert json.loads((tmp_path / "s" / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (tmp_path / "s" / LOCK_FILE).read_text() == ""  # released: no stale pid left
    with StateDirLock(tmp_path / "s", "dev-0"):
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from edge_client.state_lock import StateDirLock
            StateDirLock({str(tmp_path / "s")!r}, "dev-0").acquire()
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateDirBusy, match=f"pid {holder.pid}"):
            StateDirLock(tmp_path / "s").acquire()
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the lock
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # the dead holder's record is still in the file, but it is the lock that counts
    assert json.loads((tmp_path / "s" / LOCK_FILE).read_text())["pid"] == holder.pid
    with StateDirLock(tmp_path / "s", "dev-0"):
        pass


def test_a_holder_that_wrote_nothing_yet_is_still_named(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    fd = os.open(tmp_path / "s" / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StateDirBusy, match=r"another edge-client \(pid unknown\)"):
            StateDirLock(tmp_path / "s").acquire()
    finally:
        os.close(fd)


def test_a_state_dir_of_another_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "device.json").write_text(json.dumps(
        {"client": "dev-1", "region": "north", "federation": "fed"}))
    check_owner(tmp_path, "dev-1", "north", "fed")
    with pytest.raises(StateDirError, match="belongs to client=dev-1 region=north"):
        check_owner(tmp_path, "dev-0", "north", "fed")
    check_owner(tmp_path / "fresh", "dev-0", "north", "fed")  # nothing there yet


def _join(tmp_path: Path, broker_url: str, client: str, log: Path) -> subprocess.Popen:
    data = tmp_path / "d.csv"
    if not data.exists():
        data.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_client", "join", "--federation", "lock", "--region",
             "north", "--client-id", client, "--data", str(data), "--state-dir",
             str(tmp_path / "state"), "--broker", broker_url],
            stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.integration
def test_a_second_join_on_the_same_state_dir_exits_2_at_once(tmp_path: Path, broker,
                                                             wait_for_log) -> None:
    first = _join(tmp_path, broker.url, "dev-0", tmp_path / "first.log")
    try:
        wait_for_log(tmp_path / "first.log", r"dev-lock-dev-0 connected to", first)
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "edge_client", "join", "--federation", "lock", "--region",
             "north", "--client-id", "dev-0", "--data", str(tmp_path / "d.csv"),
             "--state-dir", str(tmp_path / "state"), "--broker", broker.url],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "COLUMNS": "1000"})
        took = time.monotonic() - started
        out = " ".join((second.stdout + second.stderr).replace("│", " ").split())
        assert second.returncode == 2, out
        assert (f"error: state directory {tmp_path / 'state'} is in use by another "
                f"edge-client (pid {first.pid}, client dev-0)") in out, out
        assert "Traceback" not in out and "connected to" not in out
        assert took < 60  # no model, no broker: only the checks ran (seconds, loaded machine)
        assert first.poll() is None  # the running device was left alone

        # a crash (no clean-up at all) leaves no lock behind: the next start runs
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        third = _join(tmp_path, broker.url, "dev-0", tmp_path / "third.log")
        try:
            wait_for_log(tmp_path / "third.log", r"dev-lock-dev-0 connected to", third)
        finally:
            _stop(third)
    finally:
        _stop(first)
