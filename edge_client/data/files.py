"""Users' own labelled texts: CSV/TSV (csv module) or JSON Lines.

Readers return labels as strings and leave id mapping to the pool, so that the mapping can
depend on the whole file (or on labels the spec lists) rather than on row order.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .dataset import DataError, RawRows

_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


def read_user_file(
    path: Path, text_column: str, label_column: str, client_column: str | None = None
) -> RawRows:
    """Read ``path`` by suffix (.csv, .tsv, .jsonl, .ndjson) into raw rows.

    Every error names the file, the line and, where one is missing, the column.
    """
    suffix = path.suffix.lower()
    if suffix not in _CSV_DELIMITERS and suffix not in _JSONL_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    columns = [c for c in (text_column, label_column, client_column) if c is not None]
    if suffix in _CSV_DELIMITERS:
        records = _csv_records(path, _CSV_DELIMITERS[suffix], columns)
    else:
        records = _jsonl_records(path)

    texts: list[str] = []
    labels: list[str] = []
    owners: list[str] = []
    lines: list[int] = []
    for line, record in records:
        lines.append(line)
        texts.append(_field(record, text_column, path, line, allow_empty=True))
        labels.append(_field(record, label_column, path, line))
        if client_column is not None:
            owners.append(_field(record, client_column, path, line))
    if not texts:
        raise DataError(f"{path}: no rows")
    return RawRows(
        texts=tuple(texts),
        labels=tuple(labels),
        owners=tuple(owners) if client_column is not None else None,
        lines=tuple(lines),
    )


def _field(
    record: Mapping[str, Any], column: str, path: Path, line: int, *, allow_empty: bool = False
) -> str:
    if column not in record:
        raise DataError(
            f"{path}: line {line}: missing column {column!r} "
            f"(has {sorted(k for k in record if k is not None)})"
        )
    value = record[column]
    if value is None or isinstance(value, (dict, list)):
        raise DataError(f"{path}: line {line}: column {column!r} has no usable value")
    text = value if isinstance(value, str) else str(value)
    if not text and not allow_empty:
        raise DataError(f"{path}: line {line}: column {column!r} is empty")
    return text


def _csv_records(
    path: Path, delimiter: str, columns: list[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) after checking the header has every needed column.

    A short row yields ``None`` values, which ``_field`` reports with the row's line.
    """
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            header = reader.fieldnames or []
            for column in columns:
                if column not in header:
                    raise DataError(
                        f"{path}: line 1: missing column {column!r} (header has {header})"
                    )
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: {exc}") from exc


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {line_no}: invalid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {line_no}: expected a JSON object")
            yield line_no, record
