"""Key agreement and the authenticated encryption of shares between two clients.

Shares travel through the hub, which must learn nothing from them: client ``u`` encrypts
the shares it gives ``v`` with AES-256-GCM under ``HKDF(X25519(c_sk_u, c_pk_v))``, with
associated data naming the round, ``u`` and ``v``.  The hub cannot read them, and cannot
re-address one (deliver ``u``'s ciphertext for ``v`` to ``w``, or claim it came from
``w``) without authentication failing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.masks import derive_key
from fedsa_common.privacy.secagg.params import RoundContext
from fedsa_common.privacy.secagg.shamir import SHARE_BYTES

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
PLAINTEXT_BYTES = 2 * SHARE_BYTES  # share of s_sk || share of b
CIPHERTEXT_BYTES = NONCE_BYTES + PLAINTEXT_BYTES + TAG_BYTES
COMMIT_BYTES = 2 * hashlib.sha256().digest_size  # commitment to the s share || to the b share


def new_private_key(randbytes: Callable[[int], bytes]) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(randbytes(KEY_BYTES))


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def mask_private_key(ctx: RoundContext, client: str, secret: bytes) -> X25519PrivateKey:
    """``client``'s X25519 mask key, derived from the scalar it Shamir-shares
    (``shamir.random_secret``).  Why derived and not the scalar itself: the scalar's
    Feldman commitment is ``secret·G`` on edwards25519, and using the same number as the
    X25519 key would tie the two public values together; through HKDF they are unrelated.
    The hub applies the same derivation to the secret it reconstructs for a dropped
    client and checks the public key against the advertised one."""
    return X25519PrivateKey.from_private_bytes(derive_key(secret, ctx.info("s_sk", client)))


def agree(private: X25519PrivateKey | bytes, peer_public: bytes, what: str) -> bytes:
    """X25519 shared secret; a low-order peer key (all-zero secret) is refused."""
    try:
        sk = (private if isinstance(private, X25519PrivateKey)
              else X25519PrivateKey.from_private_bytes(private))
        return sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:
        raise SecAggError("secagg_bad_message", f"key agreement for {what}: {err}") from None


def _share_key(ctx: RoundContext, secret: bytes, sender: str, recipient: str) -> bytes:
    return derive_key(secret, ctx.info("enc", sender, recipient))


def encrypt_shares(ctx: RoundContext, c_sk: X25519PrivateKey, recipient_c_pk: bytes,
                   sender: str, recipient: str, plaintext: bytes,
                   randbytes: Callable[[int], bytes]) -> bytes:
    """nonce || AES-GCM(plaintext) for ``sender`` -> ``recipient``."""
    if len(plaintext) != PLAINTEXT_BYTES:
        raise ValueError(f"share plaintext must be {PLAINTEXT_BYTES} bytes")
    key = _share_key(ctx, agree(c_sk, recipient_c_pk, recipient), sender, recipient)
    nonce = randbytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ctx.info("share", sender, recipient))


def decrypt_shares(ctx: RoundContext, c_sk: X25519PrivateKey, sender_c_pk: bytes,
                   sender: str, recipient: str, ciphertext: bytes) -> bytes:
    """The plaintext of ``sender``'s ciphertext for ``recipient``, or ``secagg_bad_share``
    when it was tampered with, re-addressed, truncated or is garbage."""
    if not isinstance(ciphertext, bytes) or len(ciphertext) != CIPHERTEXT_BYTES:
        raise SecAggError("secagg_bad_share", f"share from {sender}: wrong size")
    key = _share_key(ctx, agree(c_sk, sender_c_pk, sender), sender, recipient)
    nonce, body = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, ctx.info("share", sender, recipient))
    except InvalidTag:
        raise SecAggError("secagg_bad_share",
                          f"share from {sender} does not authenticate") from None


def commit_shares(ctx: RoundContext, dealer: str, holder: str, plaintext: bytes) -> bytes:
    """SHA-256 commitments to the two shares ``dealer`` gave ``holder`` (s share, b share).

    Why: at unmasking a holder returns one of them to the hub, which checks it against the
    dealer's commitment, so a holder that returns a garbage share is identified and its
    answer dropped instead of silently spoiling the reconstruction.  A share of fewer
    than ``t`` is uniform 256-bit data, so its hash tells the hub nothing usable.
    """
    if len(plaintext) != PLAINTEXT_BYTES:
        raise ValueError(f"share plaintext must be {PLAINTEXT_BYTES} bytes")
    return b"".join(
        hashlib.sha256(ctx.info(f"commit-{kind}", dealer, holder) + b"|" + share).digest()
        for kind, share in (("s", plaintext[:SHARE_BYTES]), ("b", plaintext[SHARE_BYTES:])))


def share_matches(ctx: RoundContext, dealer: str, holder: str, kind: str, share: bytes,
                  commitment: bytes) -> bool:
    """Whether ``share`` (``kind`` "s" or "b") is the one ``dealer`` committed to for
    ``holder``."""
    half = COMMIT_BYTES // 2
    expected = commitment[:half] if kind == "s" else commitment[half:]
    got = hashlib.sha256(ctx.info(f"commit-{kind}", dealer, holder) + b"|" + share).digest()
    return hmac.compare_digest(got, expected)
