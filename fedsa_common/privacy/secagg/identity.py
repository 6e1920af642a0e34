"""Device signing identities: what lets a device trust the keys in a roster the hub sends.

Why: the hub relays every key advertisement.  Without authentication a hub (or anyone who
can publish as the hub) hands a victim a roster of keys it made itself, decrypts the
victim's shares and removes every mask (Bonawitz et al. 2017 §6, malicious model).  So:

* ``hub provision`` holds an Ed25519 *authority* key (``secagg-authority.key``, kept
  offline like ``ca.key``) and issues each device an Ed25519 *signing* key plus a
  *certificate*: the authority's signature over ``(federation, region, client, signing
  public key)``.  Both go into the device's credentials file with the authority's public
  key.  A certificate binds a key to exactly one client id of one region.
* A device signs its per-round key advertisement (``advertise_statement``) and, later, the
  survivor set it was told (``survivors_statement``).
* Every device checks every roster entry: the certificate under the authority key it was
  provisioned with, for that entry's client id, and the advertisement's signature under
  the certified key.  The hub never holds a device's signing key nor the authority key,
  so it can neither forge an entry nor re-use one under another id or round.
* A regional hub given the authority's *public* key (``hub provision`` writes it into the
  regional hub's credentials) checks each advertisement the same way before it enters the
  roster, so one device with a stale or forged certificate is left out of its region's
  round instead of making every member refuse the roster.  This is for availability only:
  devices still check every entry themselves and trust no hub's check.

Everything signed starts with a domain string and names the federation, round and
region (``RoundContext.info``), so no signature is valid in another place or round.
Pure functions and small value types; reading the keys from files is ``broker_auth``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.params import NAME_RE, RoundContext

PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
CERT_DOMAIN = "fedsa-secagg-device-cert/v1"


def cert_statement(federation: str, region: str, client: str, signing_pk: bytes) -> bytes:
    """What the authority signs for one device (names cannot contain '|')."""
    for kind, name in (("federation", federation), ("region", region), ("client", client)):
        if not NAME_RE.match(name):
            raise ValueError(f"{kind} {name!r} is not a valid id")
    if len(signing_pk) != PUBLIC_BYTES:
        raise ValueError(f"signing public key must be {PUBLIC_BYTES} bytes")
    return "|".join((CERT_DOMAIN, federation, region, client)).encode() + b"|" + signing_pk


def advertise_statement(ctx: RoundContext, client: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """What a device signs for its round keys."""
    return ctx.info("advertise", client) + b"|" + c_pk + s_pk


def survivors_statement(ctx: RoundContext, survivors: tuple[str, ...],
                        dropped: tuple[str, ...], dealt: bytes) -> bytes:
    """What a survivor signs in the consistency round: the set it was told (U3), the
    dropped set (D), and the digest of every dealer's Feldman commitments it was shown
    (``vss.transcript_digest``, fixed size), so ``t`` signatures over one statement also
    prove that the hub showed them all the same commitments.  ``dealt`` is empty in a
    round without VSS, which signs the pre-VSS statement.  Ids are sorted and '|'-free,
    so the encoding is injective (whether a round has VSS is fixed by its roster)."""
    statement = ctx.info("survivors", ",".join(survivors), ",".join(dropped))
    return statement + b"|" + dealt if dealt else statement


def check_certificate(authority: bytes, federation: str, region: str, client: str,
                      signing_pk: bytes, certificate: bytes) -> None:
    """``secagg_unauthenticated`` unless ``authority`` certified ``signing_pk`` for
    ``client`` of ``region`` in ``federation``: what every device checks of every roster
    entry, and what a regional hub given the authority's public key checks of every
    advertisement before it enters the roster."""
    try:
        statement = cert_statement(federation, region, client, signing_pk)
    except ValueError as err:
        raise SecAggError("secagg_unauthenticated", f"certificate of {client}: {err}") from None
    verify(authority, certificate, statement, f"certificate of {client}")


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def verify(public: bytes, signature: bytes, statement: bytes, what: str) -> None:
    """``secagg_unauthenticated`` unless ``signature`` is ``public``'s over ``statement``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, statement)
    except (InvalidSignature, ValueError):
        raise SecAggError("secagg_unauthenticated", f"bad signature: {what}") from None


class _SigningKey:
    """What the authority and a device share: an Ed25519 key and its raw bytes."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return public_bytes(self.key)

    @property
    def private_bytes(self) -> bytes:
        return self.key.private_bytes_raw()


@dataclass(frozen=True)
class Authority(_SigningKey):
    """The provisioning authority's key (only ``hub provision`` has it)."""

    key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> Authority:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Authority:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))


    def certify(self, federation: str, region: str, client: str, signing_pk: bytes) -> bytes:
        return self.key.sign(cert_statement(federation, region, client, signing_pk))

    def issue(self, federation: str, region: str, client: str) -> DeviceIdentity:
        """A fresh signing key for ``client`` and its certificate."""
        key = Ed25519PrivateKey.generate()
        return DeviceIdentity(federation, region, client, key,
                              self.certify(federation, region, client, public_bytes(key)),
                              self.public)


@dataclass(frozen=True)
class DeviceIdentity(_SigningKey):
    """One device's signing key, its certificate and the authority it trusts.

    Built only through :meth:`load` or :meth:`Authority.issue`; ``load`` checks that the
    certificate is the authority's over this very key and id, so a device never runs
    with an identity its peers would refuse."""

    federation: str
    region: str
    client: str
    key: Ed25519PrivateKey = field(repr=False)
    certificate: bytes
    authority: bytes

    @classmethod
    def load(cls, federation: str, region: str, client: str, private: bytes,
             certificate: bytes, authority: bytes) -> DeviceIdentity:
        """From raw bytes (a credentials file); ``ValueError`` naming the bad field."""
        try:
            key = Ed25519PrivateKey.from_private_bytes(private)
        except ValueError:
            raise ValueError("secagg signing_key is not a 32-byte Ed25519 key") from None
        if len(authority) != PUBLIC_BYTES:
            raise ValueError(f"secagg authority must be {PUBLIC_BYTES} bytes")
        ident = cls(federation, region, client, key, certificate, authority)
        try:
            verify(authority, certificate, cert_statement(federation, region, client,
                                                          ident.public), "own certificate")
        except SecAggError:
            raise ValueError(f"secagg certificate does not certify this key for "
                             f"{federation}/{region}/{client}") from None
        return ident


    def sign(self, statement: bytes) -> bytes:
        return self.key.sign(statement)

    def check_member(self, client: str, signing_pk: bytes, certificate: bytes) -> None:
        """``secagg_unauthenticated`` unless the authority certified ``signing_pk`` for
        ``client`` in our federation and region."""
        check_certificate(self.authority, self.federation, self.region, client, signing_pk,
                          certificate)
