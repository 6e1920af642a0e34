"""Shamir t-of-n sharing of 32-byte secrets over the scalar field of edwards25519.

Why this field: a share must be checkable against its dealer's public commitments
(``vss``, Feldman verifiable secret sharing), which needs the secret's field to be the
exponent field of a prime-order group: Z_L with ``L = 2^252 + 27742...`` (the order of the
ed25519 base point).  A secret is therefore a *scalar*: a uniform integer in ``[1, L)``,
carried as its canonical 32-byte little-endian encoding (``random_secret``).  Why not
split 32 random bytes into halves below L: the commitment to a 128-bit half would reveal
it to a 2^64 discrete-log search; one ~252-bit scalar keeps the full strength, and the
protocol derives the key material it needs from it (``share_crypto.mask_private_key``).

Scalar arithmetic is Python's exact integers mod L (no curve arithmetic here).  The share
for roster member ``i`` (0-based, roster sorted by id) is ``f(i + 1)``; any ``t`` shares
reconstruct ``f(0)``; ``t - 1`` reveal nothing (the other coefficients are uniform).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fedsa_common.privacy.secagg.errors import SecAggError

#: The prime order of the ed25519 base point (RFC 8032 §5.1).
ORDER = 2**252 + 27742317777372353535851937790883648493
SECRET_BYTES = 32
SHARE_BYTES = 32


def encode_scalar(value: int) -> bytes:
    return (value % ORDER).to_bytes(SHARE_BYTES, "little")


def decode_scalar(raw: bytes, what: str) -> int:
    """The integer of a canonical 32-byte scalar, or ``secagg_bad_share`` naming ``what``."""
    if not isinstance(raw, bytes) or len(raw) != SHARE_BYTES:
        raise SecAggError("secagg_bad_share", f"{what} is not {SHARE_BYTES} bytes")
    value = int.from_bytes(raw, "little")
    if value >= ORDER:
        raise SecAggError("secagg_bad_share", f"{what} is not a scalar below the group order")
    return value


def random_scalar(randbytes: Callable[[int], bytes]) -> int:
    """Uniform in ``[1, L)``: 512 random bits reduced mod L (bias below 2^-259)."""
    while True:
        value = int.from_bytes(randbytes(64), "little") % ORDER
        if value:
            return value


def random_secret(randbytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh secret to share (a private key's or a seed's source): a canonical scalar."""
    return encode_scalar(random_scalar(randbytes))


@dataclass(frozen=True)
class Dealing:
    """One shared secret: the shares (``shares[i]`` is the point ``x = i + 1``) and the
    polynomial's coefficients (lowest first: ``coefficients[0]`` is the secret), which
    the dealer commits to (``vss.commit``) and then forgets."""

    shares: list[bytes]
    coefficients: tuple[int, ...]


def evaluate(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for a in reversed(coefficients):
        acc = (acc * x + a) % ORDER
    return acc


def deal(secret: bytes, threshold: int, n: int,
         randbytes: Callable[[int], bytes] = os.urandom) -> Dealing:
    """``n`` shares of ``secret`` on a uniform polynomial of degree ``threshold - 1``."""
    if not 1 <= threshold <= n:
        raise ValueError(f"threshold {threshold} outside [1, {n}]")
    if n >= ORDER:
        raise ValueError(f"{n} shares do not fit the field")
    try:
        a0 = decode_scalar(secret, "secret")
    except SecAggError as err:
        raise ValueError(err.detail) from None
    coefficients = (a0, *(random_scalar(randbytes) for _ in range(threshold - 1)))
    return Dealing([encode_scalar(evaluate(coefficients, x)) for x in range(1, n + 1)],
                   coefficients)


def split_secret(secret: bytes, threshold: int, n: int,
                 randbytes: Callable[[int], bytes] = os.urandom) -> list[bytes]:
    """``n`` shares of ``secret``; share ``i`` (0-based) is the point ``x = i + 1``."""
    return deal(secret, threshold, n, randbytes).shares


def combine_shares(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares keyed by their x coordinate (>= 1).

    Uses the ``threshold`` smallest x coordinates, so the result does not depend on
    arrival order (with verified shares, any ``threshold`` of them give the same secret).
    """
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise SecAggError("secagg_too_few", f"{len(shares)} shares < threshold {threshold}")
    values = {}
    for x, share in shares.items():
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x < ORDER:
            raise SecAggError("secagg_bad_share", f"share x coordinate {x!r}")
        values[x] = decode_scalar(share, f"share of x={x}")
    xs = tuple(sorted(values)[:threshold])
    return encode_scalar(sum(values[x] * c for x, c in zip(xs, _lagrange_at_zero(xs),
                                                           strict=True)) % ORDER)


@functools.lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``prod_{y != x} y / (y - x)`` for each ``x``: O(t^2), and the same for every secret
    the hub rebuilds from one set of answers, hence cached."""
    coefficients = []
    for x in xs:
        num, den = 1, 1
        for y in xs:
            if y != x:
                num = num * y % ORDER
                den = den * (y - x) % ORDER
        coefficients.append(num * pow(den, -1, ORDER) % ORDER)
    return tuple(coefficients)
