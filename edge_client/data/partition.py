"""Pure index partitioning: which pool rows each device owns, and its own train/test split.

Everything here is a deterministic function of its arguments (numpy ``Generator(seed)``,
PCG64), so every virtual device in every process derives the same partition without
talking to anyone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PARTITION_METHODS = ("iid", "dirichlet", "column")
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
) -> list[list[int]]:
    """Split ``range(len(labels))`` into disjoint groups that together cover it.

    - ``iid``: a seeded shuffle cut into ``num_clients`` near-equal groups.
    - ``dirichlet``: for each class, proportions drawn from Dirichlet(alpha) over the
      clients; re-drawn (same generator, so still deterministic) until every client has at
      least ``min_per_client`` rows. Small ``alpha`` gives skewed label mixes.
    - ``column``: one group per distinct owner, in sorted owner order; ``num_clients`` is
      ignored because the data decides how many devices there are.

    Each group is returned in ascending index order.
    """
    n = len(labels)
    if method == "column":
        return _by_owner(n, owners)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if method == "iid":
        perm = np.random.default_rng(seed).permutation(n)
        return [sorted(part.tolist()) for part in np.array_split(perm, num_clients)]
    if method == "dirichlet":
        return _dirichlet(labels, num_clients, alpha, seed, min_per_client)
    raise ValueError(f"unknown partition method {method!r}; expected one of {PARTITION_METHODS}")


def _by_owner(n: int, owners: Sequence[str] | None) -> list[list[int]]:
    if owners is None:
        raise ValueError("partition method 'column' needs owners (the client column)")
    if len(owners) != n:
        raise ValueError(f"owners has {len(owners)} entries but labels has {n}")
    groups: dict[str, list[int]] = {}
    for i, owner in enumerate(owners):
        groups.setdefault(owner, []).append(i)
    return [groups[owner] for owner in sorted(groups)]


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
