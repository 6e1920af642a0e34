"""From a ``DataSpec`` to the shared pool and to one device's train/test share.

Many virtual devices run in one process and all start from the same pool, so the pool is
built once per process (keyed on the spec fields that affect it, plus the file's size and
mtime so an edited file is re-read) and each caller gets its own list copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .dataset import DataError, DeviceData, RawRows, TextDataset
from .files import read_user_file
from .newsgroups import load_20newsgroups
from .partition import partition_indices, sample_units, train_test_split
from .pinned import cache_root
from .sentiment import load_sentiment
from .spec import NEWSGROUPS, SENTIMENT, DataSpec

_INT_LABEL = re.compile(r"-?\d+")


@dataclass(frozen=True)
class _PoolKey:
    """The spec fields that determine the pool, in hashable form."""

    source: str
    prompt_response: bool  # text/label columns are then the prompt/response fields
    text_column: str
    label_column: str
    client_column: str | None
    encoding: str
    classes: int | tuple[str, ...] | None
    labels: tuple[str, ...] | None
    sources: tuple[str, ...] | None
    max_units: int | None
    unit_seed: int | None  # the spec's seed when max_units samples units, else None
    stamp: tuple[int, int] | str


def _pool_key(spec: DataSpec) -> _PoolKey:
    if spec.source in (NEWSGROUPS, SENTIMENT):
        stamp: tuple[int, int] | str = str(cache_root())
    else:
        try:
            st = Path(spec.source).expanduser().stat()
        except OSError:
            stamp = "missing"  # let the reader raise its own, file-naming error
        else:
            stamp = (st.st_size, st.st_mtime_ns)
    return _PoolKey(
        source=spec.source,
        prompt_response=spec.prompt_response,
        text_column=spec.prompt_column if spec.prompt_response else spec.text_column,
        label_column=spec.response_column if spec.prompt_response else spec.label_column,
        client_column=spec.client_column,
        encoding=spec.encoding,
        classes=tuple(spec.classes) if isinstance(spec.classes, list) else spec.classes,
        labels=tuple(spec.labels) if spec.labels is not None else None,
        sources=tuple(spec.sources) if spec.sources is not None else None,
        max_units=spec.max_units,
        unit_seed=spec.seed if spec.max_units is not None else None,
        stamp=stamp,
    )


def load_pool(spec: DataSpec) -> TextDataset:
    """The whole source after class filtering, labels mapped to ids ``0..k-1``.

    Label ids follow ``spec.labels`` when given, else the sorted distinct label names
    (numerically when every name is an integer, so ``2`` comes before ``10``). A class
    filter keeps that order and renumbers the kept classes densely.  ``max_units`` then
    keeps a seeded sample of whole units; label names still describe the filtered source,
    so the classifier's shape does not depend on which units were drawn.
    """
    texts, labels, names, owners, responses = _cached_pool(_pool_key(spec))
    return TextDataset(
        texts=list(texts),
        labels=list(labels),
        label_names=list(names),
        owners=None if owners is None else list(owners),
        responses=None if responses is None else list(responses),
    )


_Pool = tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[str, ...] | None,
              tuple[str, ...] | None]


@lru_cache(maxsize=8)
def _cached_pool(key: _PoolKey) -> _Pool:
    if key.source == NEWSGROUPS:
        raw = load_20newsgroups()
        where = NEWSGROUPS
    elif key.source == SENTIMENT:
        raw = load_sentiment(key.client_column, key.sources)
        where = SENTIMENT
    else:
        path = Path(key.source).expanduser()
        raw = read_user_file(path, key.text_column, key.label_column, key.client_column,
                             key.encoding, ("prompt_column", "response_column")
                             if key.prompt_response else ("text_column", "label_column"))
        where = str(path)
    if key.prompt_response:
        return _prompt_pool(raw, key, where)
    names = _label_names(raw, key.labels, where)
    kept = _filter_classes(names, key.classes, where)
    new_id = {name: i for i, name in enumerate(kept)}
    rows = _sample_units(raw, [i for i, label in enumerate(raw.labels) if label in new_id],
                         key, where)
    owners = None if raw.owners is None else tuple(raw.owners[i] for i in rows)
    return (
        tuple(raw.texts[i] for i in rows),
        tuple(new_id[raw.labels[i]] for i in rows),
        tuple(kept),
        owners,
        None,
    )


def _sample_units(raw: RawRows, rows: list[int], key: _PoolKey, where: str) -> list[int]:
    """``rows`` restricted to a seeded sample of ``max_units`` whole units (all without)."""
    if key.max_units is None:
        return rows
    if raw.owners is None:  # DataSpec requires client_column; guard the invariant
        raise DataError(f"{where}: max_units needs a client column")
    try:
        kept = sample_units([raw.owners[i] for i in rows], key.max_units, key.unit_seed or 0)
    except ValueError as exc:
        raise DataError(f"{where}: max_units: {exc}") from None
    return [rows[i] for i in kept]


def _prompt_pool(raw: RawRows, key: _PoolKey, where: str) -> _Pool:
    """Prompt/response rows (read as texts and labels): every label 0, no label names, the
    answers kept as responses; ``max_units`` samples whole units as for labelled data."""
    rows = _sample_units(raw, list(range(len(raw.texts))), key, where)
    return (
        tuple(raw.texts[i] for i in rows),
        (0,) * len(rows),
        (),
        None if raw.owners is None else tuple(raw.owners[i] for i in rows),
        tuple(raw.labels[i] for i in rows),
    )


def _label_names(raw: RawRows, explicit: tuple[str, ...] | None, where: str) -> list[str]:
    present = set(raw.labels)
    if explicit is not None:
        unknown = sorted(present - set(explicit))
        if unknown:
            row = raw.labels.index(unknown[0])
            line = raw.lines[row] if raw.lines is not None else row + 1
            raise DataError(
                f"{where}: line {line}: label {unknown[0]!r} is not in "
                f"labels {list(explicit)} (unlisted: {unknown[:10]})"
            )
        return list(explicit)
    return _sorted_names(present)


def _sorted_names(names: set[str] | list[str]) -> list[str]:
    """Sorted by name, numerically when every name is an integer literal."""
    if all(_INT_LABEL.fullmatch(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _filter_classes(
    names: list[str], classes: int | tuple[str, ...] | None, where: str
) -> list[str]:
    if classes is None:
        return names
    if isinstance(classes, int):
        if classes > len(names):
            raise DataError(f"{where}: classes={classes} but the source has {len(names)}")
        wanted = set(_sorted_names(names)[:classes])
        return [name for name in names if name in wanted]
    missing = [c for c in classes if c not in names]
    if missing:
        raise DataError(f"{where}: classes {missing} not among labels {names[:30]}")
    wanted = set(classes)
    return [name for name in names if name in wanted]


def load_device_data(spec: DataSpec) -> DeviceData:
    """This device's share (``spec.shard`` or ``spec.client``), split and capped.

    The split happens before the caps so that a capped device still tests on rows it never
    trains on, and the caps take a seeded random prefix of each side.
    """
    pool = load_pool(spec)
    groups = _cached_groups(
        _pool_key(spec),
        spec.partition,
        spec.num_clients,
        spec.alpha,
        spec.seed,
        spec.min_per_client,
        spec.parts,
    )
    index = _device_index(spec, pool)
    share = groups[index]
    if len(share) < 2:
        raise DataError(
            f"{spec.source}: device {index} of the {spec.partition} partition has "
            f"{len(share)} rows; it needs at least 2 for a train/test split"
        )
    train, test = train_test_split(share, spec.test_fraction, spec.seed)
    if spec.max_train is not None:
        train = train[: spec.max_train]
    if spec.max_test is not None:
        test = test[: spec.max_test]
    return DeviceData(
        train=pool.subset(train),
        test=pool.subset(test),
        num_labels=len(pool.label_names),
        label_names=list(pool.label_names),
    )


def _device_index(spec: DataSpec, pool: TextDataset) -> int:
    if spec.partition == "column":
        owners = sorted(set(pool.owners or ()))
        if spec.client is None:
            raise DataError(f"client: required with partition=column (one of {owners[:20]})")
        if spec.client not in owners:
            raise DataError(
                f"client: {spec.client!r} owns no rows in {spec.source} "
                f"(column {spec.client_column!r} has {owners[:20]})"
            )
        if spec.parts == 1:
            return owners.index(spec.client)
        if spec.part is None:
            raise DataError(f"part: required when parts > 1 (0..{spec.parts - 1})")
        return owners.index(spec.client) * spec.parts + spec.part
    if spec.shard is not None:
        return spec.shard
    if spec.num_clients == 1:
        return 0
    raise DataError(f"shard: required when num_clients > 1 (0..{spec.num_clients - 1})")


@lru_cache(maxsize=32)
def _cached_groups(
    key: _PoolKey,
    method: str,
    num_clients: int,
    alpha: float,
    seed: int,
    min_per_client: int,
    parts: int,
) -> tuple[tuple[int, ...], ...]:
    """The partition is the same for every device of a federation: compute it once."""
    _, labels, _, owners, _ = _cached_pool(key)
    groups = partition_indices(
        labels,
        num_clients,
        method,
        alpha=alpha,
        seed=seed,
        owners=owners,
        min_per_client=min_per_client,
        parts=parts,
    )
    return tuple(tuple(g) for g in groups)
