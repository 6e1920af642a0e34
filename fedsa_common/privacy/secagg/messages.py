"""The messages of one secure-aggregation round, as plain dicts for any transport.

``to_dict`` gives ``str -> str | int | bytes | list | dict`` (and an int64 tensor for the
masked vector), so a transport can put bytes into JSON as base64 (``to_json``; every
``from_dict`` accepts base64 text where it expects bytes) and the vector into a
safetensors body.  ``from_dict`` runs over untrusted input and raises only
:class:`~fedsa_common.privacy.secagg.errors.SecAggError` (``secagg_bad_message``): types, id
syntax, key and share sizes, and the roster size are checked here; whether a message fits
the round (right members, right stage) is the state machines' job.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.fixed_point import MOD
from fedsa_common.privacy.secagg.identity import PUBLIC_BYTES, SIGNATURE_BYTES
from fedsa_common.privacy.secagg.params import MAX_ROSTER, NAME_RE, VSS_MAX_ROSTER
from fedsa_common.privacy.secagg.shamir import SHARE_BYTES
from fedsa_common.privacy.secagg.share_crypto import CIPHERTEXT_BYTES, COMMIT_BYTES, KEY_BYTES
from fedsa_common.privacy.secagg.vss import POINT_BYTES


def _bad(detail: str) -> SecAggError:
    return SecAggError("secagg_bad_message", detail)


def _mapping(raw: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise _bad(f"{what} is {type(raw).__name__}, not an object")
    return raw


def _fields(raw: Any, what: str, keys: set[str], optional: frozenset[str] = frozenset()
            ) -> Mapping[str, Any]:
    """``raw`` as a mapping with exactly ``keys``, plus any of ``optional`` (fields a
    message leaves out when empty, so it is byte for byte the older message)."""
    d = _mapping(raw, what)
    if not keys <= set(d) <= keys | optional:
        raise _bad(f"{what} keys {sorted(map(str, d))} != {sorted(keys)}"
                   + (f" (optional: {sorted(optional)})" if optional else ""))
    return d


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise _bad(f"{what} is not a valid id")
    return value


def _bytes(value: Any, what: str, size: int) -> bytes:
    """Raw bytes, or the same as strict base64 text (how JSON transports carry them)."""
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if isinstance(value, str) and len(value) <= 4 * size:
        try:
            value = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise _bad(f"{what} is not base64") from None
    if not isinstance(value, bytes) or len(value) != size:
        raise _bad(f"{what} must be {size} bytes")
    return value


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_ROSTER:
        raise _bad(f"{what} must be a list of at most {MAX_ROSTER} ids")
    names = tuple(_name(v, what) for v in value)
    if list(names) != sorted(set(names)):
        raise _bad(f"{what} must be sorted and without duplicates")
    return names


def _points(value: Any, what: str) -> tuple[bytes, ...]:
    """A dealer's Feldman commitments: at most ``2 * VSS_MAX_ROSTER`` 32-byte points (two
    polynomials of degree below the roster size; larger rosters share without VSS).  Only
    sizes here: whether they are points of the group is the protocol's check
    (``vss.check_points``), so a bad one costs only its dealer its place, not the whole
    message."""
    if not isinstance(value, list | tuple) or len(value) > 2 * VSS_MAX_ROSTER:
        raise _bad(f"{what} must be a list of at most {2 * VSS_MAX_ROSTER} points")
    return tuple(_bytes(v, f"{what}[{j}]", POINT_BYTES) for j, v in enumerate(value))


def _by_name(value: Any, what: str, size: int) -> dict[str, bytes]:
    d = _mapping(value, what)
    if len(d) > MAX_ROSTER:
        raise _bad(f"{what} has more than {MAX_ROSTER} entries")
    return {_name(k, f"{what} key"): _bytes(v, f"{what}[{k}]", size) for k, v in d.items()}


@dataclass(frozen=True)
class KeyAuth:
    """What authenticates one advertisement: the device's signing key, the provisioning
    authority's certificate of it, and the signature over the round keys
    (``identity.advertise_statement``)."""

    signing_pk: bytes
    certificate: bytes
    signature: bytes

    def to_list(self) -> list[bytes]:
        return [self.signing_pk, self.certificate, self.signature]

    @classmethod
    def from_raw(cls, raw: Any, what: str) -> KeyAuth:
        if not isinstance(raw, list | tuple) or len(raw) != 3:
            raise _bad(f"{what} must be [signing_pk, certificate, signature]")
        return cls(_bytes(raw[0], f"{what} signing_pk", PUBLIC_BYTES),
                   _bytes(raw[1], f"{what} certificate", SIGNATURE_BYTES),
                   _bytes(raw[2], f"{what} signature", SIGNATURE_BYTES))


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 0, client -> hub: the client's two public keys for this round, signed when
    the device has a provisioned identity (``auth``; None in unauthenticated mode)."""

    client: str
    c_pk: bytes  # encrypts shares
    s_pk: bytes  # agrees pairwise mask keys
    auth: KeyAuth | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"client": self.client, "c_pk": self.c_pk, "s_pk": self.s_pk}
        if self.auth is not None:
            d["auth"] = self.auth.to_list()
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> AdvertiseKeys:
        base = {"client", "c_pk", "s_pk"}
        d = _fields(raw, "advertise", base | {"auth"} if "auth" in _mapping(raw, "advertise")
                    else base)
        auth = KeyAuth.from_raw(d["auth"], "auth") if "auth" in d else None
        return cls(_name(d["client"], "client"), _bytes(d["c_pk"], "c_pk", KEY_BYTES),
                   _bytes(d["s_pk"], "s_pk", KEY_BYTES), auth)


