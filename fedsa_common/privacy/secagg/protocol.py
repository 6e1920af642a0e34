"""Client and hub state machines of practical secure aggregation (Bonawitz et al., CCS 2017).

Malicious hub (Bonawitz et al. §6): the hub may deviate from the protocol, forge or alter
any message it relays, and collude with devices.  With provisioned identities
(``identity``) it still learns only ``sum_u w_u x_u`` and ``sum_u w_u`` over the clients
that sent a masked vector (at least ``t`` of them), plus who took part, as long as fewer
than ``2t - n`` devices collude with it (``params.MIN_ROSTER``).  Stages (one round, one
region)::

  0 AdvertiseKeys  client: fresh X25519 keys (c: encrypts shares, s: pairwise masks),
                   signed with its provisioned key and sent with its certificate
  1 ShareKeys      hub -> roster U1 + threshold t; client checks that every member was
                   announced as selected, every entry's certificate and signature,
                   then Shamir-shares (over Z_L, ``shamir``) the scalar s_sk is derived
                   from and its self-mask seed b to every member, each encrypted to that
                   member, with SHA-256 commitments to each member's shares (the member
                   and later the hub check shares against them) and Feldman commitments
                   to both polynomials (``vss``; 2t points, the same for every member)
  2 ShareCheck     hub -> each member of U2 (who sent shares) its ciphertexts and every
                   dealer's Feldman commitments; client opens them and names the dealers
                   whose shares it cannot use (no decryption, not the dealer's SHA-256
                   commitment, or off its committed polynomial); hub keeps the members
                   every one of whose shares at least t kept holders can use
                   (``keep_dealers``) and
                   tells each checker that masking set (U2 from here on)
    MaskedInput    client: y = enc(x, w) + PRG(b) + sum_{v in U2} sign(u,v) PRG(s_uv) mod 2^32
  3 Consistency    hub -> survivors U3 (who sent y) and dropped D = U2 \\ U3; each
                   survivor signs (U3, D) and the digest of the Feldman commitments it
                   was shown, once
  4 Unmasking      hub -> signers: (U3, D) with >= t valid signatures over it; each
                   signer checks them, then returns its shares of b_v (v in U3) and of
                   s_sk_v (v in D)
    finish         hub checks the answers' shares against the Feldman commitments (one
                   batched check per secret), reconstructs b_v and s_sk_v from >= t
                   shares on the polynomial, removes PRG(b_v) and the dropped clients'
                   pairwise masks:
                   sum_{U3} enc(x, w) mod 2^32

A dealer that sends its holders garbage (a ciphertext that does not decrypt, a share
that is not the one it committed to, or shares that authenticate but lie on no one
polynomial of degree ``t - 1``: Feldman VSS, ``vss``) is named and left out at the share
check once fewer than ``t`` holders can use its shares, and the round goes on without
it; a holder that refuses a dealer's shares (rightly or not) simply returns none of
them.  Leaving an honest dealer out takes more than ``n - t`` false refusals, as many
devices as could fail the round by going silent.  A holder that colludes with a bad
dealer and returns an off-polynomial share at unmasking is caught by the hub's check
against the commitments (``SecAggServer.bad_unmask``).  The hub relays the commitments
but cannot show members different ones: the survivors sign their digest, so a member
shown other commitments refuses the others' signatures before any share is revealed.

Feldman VSS is on when the round's parameters ask for it and the roster is within
``params.VSS_MAX_ROSTER`` (``SecAggParams.vss``, which hub and clients derive alike from
the roster); otherwise no commitments are sent, survivors sign only (U3, D), and a dealer
of shares on no one polynomial fails the round at unmasking, as before issue 15.  The
privacy argument below does not depend on VSS.

A client never reveals both kinds of share of the same client, signs one survivor set
only, and reveals only for the set it signed once ``t`` members proved they saw it too,
so the hub cannot strip both masks of anyone who sent y.  Without an identity (the
explicit unauthenticated mode) signatures are 64 zero bytes and nothing is checked:
then only a semi-honest hub is defended against.
Any stage with fewer than ``t`` participants fails the round with ``secagg_too_few``.

Everything is pure (no I/O); messages are those of ``messages``.  Every message a party
sends is cached, so a transport may resend it, and asking a party to send a *different*
message for a stage it already answered is refused: two masked vectors under the same
masks would reveal the difference of the inputs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fedsa_common.privacy.secagg import share_crypto, vss
from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.fixed_point import add_mod, sub_mod
from fedsa_common.privacy.secagg.identity import (
    SIGNATURE_BYTES,
    DeviceIdentity,
    advertise_statement,
    check_certificate,
    survivors_statement,
    verify,
)
from fedsa_common.privacy.secagg.masks import pair_key, prg_words, self_key, signed_pair_mask
from fedsa_common.privacy.secagg.messages import (
    AdvertiseKeys,
    KeyAuth,
    MaskedInput,
    MaskingSet,
    Roster,
    ShareCheck,
    ShareDelivery,
    ShareKeys,
    SurvivorSet,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsa_common.privacy.secagg.params import MIN_ROSTER, RoundContext
from fedsa_common.privacy.secagg.shamir import SHARE_BYTES, combine_shares, deal, random_secret

RandBytes = Callable[[int], bytes]
UNSIGNED = bytes(SIGNATURE_BYTES)  # the "signature" of unauthenticated mode


def _stage(current: str, allowed: tuple[str, ...], what: str) -> None:
    if current not in allowed:
        raise SecAggError("secagg_state", f"{what} in stage {current!r}")


def _too_few(what: str, have: int, need: int) -> SecAggError:
    return SecAggError("secagg_too_few", f"{have} {what} < threshold {need}")


# ============================================================================== client
class SecAggClient:
    """One device's side of one round.

    ``randbytes`` supplies all of the client's randomness (keys, self-mask seed, nonces);
    it is ``os.urandom`` except in tests.  Secrets live only in this object.  ``identity``
    is the device's provisioned signing identity; None is the unauthenticated mode, which
    defends against a semi-honest hub only (the caller decides whether that is allowed).
    ``selected`` is the round announcement's selection for our region: a roster member
    outside it is refused like a bad signature, because a hub that adds devices nobody
    selected (its own provisioned accomplices) raises the number of colluders in the
    roster that the threshold must outnumber.  None skips the check; the device driver
    always passes the announcement's list.
    """

    def __init__(self, ctx: RoundContext, client: str, randbytes: RandBytes = os.urandom,
                 identity: DeviceIdentity | None = None,
                 selected: Collection[str] | None = None):
        if identity is not None and (identity.client, identity.region, identity.federation
                                     ) != (client, ctx.region, ctx.federation):
            raise ValueError(f"identity of {identity.federation}/{identity.region}/"
                             f"{identity.client} used for {ctx.federation}/{ctx.region}/"
                             f"{client}")
        self.ctx = ctx
        self.client = client
        self.identity = identity
        self.selected = None if selected is None else frozenset(selected)
        self._rand = randbytes
        self._c_sk = share_crypto.new_private_key(randbytes)
        self._s_secret = random_secret(randbytes)  # shared; s_sk is derived from it
        self._s_sk = share_crypto.mask_private_key(ctx, client, self._s_secret)
        self._seed = random_secret(randbytes)  # b_u
        self._vss: tuple[bytes, ...] = ()  # our Feldman commitments (s polynomial, then b)
        self._dealt = b""  # digest of every dealer's commitments we were shown
        self.stage = "keys"
        self.roster: Roster | None = None
        self.members: tuple[str, ...] = ()  # U2: the masking set once the hub sent it
        self._delivered: tuple[str, ...] = ()  # who sent shares (the delivery's members)
        self._held: dict[str, tuple[bytes, bytes]] = {}  # sender -> (s share, b share)
        self.rejected: dict[str, str] = {}  # dealer -> why its shares are unusable
        self._own_share: bytes = b""
        self._sent: dict[str, object] = {}  # stage -> the message sent (resends)
        self._request: UnmaskRequest | None = None
        self._signed: SurvivorSet | None = None
        self._input_digest = b""
        self.weight = 0
        self.sent_values: Tensor | None = None  # what the sum holds for us / weight

    # -- stage 0 ------------------------------------------------------------------
    def advertise(self) -> AdvertiseKeys:
        c_pk = share_crypto.public_bytes(self._c_sk)
        s_pk = share_crypto.public_bytes(self._s_sk)
        ident = self.identity
        auth = None if ident is None else KeyAuth(
            ident.public, ident.certificate,
            ident.sign(advertise_statement(self.ctx, self.client, c_pk, s_pk)))
        return AdvertiseKeys(self.client, c_pk, s_pk, auth)

    # -- stage 1 ------------------------------------------------------------------
    def share_keys(self, roster: Roster) -> ShareKeys:
        """Check the roster, then share s_sk and b with every member."""
        if self.roster is not None:
            if roster != self.roster:
                raise SecAggError("secagg_conflict", "a second, different roster")
            return self._sent["share_keys"]  # type: ignore[return-value]
        _stage(self.stage, ("keys",), "share_keys")
        self._check_roster(roster)
        members = roster.members
        n, t = len(members), roster.threshold
        s_deal = deal(self._s_secret, t, n, self._rand)
        b_deal = deal(self._seed, t, n, self._rand)
        s_shares, b_shares = s_deal.shares, b_deal.shares
        if self.ctx.params.vss(n):
            self._vss = vss.commit(s_deal.coefficients) + vss.commit(b_deal.coefficients)
        cts, commitments = {}, {}
        for i, v in enumerate(members):
            plaintext = s_shares[i] + b_shares[i]
            if v == self.client:
                self._own_share = plaintext
            cts[v] = share_crypto.encrypt_shares(self.ctx, self._c_sk, roster.keys[v][0],
                                                 self.client, v, plaintext, self._rand)
            commitments[v] = share_crypto.commit_shares(self.ctx, self.client, v, plaintext)
        self.roster = roster
        self.stage = "shares"
        msg = ShareKeys(self.client, cts, commitments, self._vss)
        self._sent["share_keys"] = msg
        return msg

    def _check_roster(self, roster: Roster) -> None:
        own = (share_crypto.public_bytes(self._c_sk), share_crypto.public_bytes(self._s_sk))
        if roster.keys.get(self.client) != own:
            raise SecAggError("secagg_refused", "roster lacks our keys or altered them")
        if self.selected is not None:
            check_selected(roster.members, self.selected, self.ctx.round)
        n = len(roster.keys)
        params = self.ctx.params
        if n < max(params.min_clients, MIN_ROSTER):
            raise _too_few("roster members", n, max(params.min_clients, MIN_ROSTER))
        if roster.threshold != params.threshold(n):
            raise SecAggError("secagg_refused", f"threshold {roster.threshold} != "
                              f"{params.threshold(n)} for a roster of {n}")
        for i in (0, 1):
            if len({pk[i] for pk in roster.keys.values()}) != n:
                raise SecAggError("secagg_refused", "two roster members share a public key")
        if self.identity is not None:
            self._authenticate(roster)

    def _authenticate(self, roster: Roster) -> None:
        """Every entry certified for its id and signed for this round, or
        ``secagg_unauthenticated`` naming the first bad member."""
        assert self.identity is not None
        for member in roster.members:
            auth = roster.auth.get(member)
            if auth is None:
                raise SecAggError("secagg_unauthenticated", f"roster entry {member} unsigned")
            self.identity.check_member(member, auth.signing_pk, auth.certificate)
            c_pk, s_pk = roster.keys[member]
            verify(auth.signing_pk, auth.signature,
                   advertise_statement(self.ctx, member, c_pk, s_pk), f"keys of {member}")

    # -- stage 2 (first half: before training) ------------------------------------
    def receive_shares(self, delivery: ShareDelivery) -> ShareCheck:
        """Decrypt and keep the shares the other members sent us, and say which dealers'
        shares we cannot use (``rejected``): they do not authenticate, are not the ones
        their dealer committed to, or are not on the polynomials of its Feldman
        commitments (``vss``).  Why not sit the round out, as before: then a dealer
        that sent everyone garbage failed the region's round.  Our own share coming back
        altered is the hub's doing: then we do sit it out."""
        if "share_check" in self._sent:
            if delivery.members != self._delivered:
                raise SecAggError("secagg_conflict", "a second, different share delivery")
            return self._sent["share_check"]  # type: ignore[return-value]
        _stage(self.stage, ("shares",), "receive_shares")
        assert self.roster is not None
        members = delivery.members
        if delivery.recipient != self.client:
            raise SecAggError("secagg_refused", f"delivery for {delivery.recipient}")
        if not set(members) <= set(self.roster.keys) or self.client not in members:
            raise SecAggError("secagg_refused", "members are not a roster subset with us in it")
        if len(members) < self.roster.threshold:
            raise _too_few("members with shares", len(members), self.roster.threshold)
        verifiable = self.ctx.params.vss(len(self.roster.keys))
        if set(delivery.ciphertexts) != set(members) or set(delivery.vss) != (
                set(members) if verifiable else set()):
            raise SecAggError("secagg_refused", "ciphertexts or vss commitments do not match "
                              "the members" + ("" if verifiable else " (a round without vss)"))
        held, rejected = {}, {}
        for u in members:
            try:
                pt = self._open_share(delivery, u)
            except SecAggError as err:
                if u == self.client:
                    raise
                rejected[u] = str(err)
                continue
            held[u] = (pt[:SHARE_BYTES], pt[SHARE_BYTES:])
        self._held = held
        self.rejected = rejected
        self._delivered = members
        self._dealt = vss.transcript_digest(delivery.vss) if verifiable else b""
        self.stage = "checked"
        msg = ShareCheck(self.client, tuple(sorted(rejected)))
        self._sent["share_check"] = msg
        return msg

    def _open_share(self, delivery: ShareDelivery, u: str) -> bytes:
        """``u``'s plaintext shares for us, checked against its commitments (our own
        against what we dealt ourselves)."""
        assert self.roster is not None
        pt = share_crypto.decrypt_shares(self.ctx, self._c_sk, self.roster.keys[u][0], u,
                                         self.client, delivery.ciphertexts[u])
        commitment = delivery.commitments.get(u, b"")
        if commitment != share_crypto.commit_shares(self.ctx, u, self.client, pt):
            raise SecAggError("secagg_bad_share", f"shares from {u} do not match its "
                              "commitments (we could be blamed for them at unmasking)")
        points = delivery.vss.get(u, ())
        if u == self.client:
            if pt != self._own_share or points != self._vss:
                raise SecAggError("secagg_bad_share", "our own share or commitments came "
                                  "back altered")
            return pt
        if not self.ctx.params.vss(len(self.roster.keys)):
            return pt  # the SHA-256 commitment is the whole check (the pre-VSS protocol)
        t = self.roster.threshold
        if len(points) != 2 * t:
            raise SecAggError("secagg_bad_share", f"vss of {u}: {len(points)} points, "
                              f"expected {2 * t}")
        # no point validation here: the hub refuses invalid points (add_shares), and a
        # share that passes against points with a small-order part still lies on the
        # prime-order part's polynomial; invalid encodings simply fail the check
        x = self.roster.index(self.client)
        if not (vss.verify_share(points[:t], x, pt[:SHARE_BYTES])
                and vss.verify_share(points[t:], x, pt[SHARE_BYTES:])):
            raise SecAggError("secagg_bad_share", f"shares from {u} are not on the "
                              "polynomials it committed to (vss)")
        return pt

    def mask_with(self, told: MaskingSet) -> None:
        """Take the hub's masking set: the delivery's members less those left out at the
        share check.  ``secagg_excluded`` when we are not in it (we sit the round out)."""
        if self.stage in ("ready", "sent", "signed", "unmasked"):
            if told.members != self.members:
                raise SecAggError("secagg_conflict", "a second, different masking set")
            return
        _stage(self.stage, ("checked",), "mask_with")
        assert self.roster is not None
        if not set(told.members) <= set(self._delivered):
            raise SecAggError("secagg_refused", "masking set outside the delivery's members")
        if self.client not in told.members:
            raise SecAggError("secagg_excluded", "left out of the masking set")
        if len(told.members) < self.roster.threshold:
            raise _too_few("members in the masking set", len(told.members),
                           self.roster.threshold)
        self.members = told.members
        self.stage = "ready"

    # -- stage 2 (second half: after training) ------------------------------------
    def masked_input(self, values: Tensor, num_samples: int) -> MaskedInput:
        """Mask ``values`` (the round's flat vector, ``ctx.length`` floats) weighted by
        ``num_samples`` (capped at ``max_weight``).  Afterwards ``sent_values`` holds what
        the sum contains for us, divided by our weight (for error feedback)."""
        if self.stage in ("sent", "signed", "unmasked"):
            return self._resend_input(values, num_samples)
        _stage(self.stage, ("ready",), "masked_input")
        assert self.roster is not None
        if values.numel() != self.ctx.length:
            raise ValueError(f"{values.numel()} values, the round masks {self.ctx.length}")
        fp = self.ctx.params.fixed_point(len(self.roster.keys))
        self.weight = self.ctx.params.weight(num_samples)
        y = fp.encode(values, self.weight)
        n_words = self.ctx.words
        y = add_mod(y, prg_words(self_key(self._seed, self.ctx.federation, self.ctx.round,
                                          self.ctx.region, self.client), n_words))
        for v in self.members:
            if v == self.client:
                continue
            secret = share_crypto.agree(self._s_sk, self.roster.keys[v][1], v)
            key = pair_key(secret, self.ctx.federation, self.ctx.round, self.ctx.region,
                           self.client, v)
            y = add_mod(y, signed_pair_mask(self.client, v, key, n_words))
        self.sent_values = fp.sent(values, self.weight)
        self._input_digest = _digest(values, self.weight)
        msg = MaskedInput(self.client, y)
        self._sent["masked_input"] = msg
        self.stage = "sent"
        return msg

    def _resend_input(self, values: Tensor, num_samples: int) -> MaskedInput:
        weight = self.ctx.params.weight(num_samples)
        if _digest(values, weight) != self._input_digest:
            raise SecAggError("secagg_refused", "a second, different input under the same masks")
        return self._sent["masked_input"]  # type: ignore[return-value]

    # -- stage 3 ------------------------------------------------------------------
    def sign_survivors(self, told: SurvivorSet) -> SurvivorSignature:
        """Sign the survivor set the hub told us, once: a second, different set is refused
        (it is how a hub would give survivors different views of who dropped)."""
        if self._signed is not None:
            if told != self._signed:
                raise SecAggError("secagg_refused", "a second, different survivor set")
            return self._sent["survivors"]  # type: ignore[return-value]
        _stage(self.stage, ("sent",), "sign_survivors")
        assert self.roster is not None
        survivors, dropped = set(told.survivors), set(told.dropped)
        both = survivors & dropped
        if both:
            raise SecAggError("secagg_refused",
                              f"asked for both shares of {sorted(both)[:3]}")
        if survivors | dropped != set(self.members):
            raise SecAggError("secagg_refused", "survivors and dropped do not partition U2")
        if self.client not in survivors:
            raise SecAggError("secagg_refused", "we sent our input but are listed as dropped")
        if len(survivors) < self.roster.threshold:
            raise _too_few("survivors", len(survivors), self.roster.threshold)
        sig = UNSIGNED if self.identity is None else self.identity.sign(
            survivors_statement(self.ctx, told.survivors, told.dropped, self._dealt))
        msg = SurvivorSignature(self.client, sig)
        self._signed = told
        self._sent["survivors"] = msg
        self.stage = "signed"
        return msg

    # -- stage 4 ------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Our shares of b_v for survivors and of s_sk_v for dropped clients, only for the
        survivor set we signed and only once ``t`` survivors' valid signatures show that
        they were told the same set."""
        if self._request is not None:
            if request != self._request:
                raise SecAggError("secagg_refused", "a second, different unmasking request")
            return self._sent["unmask"]  # type: ignore[return-value]
        _stage(self.stage, ("signed",), "unmask")
        assert self.roster is not None and self._signed is not None
        told = SurvivorSet(request.survivors, request.dropped)
        if told != self._signed:
            raise SecAggError("secagg_refused", "unmasking request for another survivor set")
        signers = set(request.signatures)
        if not signers <= set(request.survivors) or self.client not in signers:
            raise SecAggError("secagg_refused", "signers are not survivors, or lack us")
        if len(signers) < self.roster.threshold:
            raise _too_few("survivor signatures", len(signers), self.roster.threshold)
        if self.identity is not None:
            statement = survivors_statement(self.ctx, told.survivors, told.dropped,
                                            self._dealt)
            for v in sorted(signers):
                auth = self.roster.auth[v]  # present: the roster was authenticated
                verify(auth.signing_pk, request.signatures[v], statement,
                       f"survivor set signed by {v}")
        msg = UnmaskResponse(  # none of a dealer whose shares we refused
            self.client,
            b_shares={v: self._held[v][1] for v in told.survivors if v in self._held},
            s_shares={v: self._held[v][0] for v in told.dropped if v in self._held},
        )
        self._request = request
        self._sent["unmask"] = msg
        self.stage = "unmasked"
        return msg


def check_selected(members: Collection[str], selected: frozenset[str], rnd: int) -> None:
    """``secagg_unauthenticated`` naming the first roster member that the round's
    announcement did not select (in sorted order, so the message is reproducible)."""
    strangers = [m for m in members if m not in selected]
    if strangers:
        raise SecAggError("secagg_unauthenticated",
                          f"roster member {strangers[0]} was not announced as selected for "
                          f"round {rnd} ({len(strangers)} such member(s))")


def keep_dealers(checks: Mapping[str, Collection[str]], threshold: int
                 ) -> tuple[tuple[str, ...], dict[str, int]]:
    """The masking set after the share check, and the dealers left out for bad shares.

    ``checks`` maps each member that sent its check to the dealers it refused.  A member
    is kept when at least ``threshold`` kept members (itself included) can use its shares,
    so each kept member's secrets can be reconstructed from kept holders; leaving one out
    can drop another below, so this repeats until nothing changes.  Returns the kept
    members (sorted) and each dealer left out -> how many checkers refused its shares.
    Members that sent no check are neither kept nor named (they dropped out).
    """
    kept = set(checks)
    cheaters: dict[str, int] = {}
    while True:
        short = {u for u in kept
                 if sum(1 for v in kept if u not in checks[v]) < threshold}
        if not short:
            return tuple(sorted(kept)), cheaters
        for u in short:
            cheaters[u] = sum(1 for v in checks if u in checks[v])
        kept -= short


def _digest(values: Tensor, weight: int) -> bytes:
    raw = values.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return hashlib.sha256(raw + weight.to_bytes(8, "big")).digest()


# ============================================================================== hub
@dataclass(frozen=True)
class AggregateResult:
    """What the hub learns: the weighted sum of the survivors' values and their total
    weight; ``words`` is the unmasked sum mod 2^32 (the sum of their encodings)."""

    sums: Tensor  # float64 [length]: sum_u w_u x_u
    weight: int  # sum_u w_u
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]  # sent shares, then no masked vector
    words: Tensor  # int64 [length + 1]

    @property
    def count(self) -> int:
        return len(self.survivors)


class SecAggServer:
    """The hub's side of one round: collects each stage, closes it (at quorum or at the
    stage's deadline, the transport decides), and produces the unmasked sum.

    Memory: one running sum of masked vectors, not one vector per client.

    ``authority``: the provisioning authority's public key, when the hub has it.  Then an
    advertisement enters the roster only signed and with a certificate of that authority
    for its client id and this region (else ``secagg_unauthenticated``), so one device
    with a stale or forged certificate is left out instead of making every member refuse
    the roster and the region lose its round.  Without it only the signature is checked
    (under the key the message itself names) and devices alone check certificates.
    """

    def __init__(self, ctx: RoundContext, authority: bytes | None = None) -> None:
        self.ctx = ctx
        self.authority = authority
        self.stage = "keys"
        self.keys: dict[str, AdvertiseKeys] = {}
        self.roster: Roster | None = None
        self.shares: dict[str, ShareKeys] = {}
        self.delivered: tuple[str, ...] = ()  # who sent shares
        self.dealt = b""  # digest of the Feldman commitments delivered (survivors sign it)
        self.bad_unmask: dict[str, int] = {}  # holder -> shares off their polynomial
        self.checks: dict[str, frozenset[str]] = {}  # checker -> dealers it refused
        self.cheaters: dict[str, int] = {}  # dealer left out -> how many refused it
        self.members: tuple[str, ...] = ()  # U2: the masking set
        self.inputs: dict[str, bytes] = {}  # U3: client -> digest of y (duplicates)
        self.total = torch.zeros(ctx.words, dtype=torch.int64)
        self.survivor_set: SurvivorSet | None = None
        self.signatures: dict[str, bytes] = {}  # U4: survivor -> signature of the set
        self.request: UnmaskRequest | None = None
        self.answers: dict[str, UnmaskResponse] = {}

    @property
    def threshold(self) -> int:
        return self.roster.threshold if self.roster is not None else 0

    @property
    def verifiable(self) -> bool:
        """Whether this round's roster shares verifiably (``SecAggParams.vss``); False
        before the roster is closed."""
        return self.roster is not None and self.ctx.params.vss(len(self.roster.keys))

    def fail(self) -> None:
        """Abandon the round (a transport deadline with too few participants)."""
        self.stage = "failed"

    # -- stage 0 ------------------------------------------------------------------
    def add_keys(self, msg: AdvertiseKeys) -> bool:
        """Record a client's keys; False for an identical resend (at any stage)."""
        old = self.keys.get(msg.client)
        if old is not None:
            if old != msg:
                raise SecAggError("secagg_conflict", f"{msg.client} sent other keys")
            return False
        _stage(self.stage, ("keys",), f"keys from {msg.client}")
        if self.authority is not None:
            if msg.auth is None:
                raise SecAggError("secagg_unauthenticated", f"keys of {msg.client} unsigned")
            check_certificate(self.authority, self.ctx.federation, self.ctx.region,
                              msg.client, msg.auth.signing_pk, msg.auth.certificate)
        for other in self.keys.values():
            if {msg.c_pk, msg.s_pk} & {other.c_pk, other.s_pk}:
                raise SecAggError("secagg_conflict", f"{msg.client} reuses a public key")
        if msg.auth is not None:  # devices check the certificate too; the hub drops garbage
            verify(msg.auth.signing_pk, msg.auth.signature,
                   advertise_statement(self.ctx, msg.client, msg.c_pk, msg.s_pk),
                   f"keys of {msg.client}")
        self.keys[msg.client] = msg
        return True

    def close_keys(self) -> Roster:
        _stage(self.stage, ("keys",), "close_keys")
        n = len(self.keys)
        if n < self.ctx.params.min_clients:
            self.fail()
            raise _too_few("clients with keys", n, self.ctx.params.min_clients)
        self.roster = Roster(self.ctx.params.threshold(n),
                             {c: (m.c_pk, m.s_pk) for c, m in sorted(self.keys.items())},
                             {c: m.auth for c, m in sorted(self.keys.items())
                              if m.auth is not None})
        self.stage = "shares"
        return self.roster

    # -- stage 1 ------------------------------------------------------------------
    def add_shares(self, msg: ShareKeys) -> bool:
        if self.shares.get(msg.client) == msg:
            return False
        _stage(self.stage, ("shares",), f"shares from {msg.client}")
        assert self.roster is not None
        if msg.client not in self.roster.keys:
            raise SecAggError("secagg_refused", f"{msg.client} is not in the roster")
        if set(msg.ciphertexts) != set(self.roster.keys) or set(msg.commitments) != set(
                self.roster.keys):
            raise SecAggError("secagg_bad_message", f"{msg.client}: ciphertexts or "
                              "commitments do not address exactly the roster")
        expected = 2 * self.threshold if self.verifiable else 0
        if len(msg.vss) != expected:
            raise SecAggError("secagg_bad_message", f"{msg.client}: vss has {len(msg.vss)} "
                              f"points, expected {expected}")
        old = self.shares.get(msg.client)
        if old is not None:
            if old != msg:
                raise SecAggError("secagg_conflict", f"{msg.client} sent other shares")
            return False
        vss.check_points(msg.vss, f"vss of {msg.client}")
        self.shares[msg.client] = msg
        return True

    def close_shares(self) -> dict[str, ShareDelivery]:
        """One delivery per client that sent shares; then each checks what it got."""
        _stage(self.stage, ("shares",), "close_shares")
        members = tuple(sorted(self.shares))
        if len(members) < self.threshold:
            self.fail()
            raise _too_few("clients with shares", len(members), self.threshold)
        self.delivered = members
        self.stage = "checks"
        dealt = {u: self.shares[u].vss for u in members} if self.verifiable else {}
        self.dealt = vss.transcript_digest(dealt) if self.verifiable else b""
        return {v: ShareDelivery(v, members, {u: self.shares[u].ciphertexts[v] for u in members},
                                 {u: self.shares[u].commitments[v] for u in members}, dealt)
                for v in members}

    # -- stage 2 ------------------------------------------------------------------
    def add_check(self, msg: ShareCheck) -> bool:
        """A member's share check; False for an identical resend."""
        old = self.checks.get(msg.client)
        if old is not None:
            if old != frozenset(msg.rejected):
                raise SecAggError("secagg_conflict", f"{msg.client} sent another share check")
            return False
        _stage(self.stage, ("checks",), f"share check from {msg.client}")
        if msg.client not in self.delivered:
            raise SecAggError("secagg_refused", f"{msg.client} sent no shares")
        if msg.client in msg.rejected or not set(msg.rejected) <= set(self.delivered):
            raise SecAggError("secagg_bad_message", f"{msg.client}: refuses dealers that did "
                              "not deal it shares")
        self.checks[msg.client] = frozenset(msg.rejected)
        return True

    def close_checks(self) -> dict[str, MaskingSet]:
        """The masking set (``keep_dealers``), one copy for every member that checked (a
        member left out learns it so); ``cheaters`` then names the dealers left out."""
        _stage(self.stage, ("checks",), "close_checks")
        kept, self.cheaters = keep_dealers(self.checks, self.threshold)
        if len(kept) < self.threshold:
            self.fail()
            raise _too_few("members whose shares enough holders can use", len(kept),
                           self.threshold)
        self.members = kept
        self.stage = "inputs"
        told = MaskingSet(kept)
        return {v: told for v in self.checks}

    def add_input(self, msg: MaskedInput) -> bool:
        if tuple(msg.y.shape) != (self.ctx.words,) or msg.y.dtype != torch.int64:
            raise SecAggError("secagg_bad_message", f"{msg.client}: y of wrong shape or dtype")
        digest = hashlib.sha256(msg.y.contiguous().numpy().tobytes()).digest()
        old = self.inputs.get(msg.client)
        if old is not None:
            if old != digest:
                raise SecAggError("secagg_conflict", f"{msg.client} sent another input")
            return False
        _stage(self.stage, ("inputs",), f"masked input from {msg.client}")
        if msg.client not in self.members:
            raise SecAggError("secagg_refused", f"{msg.client} is not in the masking set")
        self.total = add_mod(self.total, msg.y)
        self.inputs[msg.client] = digest
        return True

    def close_inputs(self) -> SurvivorSet:
        _stage(self.stage, ("inputs",), "close_inputs")
        survivors = tuple(sorted(self.inputs))
        if len(survivors) < self.threshold:
            self.fail()
            raise _too_few("masked inputs", len(survivors), self.threshold)
        dropped = tuple(v for v in self.members if v not in self.inputs)
        self.survivor_set = SurvivorSet(survivors, dropped)
        self.stage = "consistency"
        return self.survivor_set

    # -- stage 3 ------------------------------------------------------------------
    def add_signature(self, msg: SurvivorSignature) -> bool:
        """A survivor's signature over the survivor set; a bad one (authenticated round)
        is refused with ``secagg_unauthenticated`` naming the survivor."""
        if self.signatures.get(msg.client) == msg.signature:
            return False
        _stage(self.stage, ("consistency",), f"survivor signature from {msg.client}")
        assert self.survivor_set is not None and self.roster is not None
        if msg.client not in self.survivor_set.survivors:
            raise SecAggError("secagg_refused", f"{msg.client} is not a survivor")
        if msg.client in self.signatures:
            raise SecAggError("secagg_conflict", f"{msg.client} sent another signature")
        auth = self.roster.auth.get(msg.client)
        if auth is not None:
            verify(auth.signing_pk, msg.signature,
                   survivors_statement(self.ctx, self.survivor_set.survivors,
                                       self.survivor_set.dropped, self.dealt),
                   f"survivor set signed by {msg.client}")
        self.signatures[msg.client] = msg.signature
        return True

    def close_consistency(self) -> UnmaskRequest:
        _stage(self.stage, ("consistency",), "close_consistency")
        assert self.survivor_set is not None
        if len(self.signatures) < self.threshold:
            self.fail()
            raise _too_few("survivor signatures", len(self.signatures), self.threshold)
        self.request = UnmaskRequest(self.survivor_set.survivors, self.survivor_set.dropped,
                                     dict(sorted(self.signatures.items())))
        self.stage = "unmask"
        return self.request

    # -- stage 4 ------------------------------------------------------------------
    def add_unmask(self, msg: UnmaskResponse) -> bool:
        if self.answers.get(msg.client) == msg:
            return False
        _stage(self.stage, ("unmask",), f"unmask answer from {msg.client}")
        assert self.request is not None
        if msg.client not in self.request.signatures:
            raise SecAggError("secagg_refused", f"{msg.client} did not sign the survivors")
        refused = self.checks.get(msg.client, frozenset())
        if (set(msg.b_shares) != set(self.request.survivors) - refused
                or set(msg.s_shares) != set(self.request.dropped) - refused):
            raise SecAggError("secagg_bad_message", f"{msg.client}: shares for the wrong ids")
        old = self.answers.get(msg.client)
        if old is not None:
            if old != msg:
                raise SecAggError("secagg_conflict", f"{msg.client} sent other shares")
            return False
        for kind, shares in (("b", msg.b_shares), ("s", msg.s_shares)):
            for v, share in shares.items():
                if not share_crypto.share_matches(self.ctx, v, msg.client, kind, share,
                                                  self.shares[v].commitments[msg.client]):
                    raise SecAggError("secagg_bad_share", f"{msg.client} returned a {kind} "
                                      f"share of {v} that {v} did not deal it; answer dropped")
        self.answers[msg.client] = msg
        return True

    @property
    def can_finish(self) -> bool:
        """At least ``t`` answers hold a share of every secret to reconstruct."""
        return self.stage == "unmask" and self._short() is None

    def _short(self) -> tuple[str, int] | None:
        """The first secret (``"b of v"``/``"s_sk of v"``) with fewer than ``t`` shares
        among the answers, and how many it has; None when none is short."""
        assert self.request is not None
        n = len(self.answers)
        if n < self.threshold:
            return ("every secret", n)
        # only a dealer some answering holder refused can have fewer than n shares
        refused = set().union(*(self.checks.get(c, frozenset()) for c in self.answers))
        for kind, ids in (("b", self.request.survivors), ("s_sk", self.request.dropped)):
            for v in sorted(refused.intersection(ids)):
                have = sum(1 for c in self.answers if v not in self.checks.get(c, ()))
                if have < self.threshold:
                    return (f"{kind} of {v}", have)
        return None

    def _reconstruct(self, kind: str, v: str) -> bytes:
        """``v``'s secret of ``kind`` ("b" or "s") from the answers' shares, checked against
        its Feldman commitment ``C_0`` (``vss.opens``).  Why check again after the holders
        did: a holder colluding with ``v`` could have accepted a share off the polynomial
        and return it now (the SHA-256 commitment only proves ``v`` dealt it).  When the
        check fails, each share is checked, the bad ones are left out (their holders
        counted in ``bad_unmask``) and the secret is rebuilt from the rest."""
        assert self.roster is not None
        t = self.threshold
        shares = {self.roster.index(c): (a.b_shares if kind == "b" else a.s_shares)[v]
                  for c, a in self.answers.items()
                  if v in (a.b_shares if kind == "b" else a.s_shares)}
        secret = combine_shares(shares, t)
        if not self.verifiable:
            return secret  # checked only against the advertised s_pk (s) or not at all (b)
        points = self.shares[v].vss[:t] if kind == "s" else self.shares[v].vss[t:]
        if vss.opens(points, secret):
            return secret
        members = self.roster.members
        for x in vss.bad_shares(points, shares):
            del shares[x]
            self.bad_unmask[members[x - 1]] = self.bad_unmask.get(members[x - 1], 0) + 1
        if len(shares) < t:
            self.fail()
            raise _too_few(f"shares of {kind} of {v} on its committed polynomial",
                           len(shares), t)
        return combine_shares(shares, t)

    def finish(self) -> AggregateResult:
        """Reconstruct, remove the masks, decode.  ``secagg_too_few`` with fewer than ``t``
        answers; ``secagg_reconstruct`` if the secrets do not fit what was advertised."""
        _stage(self.stage, ("unmask",), "finish")
        assert self.roster is not None and self.request is not None
        t = self.threshold
        short = self._short()
        if short is not None:
            self.fail()
            raise _too_few(f"unmasking answers with a share of {short[0]}", short[1], t)
        ctx, n_words = self.ctx, self.ctx.words
        z = self.total.clone()
        for v in self.request.survivors:
            seed = self._reconstruct("b", v)
            z = sub_mod(z, prg_words(self_key(seed, ctx.federation, ctx.round, ctx.region, v),
                                     n_words))
        for v in self.request.dropped:
            s_sk = share_crypto.mask_private_key(ctx, v, self._reconstruct("s", v))
            if share_crypto.public_bytes(s_sk) != self.roster.keys[v][1]:
                self.fail()
                raise SecAggError("secagg_reconstruct", f"s_sk of {v} does not match s_pk")
            for u in self.request.survivors:
                secret = share_crypto.agree(s_sk, self.roster.keys[u][1], u)
                key = pair_key(secret, ctx.federation, ctx.round, ctx.region, u, v)
                z = sub_mod(z, signed_pair_mask(u, v, key, n_words))
        fp = ctx.params.fixed_point(len(self.roster.keys))
        try:
            sums, weight = fp.decode_sum(z, len(self.request.survivors))
        except ValueError as err:
            self.fail()
            raise SecAggError("secagg_out_of_range", str(err)) from None
        self.stage = "done"
        return AggregateResult(sums, weight, self.request.survivors, self.request.dropped, z)
