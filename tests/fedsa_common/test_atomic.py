"""Atomic writes go through an exclusive temp file with an unpredictable name: nobody who
pre-created or linked the name a write would use can read or redirect what is written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedsa_common.atomic import write_bytes
from hub.provision import _write


def predictable(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")  # the name writes used to use


def test_a_planted_symlink_does_not_redirect_the_write(tmp_path):
    target, elsewhere = tmp_path / "state.json", tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    predictable(target).symlink_to(elsewhere)
    write_bytes(target, b"private")
    assert target.read_bytes() == b"private" and not target.is_symlink()
    assert elsewhere.read_bytes() == b""


@pytest.mark.parametrize("writer", [lambda p, d: _write(p, d, 0o600),
                                    lambda p, d: write_bytes(p, d, 0o600)])
def test_a_file_opened_in_advance_never_sees_the_secret(tmp_path, writer):
    target = tmp_path / "passwd"
    planted = predictable(target)
    planted.write_bytes(b"")
    planted.chmod(0o666)
    with open(planted, "rb") as spy:  # opened before the write, kept open
        writer(target, b"secret")
        assert spy.read() == b""
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_modes_and_no_leftovers(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes(tmp_path / "a", b"1")
        write_bytes(tmp_path / "b", b"2", 0o644)
        write_bytes(tmp_path / "a", b"3")  # replaces
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644  # as open() would create
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644
    assert (tmp_path / "a").read_bytes() == b"3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
