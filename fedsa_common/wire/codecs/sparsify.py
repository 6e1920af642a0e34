"""Which coordinates of a delta a device sends.

``topk`` keeps the largest magnitudes (best signal per coordinate, but the positions must
travel).  ``randk`` takes coordinates from a seed shared by the whole round: every device
of the round sends the same support, so no indices travel and updates can be summed
position by position (what secure aggregation needs).  The random-k support is defined
here, bit for bit, with SplitMix64 in NumPy's unsigned 64-bit arithmetic rather than with
a library RNG whose stream may change between versions: a device and a hub running
different torch or NumPy versions must still agree on every coordinate.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
SEED_LIMIT = 2**63  # seeds are JSON integers in [0, 2**63)


def topk_count(numel: int, ratio: float) -> int:
    """Number of coordinates a ``ratio`` codec sends: ``max(1, ceil(ratio * numel))``.

    Capped at ``numel`` (0 for an empty tensor). The product is rounded to 9 decimals
    before ``ceil`` so float noise such as ``0.1 * 70 == 7.000000000000001`` yields 7,
    not 8.
    """
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(round(ratio * numel, 9))))


def topk_support(flat: Tensor, k: int) -> Tensor:
    """Sorted int64 positions of the ``k`` largest magnitudes of a 1-D tensor."""
    return torch.topk(flat.abs(), k, sorted=False).indices.sort().values


def round_seed(federation_seed: int, round_: int) -> int:
    """The random-k seed of one round of one federation, in ``[0, 2**63)``.

    Device and hub both derive it from what the announcement already carries, so the hub
    can refuse an update whose declared seed is not the round's.
    """
    digest = hashlib.sha256(f"fedsa-randk:{int(federation_seed)}:{int(round_)}".encode())
    return int.from_bytes(digest.digest()[:8], "big") % SEED_LIMIT


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijection on 64-bit words (so no two inputs tie)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _MIX1
        z = (z ^ (z >> _U64(27))) * _MIX2
        return z ^ (z >> _U64(31))


@lru_cache(maxsize=256)
def _randk_positions(numel: int, k: int, seed: int, name: str) -> Tensor:
    key = _splitmix64(np.array([seed ^ (zlib.crc32(name.encode()) << 32)], dtype=_U64))[0]
    scores = _splitmix64(np.arange(numel, dtype=_U64) ^ key)
    if k < numel:
        picked = np.argpartition(scores, k - 1)[:k] if k else np.empty(0, dtype=np.int64)
    else:
        picked = np.arange(numel)
    return torch.from_numpy(np.sort(picked).astype(np.int64))


def randk_support(numel: int, k: int, seed: int, name: str) -> Tensor:
    """Sorted int64 positions of the ``k`` coordinates with the smallest SplitMix64 scores.

    A pure function of (numel, k, seed, parameter name): tensors of the same shape get
    different supports, the same tensor gets the same support on every device of a round.
    Memoised because a hub decodes every update of a round against the same supports.
    """
    if not 0 <= k <= numel:
        raise ValueError(f"k={k} outside [0, {numel}]")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed {seed} outside [0, 2**63)")
    return _randk_positions(numel, k, seed, name).clone()
