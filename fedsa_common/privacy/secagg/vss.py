"""Feldman verifiable secret sharing: a holder checks that its share lies on the one
polynomial its dealer committed to.

Why: a share encrypted to its holder and matching the dealer's per-holder SHA-256
commitment (``share_crypto.commit_shares``) says nothing about the *other* holders'
shares, so a dealer could give shares that lie on no single polynomial of degree
``t - 1``; different ``t``-subsets then reconstruct different secrets and the hub's
unmasking fails.  With Feldman's scheme the dealer publishes ``C_j = a_j·G`` for each
coefficient ``a_j`` of its polynomial (``G`` the ed25519 base point, the field
``shamir.ORDER``), the same list to every holder, and holder ``x`` accepts share ``s`` only
if ``s·G == sum_j x^j·C_j``.  Shares that all pass lie on one polynomial, whatever the
dealer did.  The commitments reveal ``secret·G`` (hiding only under discrete log, which is
why a secret is a full ~252-bit scalar, see ``shamir``).

Point arithmetic is libsodium's (PyNaCl bindings, constant-time, prime-order subgroup
checks); nothing here is hand-written curve code.  Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from nacl import bindings
from nacl.exceptions import CryptoError

from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.shamir import ORDER, decode_scalar, encode_scalar

POINT_BYTES = 32
Commitments = tuple[bytes, ...]


def _mul(k: int, point: bytes) -> bytes | None:
    """``k·point``; None for the identity (libsodium refuses to return it)."""
    k %= ORDER
    if k == 0:
        return None
    return bindings.crypto_scalarmult_ed25519_noclamp(encode_scalar(k), point)


def _base(k: int) -> bytes | None:
    k %= ORDER
    if k == 0:
        return None
    return bindings.crypto_scalarmult_ed25519_base_noclamp(encode_scalar(k))


def _add(p: bytes | None, q: bytes | None) -> bytes | None:
    if p is None:
        return q
    if q is None:
        return p
    out = bindings.crypto_core_ed25519_add(p, q)
    return None if out == _IDENTITY else out


_IDENTITY = (1).to_bytes(POINT_BYTES, "little")  # (0, 1) in compressed form


def commit(coefficients: Sequence[int]) -> Commitments:
    """``a_j·G`` for each coefficient.  A zero coefficient (probability 2^-252 for the
    dealer's uniform ones) would commit to the identity, which holders refuse, so it is
    refused here too."""
    points = tuple(_base(a) for a in coefficients)
    if any(p is None for p in points):
        raise ValueError("a zero coefficient cannot be committed to")
    return points  # type: ignore[return-value]


def check_points(points: Sequence[bytes], what: str) -> None:
    """``secagg_bad_message`` naming ``what[j]`` unless every point is a canonical
    encoding of a non-identity point of the prime-order subgroup (libsodium's
    ``crypto_core_ed25519_is_valid_point``: on the curve, main subgroup, not small order)."""
    for j, p in enumerate(points):
        if not (isinstance(p, bytes) and len(p) == POINT_BYTES
                and bindings.crypto_core_ed25519_is_valid_point(p)):
            raise SecAggError("secagg_bad_message",
                              f"{what}[{j}] is not a point of the prime-order group")


def expected_point(commitments: Sequence[bytes], x: int) -> bytes | None:
    """``sum_j x^j·C_j`` (Horner), the public image ``f(x)·G`` of share ``x``."""
    acc: bytes | None = None
    for c in reversed(commitments):
        acc = _add(None if acc is None else _mul(x, acc), c)
    return acc


def verify_share(commitments: Sequence[bytes], x: int, share: bytes) -> bool:
    """Whether ``share`` is ``f(x)`` of the polynomial committed to (points already
    checked with ``check_points``).  False for a non-canonical share too."""
    try:
        s = decode_scalar(share, "share")
        return _base(s) == expected_point(commitments, x)
    except (SecAggError, CryptoError):
        return False


def opens(commitments: Sequence[bytes], secret: bytes) -> bool:
    """Whether ``secret`` is the polynomial's constant term: ``secret·G == C_0``.  Why
    this suffices at unmasking: a secret rebuilt from shares of which some are off the
    polynomial comes out as another value (unless the errors cancel, and then it is
    right), so one base-point multiplication per secret checks a reconstruction."""
    try:
        return _base(decode_scalar(secret, "secret")) == commitments[0]
    except (SecAggError, CryptoError, IndexError):
        return False


def bad_shares(commitments: Sequence[bytes], shares: Mapping[int, bytes]) -> list[int]:
    """The x coordinates whose share is not on the committed polynomial (sorted); ``t``
    multiplications per share, so only for a secret whose reconstruction did not
    ``open`` its commitments."""
    return sorted(x for x, s in shares.items() if not verify_share(commitments, x, s))


def transcript_digest(dealt: Mapping[str, Sequence[bytes]]) -> bytes:
    """SHA-256 over every dealer's commitments (dealer ids sorted).  Survivors sign it in
    the consistency round (``identity.survivors_statement``), so a hub that showed two
    holders different commitments for one dealer is caught before any share is revealed."""
    h = hashlib.sha256(b"fedsa-secagg/v1|vss-transcript")
    for dealer in sorted(dealt):
        points = dealt[dealer]
        h.update(b"|" + dealer.encode() + b"|" + len(points).to_bytes(4, "big"))
        h.update(b"".join(points))
    return h.digest()
