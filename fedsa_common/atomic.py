"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file in the target's directory, created exclusively
under an unpredictable name (``tempfile.mkstemp``: ``O_EXCL``, mode 0600 until we set the
final one), so another local user cannot pre-create or link that name and read or redirect
what we write (a predictable ``.name.tmpPID`` allowed both).  The file is fsynced, renamed
over the target and the directory fsynced, so the rename survives a crash too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save


def _umask_mode() -> int:
    """0666 less the process umask (what ``open`` would have created), read without
    changing the umask (``os.umask`` would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


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
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    # cloned: tensors are often views of one flat vector, and safetensors refuses tensors
    # that share storage
    write_bytes(path, save({k: v.detach().cpu().clone() for k, v in tensors.items()}))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Our own files only; safetensors never executes code even so."""
    return load_file(str(path))