@dataclass(frozen=True)
class Roster:
    """Stage 1, hub -> clients: everyone whose keys arrived (U1), the threshold, and each
    member's ``KeyAuth`` (members that sent none have no entry in ``auth``)."""

    threshold: int
    keys: dict[str, tuple[bytes, bytes]]  # client -> (c_pk, s_pk)
    auth: dict[str, KeyAuth] = field(default_factory=dict)

    @property
    def members(self) -> list[str]:
        return sorted(self.keys)

    def index(self, client: str) -> int:
        """Shamir x coordinate of ``client``'s shares: its position in the sorted roster + 1."""
        return self.members.index(client) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold,
                "keys": {c: [pk[0], pk[1]] for c, pk in sorted(self.keys.items())},
                "auth": {c: a.to_list() for c, a in sorted(self.auth.items())}}

    @classmethod
    def from_dict(cls, raw: Any) -> Roster:
        d = _fields(raw, "roster", {"threshold", "keys", "auth"})
        t = d["threshold"]
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise _bad("threshold must be a positive int")
        keys_raw = _mapping(d["keys"], "roster keys")
        if len(keys_raw) > MAX_ROSTER:
            raise _bad(f"roster of more than {MAX_ROSTER}")
        keys: dict[str, tuple[bytes, bytes]] = {}
        for c, pair in keys_raw.items():
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise _bad(f"keys of {c!r} must be [c_pk, s_pk]")
            keys[_name(c, "roster id")] = (_bytes(pair[0], "c_pk", KEY_BYTES),
                                           _bytes(pair[1], "s_pk", KEY_BYTES))
        auth_raw = _mapping(d["auth"], "roster auth")
        if not set(auth_raw) <= set(keys):
            raise _bad("roster auth for ids outside the roster")
        auth = {c: KeyAuth.from_raw(a, f"auth of {c}") for c, a in auth_raw.items()}
        return cls(t, keys, auth)


@dataclass(frozen=True)
class ShareKeys:
    """Stage 1, client -> hub: one ciphertext of shares per roster member (itself too),
    the commitments to each member's shares (``share_crypto.commit_shares``), and the
    Feldman commitments to its two sharing polynomials (``vss``: ``t`` points for s_sk,
    then ``t`` for b), which every holder checks its shares against; empty, and left out
    of the message, in a round without VSS (``SecAggParams.vss``)."""

    client: str
    ciphertexts: dict[str, bytes]  # recipient -> ciphertext
    commitments: dict[str, bytes] = field(default_factory=dict)  # recipient -> commitments
    vss: tuple[bytes, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"client": self.client,
                             "ciphertexts": dict(sorted(self.ciphertexts.items())),
                             "commitments": dict(sorted(self.commitments.items()))}
        if self.vss:
            d["vss"] = list(self.vss)
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> ShareKeys:
        d = _fields(raw, "share_keys", {"client", "ciphertexts", "commitments"},
                    frozenset({"vss"}))
        return cls(_name(d["client"], "client"),
                   _by_name(d["ciphertexts"], "ciphertexts", CIPHERTEXT_BYTES),
                   _by_name(d["commitments"], "commitments", COMMIT_BYTES),
                   _points(d.get("vss", []), "vss"))


@dataclass(frozen=True)
class ShareDelivery:
    """Stage 2, hub -> one client: who sent shares (U2), their ciphertexts for it, their
    commitments to its shares, and every sender's Feldman commitments (``vss``, the same
    for every recipient; survivors later sign their digest; left out of the message in a
    round without VSS)."""

    recipient: str
    members: tuple[str, ...]  # U2, sorted
    ciphertexts: dict[str, bytes]  # sender -> ciphertext
    commitments: dict[str, bytes] = field(default_factory=dict)  # sender -> its commitments
    vss: dict[str, tuple[bytes, ...]] = field(default_factory=dict)  # sender -> its points

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"recipient": self.recipient, "members": list(self.members),
                             "ciphertexts": dict(sorted(self.ciphertexts.items())),
                             "commitments": dict(sorted(self.commitments.items()))}
        if self.vss:
            d["vss"] = {u: list(p) for u, p in sorted(self.vss.items())}
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> ShareDelivery:
        d = _fields(raw, "share_delivery", {"recipient", "members", "ciphertexts",
                                            "commitments"}, frozenset({"vss"}))
        vss_raw = _mapping(d.get("vss", {}), "vss")
        if len(vss_raw) > VSS_MAX_ROSTER:
            raise _bad(f"vss has more than {VSS_MAX_ROSTER} entries")
        return cls(_name(d["recipient"], "recipient"), _names(d["members"], "members"),
                   _by_name(d["ciphertexts"], "ciphertexts", CIPHERTEXT_BYTES),
                   _by_name(d["commitments"], "commitments", COMMIT_BYTES),
                   {_name(u, "vss key"): _points(p, f"vss[{u}]") for u, p in vss_raw.items()})


