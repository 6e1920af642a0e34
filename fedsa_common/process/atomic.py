"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file in the target's directory, created exclusively
under an unpredictable name (``tempfile.mkstemp``: ``O_EXCL``, mode 0600 until we set the
final one), so another local user cannot pre-create or link that name and read or redirect
what we write (a predictable ``.name.tmpPID`` allowed both).  The file is fsynced, renamed
over the target and the directory fsynced, so the rename survives a crash too.
``write_dir`` does the same for a whole directory (``tempfile.mkdtemp``).  Every atomic
write of the project goes through this module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where tensors are written: the JSON and bytes writers serve
    import torch  # light paths too (``edge-client join``'s data checks, the data cache)


def _umask_mode(full: int = 0o666) -> int:
    """``full`` less the process umask (what ``open``, or ``mkdir`` for 0777, would have
    created), read without changing the umask (``os.umask`` would race with other threads
    creating files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return full & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return full & ~0o022


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically; the file gets ``mode`` (default: what the
    umask gives a new file), set before any byte is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _umask_mode() if mode is None else mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def write_dir(path: Path) -> Iterator[Path]:
    """Fill a new directory in private, then publish it as ``path`` in one rename.

    Yields an empty directory beside ``path``, created under an unpredictable name; when the
    block ends, its files are fsynced, it gets the mode ``mkdir`` would have given it and is
    renamed to ``path``, and the parent is fsynced.  If ``path`` exists by then (another
    process built it first), the new directory is discarded and theirs kept, so this is for
    content that is the same whoever builds it (a cache).  When the block raises, the
    temporary directory is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for sub, _, files in os.walk(tmp):
            for name in files:
                fd = os.open(os.path.join(sub, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(Path(sub))
        tmp.chmod(_umask_mode(0o777))
        try:
            tmp.rename(path)
        except OSError:
            if not path.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won; theirs is the same
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    # cloned: tensors are often views of one flat vector, and safetensors refuses tensors
    # that share storage
    write_bytes(path, save({k: v.detach().cpu().clone() for k, v in tensors.items()}))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Our own files only; safetensors never executes code even so."""
    from safetensors.torch import load_file

    return load_file(str(path))
