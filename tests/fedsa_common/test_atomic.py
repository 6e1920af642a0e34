"""Atomic writes go through an exclusive temp file with an unpredictable name: nobody who
pre-created or linked the name a write would use can read or redirect what is written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedsa_common.process.atomic import write_bytes, write_dir
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


def test_write_dir_publishes_the_directory_once_built(tmp_path):
    out = tmp_path / "cache" / "model"
    old = os.umask(0o022)
    try:
        with write_dir(out) as tmp:
            assert not out.exists() and tmp.parent == out.parent
            (tmp / "config.json").write_text("{}")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "w.bin").write_bytes(b"w")
    finally:
        os.umask(old)
    assert (out / "config.json").read_text() == "{}"
    assert (out / "sub" / "w.bin").read_bytes() == b"w"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # as mkdir would create
    assert [p.name for p in out.parent.iterdir()] == ["model"]


def test_write_dir_keeps_the_winner_of_a_race(tmp_path):
    out = tmp_path / "model"
    with write_dir(out) as tmp:
        out.mkdir()  # another process finished first
        (out / "config.json").write_text("theirs")
        (tmp / "config.json").write_text("ours")
    assert (out / "config.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_write_dir_leaves_nothing_when_the_build_fails(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError), write_dir(out) as tmp:
        (tmp / "half").write_bytes(b"x")
        raise RuntimeError("build failed")
    assert list(tmp_path.iterdir()) == []


def test_write_dir_does_not_use_a_predictable_name(tmp_path):
    out, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.with_name(f"{out.name}.tmp{os.getpid()}").symlink_to(elsewhere)  # the old name
    with write_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (out / "config.json").exists() and not out.is_symlink()
    assert list(elsewhere.iterdir()) == []
