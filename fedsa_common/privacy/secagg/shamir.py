"""Shamir t-of-n sharing of 32-byte secrets (X25519 private keys, self-mask seeds).

pycryptodome's :class:`~Crypto.Protocol.SecretSharing.Shamir` shares 16-byte secrets over
GF(2^128), so a 32-byte secret is split into two halves shared independently with the
same x coordinates; a share is the two 16-byte half-shares concatenated (32 bytes).  The
share for roster member ``i`` (0-based, roster sorted by id) is the point ``x = i + 1``.

Any ``t`` shares reconstruct the secret; ``t - 1`` reveal nothing about it (each half is
an independent polynomial of degree ``t - 1`` with uniform coefficients).
"""

from __future__ import annotations

from collections.abc import Mapping

from Crypto.Protocol.SecretSharing import Shamir

from fedsa_common.privacy.secagg.errors import SecAggError

SECRET_BYTES = 32
SHARE_BYTES = 32
_HALF = 16


def split_secret(secret: bytes, threshold: int, n: int) -> list[bytes]:
    """``n`` shares of ``secret``; share ``i`` (0-based) is the point ``x = i + 1``."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= n:
        raise ValueError(f"threshold {threshold} outside [1, {n}]")
    lo = Shamir.split(threshold, n, secret[:_HALF])
    hi = Shamir.split(threshold, n, secret[_HALF:])
    shares = []
    for i, ((x_lo, s_lo), (x_hi, s_hi)) in enumerate(zip(lo, hi, strict=True)):
        if x_lo != i + 1 or x_hi != i + 1:  # pycryptodome numbers shares 1..n
            raise RuntimeError("unexpected share numbering from pycryptodome")
        shares.append(s_lo + s_hi)
    return shares


def combine_shares(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares keyed by their x coordinate (>= 1).

    Uses the ``threshold`` smallest x coordinates (pycryptodome wants exactly as many
    shares as the threshold), so the result does not depend on arrival order.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise SecAggError("secagg_too_few", f"{len(shares)} shares < threshold {threshold}")
    for x, share in shares.items():
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise SecAggError("secagg_bad_share", f"share x coordinate {x!r}")
        if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
            raise SecAggError("secagg_bad_share", f"share of x={x} is not {SHARE_BYTES} bytes")
    xs = sorted(shares)[:threshold]
    lo = Shamir.combine([(x, shares[x][:_HALF]) for x in xs])
    hi = Shamir.combine([(x, shares[x][_HALF:]) for x in xs])
    return lo + hi
