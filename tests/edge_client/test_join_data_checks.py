"""``edge-client join`` checks its ``--data`` first, through the real command: each mistake
is one boxed message naming the file (and line, column or option), exit 2, before torch is
imported or the broker is contacted.

The "broker" is a bare listening socket: a join that got past its checks would connect to
it, and ``-X importtime`` lists every module the process imported."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROWS = "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port nothing answers MQTT on; ``accept`` tells whether anyone connected."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0)
        yield server


def join(data: str, state_dir: Path, port: int, log: Path | None = None) -> subprocess.Popen:
    """The real command; its output in pipes (read them with ``communicate``) or ``log``."""
    with contextlib.ExitStack() as stack:
        out = subprocess.PIPE if log is None else stack.enter_context(log.open("wb"))
        return subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "edge_client", "join", "--federation",
             "fed", "--region", "north", "--client-id", "dev-0", "--data", data,
             "--state-dir", str(state_dir), "--broker", f"mqtt://127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
            env={**os.environ, "COLUMNS": "1000"})  # no wrapping inside a path in the box


def imported(stderr: str) -> set[str]:
    """Top-level packages in ``-X importtime``'s lines ("import time: self | total | name")."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:")}


def cases(d: Path) -> list[tuple[str, str]]:
    """(--data, what the message must say) for every data check."""
    (d / "good.csv").write_text(ROWS)
    (d / "a-dir.csv").mkdir()
    (d / "empty.csv").write_text("")
    (d / "header-only.csv").write_text("text,label\n")
    (d / "no-label.csv").write_text("text,y\nhi,a\nho,b\n")
    (d / "no-text.csv").write_text("body,label\nhi,a\nho,b\n")
    (d / "row.jsonl").write_text('{"text": "hi", "label": "a"}\n{"text": "ho"}\n')
    (d / "one-row.csv").write_text("text,label\nhi,a\n")
    (d / "latin.csv").write_bytes(b"text,label\nok,a\n" + "caf\xe9,b\n".encode("latin-1"))
    return [
        (f"{d}/missing.csv", f"{d}/missing.csv: no such file"),
        (f"{d}/a-dir.csv", f"{d}/a-dir.csv: is a directory, not a data file"),
        (f"{d}/empty.csv", f"{d}/empty.csv: empty file (expected a header line naming the "
                           "columns ['text', 'label'])"),
        (f"{d}/header-only.csv", f"{d}/header-only.csv: no rows"),
        (f"{d}/no-label.csv", f"{d}/no-label.csv: line 1: missing column 'label' (header has "
                              "['text', 'y']); rename it or set the data spec option "
                              "label_column="),
        (f"{d}/no-text.csv", f"{d}/no-text.csv: line 1: missing column 'text' (header has "
                             "['body', 'label']); rename it or set the data spec option "
                             "text_column="),
        (f"{d}/row.jsonl", f"{d}/row.jsonl: line 2: missing column 'label' (has ['text'])"),
        (f"{d}/one-row.csv", f"{d}/one-row.csv: device 0 of the iid partition has 1 rows; it "
                             "needs at least 2 for a train/test split"),
        (f"{d}/good.csv?num_clients=2", "shard: required when num_clients > 1 (0..1)"),
        (f"{d}/latin.csv", f"{d}/latin.csv: line 3: not valid utf-8 text (byte 0xe9); give "
                           "the file's encoding with the data spec option encoding=NAME"),
        (f"{d}/latin.csv?encoding=klingon", "data spec: option 'encoding': unknown encoding "
                                            "'klingon'"),
        (f"{d}/latin.csv?colour=red", "data spec: option 'colour': unknown option"),
    ]


def test_every_data_mistake_exits_2_before_torch_or_the_broker(tmp_path: Path,
                                                               listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    for data, why in cases(tmp_path):
        proc = join(data, tmp_path / "state", port)
        out, err = (b.decode() for b in proc.communicate(timeout=120))
        message = " ".join(err.replace("│", " ").split())
        assert proc.returncode == 2, (data, out, err[-2000:])
        assert f"error: {why}" in message and "--data" in message, (data, message[-1500:])
        assert "Traceback" not in err
        assert not imported(err) & {"torch", "transformers", "peft", "bitsandbytes"}, data
        assert not (tmp_path / "state").exists()  # nor was the state directory touched
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody tried to connect


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_named(tmp_path: Path, listener: socket.socket) -> None:
    path = tmp_path / "secret.csv"
    path.write_text(ROWS)
    path.chmod(0)
    proc = join(str(path), tmp_path / "state", listener.getsockname()[1])
    _, err = (b.decode() for b in proc.communicate(timeout=120))
    assert proc.returncode == 2
    assert f"{path}: cannot read: Permission denied" in " ".join(err.replace("│", " ").split())


def test_with_its_encoding_the_same_file_passes_and_the_device_connects(
        tmp_path: Path, listener: socket.socket) -> None:
    """The positive control: the checks pass, so the join goes on to the broker."""
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\n" + "caf\xe9,b\nthé,a\n".encode("latin-1") * 3)
    log = tmp_path / "join.log"
    proc = join(f"{latin}?encoding=latin-1", tmp_path / "state", listener.getsockname()[1],
                log)
    try:
        until = time.monotonic() + 120
        while time.monotonic() < until:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
                time.sleep(0.1)
                continue
            conn.close()
            break
        else:
            raise AssertionError("the device never tried the broker")
    finally:
        proc.kill()
        proc.wait()
    assert "Invalid value" not in log.read_text(errors="replace")
