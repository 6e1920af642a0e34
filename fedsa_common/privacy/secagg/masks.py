"""Mask streams: key derivation (HKDF-SHA256) and the ChaCha20 keystream that expands a key.

A mask must be indistinguishable from uniform words mod 2^32 to anyone without the key,
so it comes from a cipher keyed with 256 bits, never from a seeded statistical generator
(whose 32- or 64-bit state could be searched).  The stream is ChaCha20's keystream (the
cipher applied to zeros) with a zero nonce: every key is used for exactly one stream,
because every key is derived with an ``info`` that names the federation, round, region,
purpose and clients.  Words are the keystream's little-endian uint32s, so the stream is
defined bit for bit by RFC 8439 and does not depend on torch or NumPy versions.

Pairwise masks cancel in the sum: client ``u`` adds ``+PRG(s_uv)`` for every ``v`` with
``u < v`` and ``-PRG(s_uv)`` otherwise (ids compared as strings), and ``v`` adds the
opposite, because ``s_uv`` = ``s_vu`` (X25519 is symmetric).
"""

from __future__ import annotations

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from torch import Tensor

from fedsa_common.privacy.secagg.fixed_point import MASK32

KEY_BYTES = 32
_ZERO_NONCE = bytes(16)  # cryptography's ChaCha20 nonce: 4-byte counter + 12-byte nonce
INFO_PREFIX = "fedsa-secagg/v1"


def info(federation: str, round_: int, region: str, purpose: str, *parts: str) -> bytes:
    """Unambiguous HKDF ``info``: names match ``[A-Za-z0-9_.-]``, so '|' cannot occur in
    them and the join is injective."""
    fields = [INFO_PREFIX, federation, str(int(round_)), region, purpose, *parts]
    for f in fields:
        if "|" in f:
            raise ValueError(f"'|' not allowed in key-derivation field {f!r}")
    return "|".join(fields).encode()


def derive_key(secret: bytes, info_bytes: bytes) -> bytes:
    """32 bytes of HKDF-SHA256 (no salt: ``secret`` is already uniform or a DH output)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=info_bytes).derive(secret)


def prg_words(key: bytes, length: int) -> Tensor:
    """``length`` uint32 words (as int64 in ``[0, 2^32)``) of ChaCha20's keystream."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"mask key must be {KEY_BYTES} bytes, got {len(key)}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    enc = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    stream = enc.update(bytes(4 * length))
    words = np.frombuffer(stream, dtype="<u4").astype(np.int64)
    return torch.from_numpy(words)


def pair_key(shared_secret: bytes, federation: str, round_: int, region: str,
             u: str, v: str) -> bytes:
    """The mask key of the pair {u, v}: the same whichever of the two derives it."""
    a, b = sorted((u, v))
    return derive_key(shared_secret, info(federation, round_, region, "pair", a, b))


def self_key(seed: bytes, federation: str, round_: int, region: str, u: str) -> bytes:
    """The key of ``u``'s self mask, from its 32-byte random seed ``b_u``."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"self-mask seed must be {KEY_BYTES} bytes, got {len(seed)}")
    return derive_key(seed, info(federation, round_, region, "self", u))


def signed_pair_mask(u: str, v: str, key: bytes, length: int) -> Tensor:
    """What ``u`` adds for its pair with ``v``: ``+PRG`` if ``u < v`` else ``-PRG`` mod 2^32."""
    if u == v:
        raise ValueError("a client has no pairwise mask with itself")
    m = prg_words(key, length)
    return m if u < v else torch.bitwise_and(-m, MASK32)