@dataclass(frozen=True)
class ShareCheck:
    """Stage 2, client -> hub, once it opened its shares: the dealers whose shares it
    cannot use (they do not decrypt, or do not match their dealer's commitments); empty
    when all were good.  Why: a dealer that sends garbage to its holders used to make
    each of them sit the round out, so one device could fail its region's round; now the
    hub leaves out a dealer that fewer than ``t`` holders can use, and holders return no
    share of a dealer they refused (``protocol.keep_dealers``)."""

    client: str
    rejected: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client, "rejected": list(self.rejected)}

    @classmethod
    def from_dict(cls, raw: Any) -> ShareCheck:
        d = _fields(raw, "share_check", {"client", "rejected"})
        return cls(_name(d["client"], "client"), _names(d["rejected"], "rejected"))


@dataclass(frozen=True)
class MaskingSet:
    """Stage 2, hub -> every member that sent its share check: the members that mask with
    each other (U2 less the dealers too few holders could use and the members that sent
    no check).  A member not in it sits the round out."""

    members: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members)}

    @classmethod
    def from_dict(cls, raw: Any) -> MaskingSet:
        d = _fields(raw, "masking_set", {"members"})
        return cls(_names(d["members"], "members"))


@dataclass(frozen=True)
class MaskedInput:
    """Stage 2, client -> hub: the masked vector (int64 words in ``[0, 2^32)``)."""

    client: str
    y: Tensor

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client, "y": self.y}

    @classmethod
    def from_dict(cls, raw: Any, words: int) -> MaskedInput:
        d = _fields(raw, "masked_input", {"client", "y"})
        y = d["y"]
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (words,):
            raise _bad(f"y must be an int64 tensor of shape ({words},)")
        if words and (int(y.min()) < 0 or int(y.max()) >= MOD):
            raise _bad("y words outside [0, 2^32)")
        return cls(_name(d["client"], "client"), y.detach().to("cpu").clone())


@dataclass(frozen=True)
class SurvivorSet:
    """Stage 3, hub -> survivors: who sent a masked vector (U3) and who dropped (D).  Each
    survivor signs it (consistency check) before anyone reveals a share."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"survivors": list(self.survivors), "dropped": list(self.dropped)}

    @classmethod
    def from_dict(cls, raw: Any) -> SurvivorSet:
        d = _fields(raw, "survivor_set", {"survivors", "dropped"})
        return cls(_names(d["survivors"], "survivors"), _names(d["dropped"], "dropped"))


@dataclass(frozen=True)
class SurvivorSignature:
    """Stage 3, survivor -> hub: its signature over the survivor set it was told
    (``identity.survivors_statement``; 64 zero bytes in unauthenticated mode)."""

    client: str
    signature: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client, "signature": self.signature}

    @classmethod
    def from_dict(cls, raw: Any) -> SurvivorSignature:
        d = _fields(raw, "survivor_signature", {"client", "signature"})
        return cls(_name(d["client"], "client"),
                   _bytes(d["signature"], "signature", SIGNATURE_BYTES))


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, hub -> signers: the survivor set again with at least ``t`` survivors'
    signatures over it, so each can check that they all saw the same set."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: dict[str, bytes] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"survivors": list(self.survivors), "dropped": list(self.dropped),
                "signatures": dict(sorted(self.signatures.items()))}

    @classmethod
    def from_dict(cls, raw: Any) -> UnmaskRequest:
        d = _fields(raw, "unmask_request", {"survivors", "dropped", "signatures"})
        return cls(_names(d["survivors"], "survivors"), _names(d["dropped"], "dropped"),
                   _by_name(d["signatures"], "signatures", SIGNATURE_BYTES))


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 3, survivor -> hub: its shares of b_v (v survived) and of s_sk_v (v dropped)."""

    client: str
    b_shares: dict[str, bytes]
    s_shares: dict[str, bytes]

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client, "b_shares": dict(sorted(self.b_shares.items())),
                "s_shares": dict(sorted(self.s_shares.items()))}

    @classmethod
    def from_dict(cls, raw: Any) -> UnmaskResponse:
        d = _fields(raw, "unmask_response", {"client", "b_shares", "s_shares"})
        return cls(_name(d["client"], "client"), _by_name(d["b_shares"], "b_shares", SHARE_BYTES),
                   _by_name(d["s_shares"], "s_shares", SHARE_BYTES))


def to_json(data: Any) -> Any:
    """``to_dict`` output with every bytes value as base64 text (JSON-safe)."""
    if isinstance(data, bytes):
        return base64.b64encode(data).decode("ascii")
    if isinstance(data, dict):
        return {k: to_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [to_json(v) for v in data]
    return data
