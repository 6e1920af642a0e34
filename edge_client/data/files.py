"""Users' own labelled texts: CSV/TSV (csv module) or JSON Lines.

Readers return labels as strings and leave id mapping to the pool, so that the mapping can
depend on the whole file (or on labels the spec lists) rather than on row order.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .dataset import DataError, RawRows

_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


def read_user_file(
    path: Path,
    text_column: str,
    label_column: str,
    client_column: str | None = None,
    encoding: str = "utf-8",
    option_names: tuple[str, str] = ("text_column", "label_column"),
) -> RawRows:
    """Read ``path`` by suffix (.csv, .tsv, .jsonl, .ndjson) into raw rows.

    Every error names the file, the line and, where one is missing, the column and the
    data-spec option that names it (``option_names``: those of the text and label columns;
    prompt/response data reads its prompts as texts and answers as labels); text that is
    not valid ``encoding`` names the line of the first bad byte and the ``encoding`` option.
    """
    suffix = path.suffix.lower()
    if suffix not in _CSV_DELIMITERS and suffix not in _JSONL_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():  # a FIFO or device would be read once, then block or differ
        raise DataError(f"{path}: not a regular file")
    options = {text_column: option_names[0], label_column: option_names[1]}
    if client_column is not None:
        options[client_column] = "client_column"
    # the BOM a spreadsheet writes would otherwise become part of the first column's name
    file_encoding = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    if suffix in _CSV_DELIMITERS:
        records = _csv_records(path, _CSV_DELIMITERS[suffix], options, file_encoding)
    else:
        records = _jsonl_records(path, file_encoding)

    texts: list[str] = []
    labels: list[str] = []
    owners: list[str] = []
    lines: list[int] = []
    try:
        for line, record in records:
            lines.append(line)
            texts.append(_field(record, text_column, path, line, allow_empty=True))
            labels.append(_field(record, label_column, path, line))
            if client_column is not None:
                owners.append(_field(record, client_column, path, line))
    except UnicodeDecodeError:
        raise _decode_error(path, file_encoding, encoding) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
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


def _decode_error(path: Path, file_encoding: str, option: str) -> DataError:
    """Name the line of the first byte that is not valid text in ``file_encoding``.

    Decoding errors surface per buffered chunk, so the position the text layer reports is
    not the file's; the file is decoded again as bytes (on this error path only) to find it.
    """
    raw = path.read_bytes()
    try:
        raw.decode(file_encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = f" (byte 0x{raw[exc.start]:02x})"
    else:  # cannot happen for a deterministic codec; still say what we know
        line, bad = 1, ""
    return DataError(
        f"{path}: line {line}: not valid {option} text{bad}; give the file's encoding with "
        f"the data spec option encoding=NAME, e.g. encoding=cp1252 or encoding=latin-1"
    )


def _csv_records(
    path: Path, delimiter: str, options: dict[str, str], encoding: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) after checking the header has every needed column.

    ``options`` maps each needed column to the data-spec option that names it. A short
    row yields ``None`` values, which ``_field`` reports with the row's line.
    """
    with path.open(encoding=encoding, newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            header = reader.fieldnames or []
            if not header:
                raise DataError(f"{path}: empty file (expected a header line naming the "
                                f"columns {list(options)})")
            for column, option in options.items():
                if column not in header:
                    raise DataError(
                        f"{path}: line 1: missing column {column!r} (header has {header}); "
                        f"rename it or set the data spec option {option}="
                    )
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: {exc}") from exc


def _jsonl_records(path: Path, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding=encoding) as fh:
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
