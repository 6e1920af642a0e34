"""``check_device_data`` and the ``encoding`` option: every mistake in ``--data`` is one line
naming the option, or the file, line and column, and is found before anything slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_client.data import DataError, check_device_data, load_device_data, parse_data_spec


def write_rows(path: Path, n: int, encoding: str = "utf-8", text: str = "row") -> Path:
    rows = ["text,label"] + [f"{text} {i},{'ab'[i % 2]}" for i in range(n)]
    path.write_bytes(("\n".join(rows) + "\n").encode(encoding))
    return path


def test_a_good_spec_returns_the_share_it_loaded(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "ok.csv", 20)
    spec, share = check_device_data(f"{path}?num_clients=2&shard=1")
    assert spec.shard == 1 and spec.encoding == "utf-8"
    assert len(share.train.texts) + len(share.test.texts) == 10
    assert share.train.texts and share.test.texts
    assert share == load_device_data(spec)  # the same loader, so the device reuses it


def test_non_utf8_file_names_the_line_and_the_option(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\n" + b"plain,a\n" * 3000 + "café,b\n".encode("cp1252"))
    with pytest.raises(DataError) as err:
        check_device_data(str(path))
    # past the text layer's first buffer, so the line must come from the file's bytes
    assert f"{path}: line 3002: not valid utf-8 text (byte 0xe9)" in str(err.value)
    assert "encoding=" in str(err.value)
    spec, share = check_device_data(f"{path}?encoding=cp1252")
    assert spec.encoding == "cp1252"
    assert "café" in share.train.texts + share.test.texts


def test_non_utf8_jsonl_is_reported_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok", "label": "a"}\n' + '{"text": "é", "label": "b"}\n'
                     .encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.jsonl: line 2: not valid utf-8"):
        check_device_data(str(path))
    _, share = check_device_data(f"{path}?encoding=latin-1")
    assert sorted(share.train.texts + share.test.texts) == ["ok", "é"]


def test_utf8_byte_order_mark_is_still_skipped(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "bom.csv", 4, encoding="utf-8-sig")
    _, share = check_device_data(str(path))
    assert len(share.train.texts) + len(share.test.texts) == 4


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    (b"", "empty file (expected a header line naming the columns ['text', 'label'])"),
    (b"text,label\n", "no rows"),
    (b"text,y\nhi,a\n", "line 1: missing column 'label' (header has ['text', 'y']); rename it "
                        "or set the data spec option label_column="),
    (b"text,label\nhi,a\n", "device 0 of the iid partition has 1 rows; it needs at least 2"),
])
def test_file_mistakes_name_the_file(tmp_path: Path, content: bytes | None, message: str
                                     ) -> None:
    path = tmp_path / "d.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        check_device_data(str(path))
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_a_directory_is_not_a_data_file(tmp_path: Path) -> None:
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        check_device_data(str(tmp_path / "d.csv"))


@pytest.mark.parametrize(("text", "message"), [
    ("x.csv?encoding=klingon", "option 'encoding': unknown encoding 'klingon'"),
    ("x.csv?shard=3&num_clients=2", "option 'shard': must be < num_clients (2), got 3"),
    ("x.csv?colour=red", "option 'colour': unknown option; known: source, text_column"),
    ("x.csv?shard", "expected key=value"),
    ("20newsgroups?encoding=latin-1", "encoding: only used with a CSV/TSV/JSONL file"),
])
def test_spec_mistakes_are_one_line_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        check_device_data(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value) and "pydantic" not in str(err.value)


def test_encoding_default_and_utf8_alias_keep_the_bundled_sources_valid() -> None:
    assert parse_data_spec("20newsgroups").encoding == "utf-8"
    assert parse_data_spec("20newsgroups?encoding=UTF8").encoding == "UTF8"
