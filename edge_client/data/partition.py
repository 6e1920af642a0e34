"""Pure index partitioning: which pool rows each device owns, and its own train/test split.

Everything here is a deterministic function of its arguments (numpy ``Generator(seed)``,
PCG64), so every virtual device in every process derives the same partition without
talking to anyone.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

PARTITION_METHODS = ("iid", "dirichlet", "column", "grouped")
_MAX_DIRICHLET_DRAWS = 1000


def partition_indices(
    labels: Sequence[int],
    num_clients: int,
    method: str,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    owners: Sequence[str] | None = None,
    min_per_client: int = 10,
    parts: int = 1,
) -> list[list[int]]:
    """Split ``range(len(labels))`` into disjoint groups that together cover it.

    - ``iid``: a seeded shuffle cut into ``num_clients`` near-equal groups.
    - ``dirichlet``: for each class, proportions drawn from Dirichlet(alpha) over the
      clients; re-drawn (same generator, so still deterministic) until every client has at
      least ``min_per_client`` rows. Small ``alpha`` gives skewed label mixes.
    - ``column``: one group per distinct owner, in sorted owner order; ``num_clients`` is
      ignored because the data decides how many devices there are.  With ``parts`` > 1
      each owner's rows are cut, by a seeded shuffle, into ``parts`` near-equal groups
      (owner-major order: owner 0's parts, then owner 1's), for units too big for one
      device, e.g. a whole corpus of one source.
    - ``grouped``: whole owners (units: a document, a user) dealt out to ``num_clients``
      groups, never splitting a unit, so that each group keeps its units' label mix while
      being larger than one unit.  Units are shuffled by ``seed`` and then taken largest
      first (a stable sort, so the shuffle orders units of equal size), each going to the
      currently smallest group (lowest index on ties): the greedy longest-processing-time
      rule, which keeps every two groups within one unit's size of each other.

    Each group is returned in ascending index order.
    """
    n = len(labels)
    if method == "column":
        return _by_owner(n, owners, parts, seed)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if method == "grouped":
        return _grouped(n, owners, num_clients, seed)
    if method == "iid":
        perm = np.random.default_rng(seed).permutation(n)
        return [sorted(part.tolist()) for part in np.array_split(perm, num_clients)]
    if method == "dirichlet":
        return _dirichlet(labels, num_clients, alpha, seed, min_per_client)
    raise ValueError(f"unknown partition method {method!r}; expected one of {PARTITION_METHODS}")


def _by_owner(n: int, owners: Sequence[str] | None, parts: int, seed: int) -> list[list[int]]:
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    units = _units(n, owners)
    if parts == 1:
        return [units[owner] for owner in sorted(units)]
    rng = np.random.default_rng(seed)
    groups: list[list[int]] = []
    for owner in sorted(units):
        rows = np.asarray(units[owner])
        shuffled = rows[rng.permutation(len(rows))]
        groups.extend(sorted(part.tolist()) for part in np.array_split(shuffled, parts))
    return groups


def _units(n: int, owners: Sequence[str] | None) -> dict[str, list[int]]:
    """Owner -> its row indices (ascending), checking there is one owner per row."""
    if owners is None:
        raise ValueError("partition methods 'column' and 'grouped' need owners (the client column)")
    if len(owners) != n:
        raise ValueError(f"owners has {len(owners)} entries but labels has {n}")
    units: dict[str, list[int]] = {}
    for i, owner in enumerate(owners):
        units.setdefault(owner, []).append(i)
    return units


def _grouped(
    n: int, owners: Sequence[str] | None, num_clients: int, seed: int
) -> list[list[int]]:
    units = _units(n, owners)
    if len(units) < num_clients:
        raise ValueError(
            f"cannot group {len(units)} units into {num_clients} clients without splitting "
            "a unit; lower num_clients"
        )
    names = sorted(units)
    shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    shuffled.sort(key=lambda name: len(units[name]), reverse=True)  # stable: ties shuffled
    heap = [(0, c) for c in range(num_clients)]
    groups: list[list[int]] = [[] for _ in range(num_clients)]
    for name in shuffled:
        size, client = heapq.heappop(heap)
        groups[client].extend(units[name])
        heapq.heappush(heap, (size + len(units[name]), client))
    return [sorted(g) for g in groups]


def sample_units(owners: Sequence[str], max_units: int, seed: int) -> list[int]:
    """Rows (ascending) of a seeded random sample of ``max_units`` distinct owners.

    Whole units are kept or dropped, so a sample of documents keeps each document's
    sentences together.  Asking for more units than exist is an error, not a no-op, so a
    typo cannot silently give a larger federation than intended.
    """
    names = sorted(set(owners))
    if max_units > len(names):
        raise ValueError(f"max_units={max_units} but there are only {len(names)} units")
    picked = np.random.default_rng(seed).choice(len(names), size=max_units, replace=False)
    kept = {names[i] for i in picked.tolist()}
    return [i for i, owner in enumerate(owners) if owner in kept]


def _dirichlet(
    labels: Sequence[int], num_clients: int, alpha: float, seed: int, min_per_client: int
) -> list[list[int]]:
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) < num_clients * min_per_client:
        raise ValueError(
            f"cannot give {num_clients} clients at least {min_per_client} rows each "
            f"from {len(y)} rows"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(_MAX_DIRICHLET_DRAWS):
        groups: list[list[int]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            shuffled = rng.permutation(idx)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
            for group, part in zip(groups, np.split(shuffled, cuts), strict=True):
                group.extend(part.tolist())
        if min(len(g) for g in groups) >= min_per_client:
            return [sorted(g) for g in groups]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) draw in {_MAX_DIRICHLET_DRAWS} gave each of "
        f"{num_clients} clients at least {min_per_client} rows; raise alpha or lower "
        "min_per_client"
    )


def train_test_split(
    indices: Sequence[int], test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split a device's indices into (train, test), both non-empty when there are >= 2.

    Both lists come back in shuffled order, so taking a prefix (the per-device caps) is a
    uniform random subset rather than, say, the first classes of a sorted file.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    items = list(indices)
    n = len(items)
    if n < 2:
        return items, []
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    shuffled = [items[i] for i in order]
    return shuffled[n_test:], shuffled[:n_test]
