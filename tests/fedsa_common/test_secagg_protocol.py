"""The secure-aggregation state machines end to end, in memory: the unmasked sum is the
plain weighted sum (and exactly the sum of the fixed-point encodings) with up to a third of
the roster dropping out, the round fails below the threshold, clients refuse requests that
would unmask someone, and tampered share ciphertexts are rejected."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import pytest
import torch

from fedsa_common.privacy.secagg import (
    RoundContext,
    SecAggClient,
    SecAggError,
    SecAggParams,
    SecAggServer,
    share_crypto,
    vss,
)
from fedsa_common.privacy.secagg import params as params_module
from fedsa_common.privacy.secagg.fixed_point import MOD, add_mod
from fedsa_common.privacy.secagg.identity import Authority, verify
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
from fedsa_common.privacy.secagg.params import MIN_ROSTER
from fedsa_common.privacy.secagg.protocol import keep_dealers
from fedsa_common.privacy.secagg.shamir import deal
from hub.aggregation import RunningSum
from tests.support.secagg import deal_off_polynomial, deliver_and_check

LENGTH = 40
AUTHORITY = Authority.generate()


@dataclass
class Round:
    """A region's round played in memory; ``inputs`` are (values, num_samples)."""

    n: int
    seed: int = 0
    params: SecAggParams = field(default_factory=SecAggParams)
    signed: bool = True  # devices with provisioned identities (else unauthenticated mode)
    ctx: RoundContext = field(init=False)
    clients: dict[str, SecAggClient] = field(init=False)
    server: SecAggServer = field(init=False)
    inputs: dict[str, tuple[torch.Tensor, int]] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.ctx = RoundContext("fed", 7, "r1", LENGTH, self.params)
        names = [f"dev{i:02d}" for i in range(self.n)]
        self.clients = {
            c: SecAggClient(self.ctx, c, rng.randbytes,
                            AUTHORITY.issue("fed", "r1", c) if self.signed else None,
                            selected=names)
            for c in names}
        self.server = SecAggServer(self.ctx)
        g = torch.Generator().manual_seed(self.seed)
        self.inputs = {c: (torch.rand(LENGTH, generator=g) * 2.4 - 1.2, rng.randint(1, 500))
                       for c in names}

    def keys(self, absent: set[str] = frozenset()) -> Roster:
        for c, client in self.clients.items():
            if c not in absent:
                self.server.add_keys(client.advertise())
        return self.server.close_keys()

    def shares(self, roster: Roster, absent: set[str] = frozenset()) -> None:
        for c in roster.members:
            if c not in absent:
                self.server.add_shares(self.clients[c].share_keys(roster))
        deliver_and_check(self.server, self.clients)

    def masked(self, absent: set[str] = frozenset()) -> SurvivorSet:
        for c in self.server.members:
            if c not in absent:
                values, samples = self.inputs[c]
                self.server.add_input(self.clients[c].masked_input(values, samples))
        return self.server.close_inputs()

    def consistency(self, told: SurvivorSet, absent: set[str] = frozenset()) -> UnmaskRequest:
        for c in told.survivors:
            if c not in absent:
                self.server.add_signature(self.clients[c].sign_survivors(told))
        return self.server.close_consistency()

    def unmask(self, told: SurvivorSet, absent: set[str] = frozenset()):
        request = self.consistency(told)
        for c in request.survivors:
            if c not in absent:
                self.server.add_unmask(self.clients[c].unmask(request))
        return self.server.finish()

    def play(self, before_shares=frozenset(), after_shares=frozenset(), no_unmask=frozenset()):
        roster = self.keys()
        self.shares(roster, before_shares)
        return self.unmask(self.masked(after_shares), no_unmask)


@pytest.mark.parametrize("seed", range(8))
def test_unmasked_sum_equals_plain_sum_with_a_third_dropping(seed):
    rng = random.Random(1000 + seed)
    n = rng.randint(4, 12)
    verifiable = seed < 4  # both settings of verifiable_shares, signed and unsigned
    r = Round(n, seed, SecAggParams(verifiable_shares=verifiable), signed=seed % 2 == 0)
    names = sorted(r.clients)
    dropouts = rng.sample(names, n // 3)
    split = rng.randint(0, len(dropouts))
    before, after = set(dropouts[:split]), set(dropouts[split:])
    result = r.play(before_shares=before, after_shares=after)

    survivors = [c for c in names if c not in before | after]
    assert list(result.survivors) == survivors
    assert set(result.dropped) == after
    fp = r.params.fixed_point(n)
    expected_words = torch.zeros(LENGTH + 1, dtype=torch.int64)
    plain = RunningSum.zeros({"x": (LENGTH,)})
    for c in survivors:
        values, samples = r.inputs[c]
        expected_words = add_mod(expected_words, fp.encode(values, samples))
        plain.add({"x": values.clamp(-1, 1)}, float(samples))
    assert torch.equal(result.words, expected_words)  # exactly the sum of the encodings
    assert result.weight == plain.weight
    bound = len(survivors) / 2 ** (fp.frac_bits + 1)
    assert float((result.sums - plain.sums["x"]).abs().max()) <= bound + 1e-9
    # and the survivors' own view of what they sent adds up to the same sum
    sent = sum(r.clients[c].sent_values * r.clients[c].weight for c in survivors)
    assert torch.allclose(result.sums, sent, atol=1e-9)
    assert r.server.verifiable is verifiable
    assert all(bool(m.vss) is verifiable for m in r.server.shares.values())


def test_survivors_that_miss_unmasking_are_not_needed():
    r = Round(9, seed=3)
    names = sorted(r.clients)
    result = r.play(after_shares={names[0]}, no_unmask={names[1], names[2]})  # t = 6 of 8
    assert result.count == 8
    assert names[1] in result.survivors  # its input counts; its answer was not needed


def test_wrong_input_is_not_the_unmasked_sum():
    """Control: a survivor whose input changes between rounds changes the sum, so the
    equality above is not vacuous."""
    r1, r2 = Round(4, seed=9), Round(4, seed=9)
    r2.inputs["dev00"] = (r2.inputs["dev00"][0] + 0.01, r2.inputs["dev00"][1])
    assert not torch.equal(r1.play().words, r2.play().words)


# ------------------------------------------------------------------ too few


def test_fewer_than_threshold_masked_inputs_fails_the_round():
    r = Round(6, seed=1)  # t = 4
    roster = r.keys()
    r.shares(roster)
    with pytest.raises(SecAggError) as err:
        r.masked(absent={"dev00", "dev01", "dev02"})
    assert err.value.reason == "secagg_too_few"
    assert r.server.stage == "failed"
    with pytest.raises(SecAggError, match="secagg_state"):
        r.server.finish()


def test_fewer_than_threshold_unmask_answers_fails():
    r = Round(6, seed=2)
    r.shares(r.keys())
    request = r.masked()
    with pytest.raises(SecAggError, match="secagg_too_few"):
        r.unmask(request, absent={"dev00", "dev01", "dev02"})


def test_too_small_roster_or_too_few_shares_fails():
    r = Round(4, seed=4)
    with pytest.raises(SecAggError, match="secagg_too_few"):
        r.keys(absent={"dev00"})  # 3 < min_clients 4
    r = Round(4, seed=4)  # t = 3
    with pytest.raises(SecAggError, match="secagg_too_few"):
        r.shares(r.keys(), absent={"dev00", "dev01"})


# ------------------------------------------------------------------ refusals


def _ready_round(n: int = 6, seed: int = 5) -> tuple[Round, SurvivorSet]:
    r = Round(n, seed)
    r.shares(r.keys())
    return r, r.masked(absent={"dev05"})


def test_client_refuses_both_shares_of_the_same_client():
    r, told = _ready_round()
    client = r.clients["dev00"]
    greedy = SurvivorSet(told.survivors, tuple(sorted({"dev05", "dev01"})))
    with pytest.raises(SecAggError) as err:
        client.sign_survivors(greedy)  # dev01 is a survivor and listed as dropped
    assert err.value.reason == "secagg_refused"
    request = r.consistency(told)
    answer = client.unmask(request)
    assert set(answer.b_shares) == set(told.survivors)
    assert set(answer.s_shares) == {"dev05"}
    assert client.unmask(request) == answer  # a resend of the same request
    later = SurvivorSet(tuple(s for s in told.survivors if s != "dev01"), ("dev01", "dev05"))
    with pytest.raises(SecAggError, match="secagg_refused"):
        client.sign_survivors(later)  # would reveal dev01's s_sk after its b was revealed
    with pytest.raises(SecAggError, match="secagg_refused"):
        client.unmask(UnmaskRequest(later.survivors, later.dropped, request.signatures))


def test_client_refuses_being_listed_dropped_or_a_partial_partition():
    r, told = _ready_round()
    listed_dropped = SurvivorSet(tuple(s for s in told.survivors if s != "dev00"),
                                 ("dev00", "dev05"))
    with pytest.raises(SecAggError, match="secagg_refused"):
        r.clients["dev00"].sign_survivors(listed_dropped)
    missing = SurvivorSet(told.survivors, ())
    with pytest.raises(SecAggError, match="secagg_refused"):
        r.clients["dev00"].sign_survivors(missing)


def test_client_never_masks_two_different_inputs():
    r = Round(4, seed=6)
    r.shares(r.keys())
    client = r.clients["dev00"]
    values, samples = r.inputs["dev00"]
    first = client.masked_input(values, samples)
    assert client.masked_input(values.clone(), samples) == first  # resend
    with pytest.raises(SecAggError, match="secagg_refused"):
        client.masked_input(values + 1e-3, samples)


def test_client_checks_the_roster():
    r = Round(4, seed=7)
    roster = r.keys()
    forged = Roster(roster.threshold - 1, roster.keys)  # a lower threshold helps the hub
    with pytest.raises(SecAggError, match="secagg_refused"):
        r.clients["dev00"].share_keys(forged)
    swapped = dict(roster.keys)
    swapped["dev00"] = roster.keys["dev01"]
    with pytest.raises(SecAggError, match="secagg_refused"):
        r.clients["dev00"].share_keys(Roster(roster.threshold, swapped))


# ------------------------------------------------------------------ tampered shares


def _deliveries(n: int = 4, seed: int = 8, verifiable: bool = True
                ) -> tuple[Round, dict[str, ShareDelivery]]:
    r = Round(n, seed, SecAggParams(verifiable_shares=verifiable))
    roster = r.keys()
    for c in roster.members:
        r.server.add_shares(r.clients[c].share_keys(roster))
    return r, r.server.close_shares()


@pytest.mark.parametrize("verifiable", [True, False])
@pytest.mark.parametrize("how", ["flip", "garbage", "swap", "short"])
def test_tampered_share_ciphertexts_are_refused_in_the_share_check(how, verifiable):
    r, deliveries = _deliveries(verifiable=verifiable)
    d = deliveries["dev02"]
    cts = dict(d.ciphertexts)
    if how == "flip":
        ct = bytearray(cts["dev00"])
        ct[30] ^= 0x01
        cts["dev00"] = bytes(ct)
    elif how == "garbage":
        cts["dev00"] = random.Random(1).randbytes(len(cts["dev00"]))
    elif how == "swap":  # dev01's ciphertext presented as dev00's (AAD names the sender)
        cts["dev00"], cts["dev01"] = cts["dev01"], cts["dev00"]
    else:
        cts["dev00"] = cts["dev00"][:-1]
    client = r.clients["dev02"]
    check = client.receive_shares(ShareDelivery("dev02", d.members, cts, d.commitments,
                                                   d.vss))
    refused = ("dev00", "dev01") if how == "swap" else ("dev00",)
    assert check.client == "dev02" and check.rejected == refused
    assert all("secagg_bad_share" in client.rejected[u] for u in refused)
    assert client.receive_shares(d) == check  # the answer to a resend does not change


@pytest.mark.parametrize("verifiable", [True, False])
def test_share_for_another_recipient_is_rejected(verifiable):
    r, deliveries = _deliveries(verifiable=verifiable)
    other = deliveries["dev03"]  # dev03's ciphertexts handed to dev02
    with pytest.raises(SecAggError, match="secagg_bad_share"):
        r.clients["dev02"].receive_shares(ShareDelivery("dev02", other.members,
                                                        other.ciphertexts, {},
                                                        other.vss))


def test_a_garbage_share_identifies_its_sender_and_the_round_goes_on():
    """Finding 4: on 4a146b2 one garbage Shamir share at unmasking lost the region's
    round and the hub could not tell who sent it.  Now each share is checked against its
    dealer's commitment: the cheater is named, its answer dropped, and the others (at
    least t) unmask the sum."""
    r, told = _ready_round()  # 5 survivors, t = 4
    request = r.consistency(told)
    answers = {c: r.clients[c].unmask(request) for c in request.survivors}
    bad = UnmaskResponse("dev00", answers["dev00"].b_shares,
                         {v: bytes(32) for v in answers["dev00"].s_shares})
    with pytest.raises(SecAggError) as err:
        r.server.add_unmask(bad)
    assert err.value.reason == "secagg_bad_share" and "dev00" in str(err.value)
    flipped = dict(answers["dev01"].b_shares)
    flipped["dev02"] = bytes([flipped["dev02"][0] ^ 1]) + flipped["dev02"][1:]
    with pytest.raises(SecAggError, match="dev01"):
        r.server.add_unmask(UnmaskResponse("dev01", flipped, answers["dev01"].s_shares))
    for c in ("dev02", "dev03", "dev04"):
        r.server.add_unmask(answers[c])
    assert not r.server.can_finish  # 3 good answers < t
    r.server.add_unmask(answers["dev01"])  # its honest answer still counts
    result = r.server.finish()
    fp = r.params.fixed_point(6)
    expected = torch.zeros(LENGTH + 1, dtype=torch.int64)
    for c in told.survivors:
        expected = add_mod(expected, fp.encode(*r.inputs[c]))
    assert torch.equal(result.words, expected)


def test_a_delivery_with_altered_commitments_refuses_that_dealer():
    r, deliveries = _deliveries()
    d = deliveries["dev02"]
    commitments = dict(d.commitments)
    commitments["dev01"] = bytes(64)
    check = r.clients["dev02"].receive_shares(ShareDelivery("dev02", d.members,
                                                            d.ciphertexts, commitments,
                                                            d.vss))
    assert check.rejected == ("dev01",)
    # our own share altered is the hub's doing: then we sit the round out
    with pytest.raises(SecAggError, match="secagg_bad_share"):
        r.clients["dev03"].receive_shares(ShareDelivery(
            "dev03", d.members, deliveries["dev03"].ciphertexts,
            {**deliveries["dev03"].commitments, "dev03": bytes(64)}, d.vss))


def _deal_garbage(r: Round, roster: Roster, dealer: str, victims: set[str]) -> None:
    """Every client shares; ``dealer`` sends ``victims`` garbage ciphertexts (its own
    commitments, so only the ciphertexts are wrong)."""
    junk = random.Random(dealer)
    for c in roster.members:
        msg = r.clients[c].share_keys(roster)
        if c == dealer:
            msg = ShareKeys(c, {v: junk.randbytes(len(ct)) if v in victims else ct
                                for v, ct in msg.ciphertexts.items()}, msg.commitments,
                           msg.vss)
        r.server.add_shares(msg)


def _encodings(r: Round, clients: tuple[str, ...], n: int) -> torch.Tensor:
    fp = r.params.fixed_point(n)
    expected = torch.zeros(LENGTH + 1, dtype=torch.int64)
    for c in clients:
        expected = add_mod(expected, fp.encode(*r.inputs[c]))
    return expected


def test_a_dealer_of_garbage_shares_is_named_and_left_out_and_the_round_goes_on():
    """Finding 4 ("one garbage Shamir share loses the region's round and the hub cannot
    tell who cheated"), from the dealer's side: a device that sends every other member
    garbage made each of them sit the round out (``receive_shares`` raised), so the
    region's round failed.  Now each member reports the dealer in its share check, the
    hub names it and leaves it out of the masking set, and the others' sum unmasks."""
    r = Round(6, seed=11)  # t = 4
    roster = r.keys()
    _deal_garbage(r, roster, "dev00", set(roster.members) - {"dev00"})
    deliver_and_check(r.server, r.clients)
    assert r.server.cheaters == {"dev00": 5}
    assert r.server.members == ("dev01", "dev02", "dev03", "dev04", "dev05")
    with pytest.raises(SecAggError, match="secagg_excluded"):
        r.clients["dev00"].mask_with(MaskingSet(r.server.members))
    with pytest.raises(SecAggError, match="secagg_state"):  # it cannot mask any more
        r.clients["dev00"].masked_input(*r.inputs["dev00"])
    with pytest.raises(SecAggError, match="not in the masking set"):  # nor slip one in
        r.server.add_input(MaskedInput("dev00", torch.zeros(LENGTH + 1, dtype=torch.int64)))
    told = r.masked(absent={"dev00"})
    assert told == SurvivorSet(r.server.members, ())
    result = r.unmask(told)
    assert torch.equal(result.words, _encodings(r, told.survivors, 6))


def test_garbage_to_a_few_holders_keeps_the_dealer_and_they_return_none_of_its_shares():
    """A dealer that fewer than ``n - t + 1`` holders refuse stays in; those holders
    return no share of it, and its secrets come from the others: here it drops after
    masking started, so its pairwise masks are removed with the others' s shares."""
    r = Round(6, seed=12)  # t = 4: two refusals leave 4 holders (dev00 itself counts)
    roster = r.keys()
    _deal_garbage(r, roster, "dev00", {"dev01", "dev02"})
    deliver_and_check(r.server, r.clients)
    assert r.server.cheaters == {} and "dev00" in r.server.members
    assert r.server.checks["dev01"] == {"dev00"}
    told = r.masked(absent={"dev00"})
    assert told.dropped == ("dev00",)
    request = r.consistency(told)
    answers = {c: r.clients[c].unmask(request) for c in request.survivors}
    assert "dev00" not in answers["dev01"].s_shares
    with pytest.raises(SecAggError, match="shares for the wrong ids"):  # hiding one more
        r.server.add_unmask(UnmaskResponse("dev03", answers["dev03"].b_shares, {}))
    for c in ("dev01", "dev02", "dev03", "dev04"):
        r.server.add_unmask(answers[c])
    assert not r.server.can_finish  # only dev03, dev04 hold a share of dev00's s_sk
    with pytest.raises(SecAggError, match="s_sk of dev00"):
        SecAggServer.finish(copy.deepcopy(r.server))
    r.server.add_unmask(answers["dev05"])
    assert not r.server.can_finish  # 3 shares of dev00's s_sk < t
    r2 = Round(6, seed=12)  # the same round where dev00 misses unmasking, not masking
    roster = r2.keys()
    _deal_garbage(r2, roster, "dev00", {"dev01", "dev02"})
    deliver_and_check(r2.server, r2.clients)
    result = r2.unmask(r2.masked())
    assert torch.equal(result.words, _encodings(r2, result.survivors, 6))


def _deal_off_polynomial(r: Round, roster: Roster, dealer: str, victims: set[str]) -> None:
    """Every client shares; ``dealer`` gives ``victims`` b shares off its committed
    polynomial that still authenticate and match their SHA-256 commitments (the hole VSS
    closes: the shares lie on no one polynomial of degree t - 1)."""
    sent = {c: r.clients[c].share_keys(roster) for c in roster.members}
    for c, msg in sent.items():
        r.server.add_shares(deal_off_polynomial(r.clients[c], msg, victims)
                            if c == dealer else msg)


def test_a_dealer_whose_shares_authenticate_but_lie_on_no_polynomial_is_left_out():
    """The documented hole before VSS: shares that decrypt and match their SHA-256
    commitments but are not one polynomial made different t-subsets reconstruct different
    seeds, and the round was lost.  Now each holder checks its share against the dealer's
    Feldman commitments, names it in the share check, and the hub leaves it out."""
    r = Round(6, seed=13)  # t = 4: three refusals leave dev00 three usable holders
    roster = r.keys()
    _deal_off_polynomial(r, roster, "dev00", {"dev03", "dev04", "dev05"})
    deliver_and_check(r.server, r.clients)
    assert "not on the polynomials it committed to" in r.clients["dev03"].rejected["dev00"]
    assert r.clients["dev01"].rejected == {}  # its share was honest
    assert r.server.cheaters == {"dev00": 3}
    assert r.server.members == ("dev01", "dev02", "dev03", "dev04", "dev05")
    told = r.masked(absent={"dev00"})
    result = r.unmask(told)
    assert torch.equal(result.words, _encodings(r, told.survivors, 6))


def test_without_vss_a_round_is_the_pre_vss_protocol():
    """``verifiable_shares: false``: no Feldman commitments in any message (the field is
    left out of the JSON), survivors sign the pre-VSS statement, and commitments sent
    anyway are refused by the hub and by a holder."""
    r = Round(5, seed=17, params=SecAggParams(verifiable_shares=False))  # t = 4
    roster = r.keys()
    msg = r.clients["dev01"].share_keys(roster)
    assert msg.vss == () and "vss" not in msg.to_dict()
    with pytest.raises(SecAggError, match="vss has 8 points, expected 0"):
        r.server.add_shares(ShareKeys("dev01", msg.ciphertexts, msg.commitments,
                                      (vss.commit([1, 2, 3, 4]) * 2)))
    for c in roster.members:
        r.server.add_shares(r.clients[c].share_keys(roster))
    deliveries = r.server.close_shares()
    d = deliveries["dev02"]
    assert d.vss == {} and "vss" not in d.to_dict() and r.server.dealt == b""
    with pytest.raises(SecAggError, match="a round without vss"):
        r.clients["dev02"].receive_shares(ShareDelivery(
            "dev02", d.members, d.ciphertexts, d.commitments,
            {u: vss.commit([1, 2, 3, 4]) * 2 for u in d.members}))
    for v, delivery in deliveries.items():
        r.server.add_check(r.clients[v].receive_shares(delivery))
    for v, masking in r.server.close_checks().items():
        r.clients[v].mask_with(masking)
    told = r.masked(absent={"dev04"})
    signed = r.clients["dev00"].sign_survivors(told)
    pre_vss = r.ctx.info("survivors", ",".join(told.survivors), ",".join(told.dropped))
    verify(r.clients["dev00"].identity.public, signed.signature, pre_vss, "pre-VSS statement")
    result = r.unmask(told)
    assert torch.equal(result.words, _encodings(r, told.survivors, 5))


def test_without_vss_an_off_polynomial_dealer_is_not_caught_and_the_round_fails():
    """What ``verifiable_shares: false`` gives up (docs/security.md): shares that
    authenticate and match their SHA-256 commitments but lie on no one polynomial pass
    the share check, and the hub's unmasking fails instead of leaving the dealer out."""
    r = Round(6, seed=13, params=SecAggParams(verifiable_shares=False))  # t = 4
    roster = r.keys()
    _deal_off_polynomial(r, roster, "dev00", {"dev01", "dev02", "dev03"})
    deliver_and_check(r.server, r.clients)
    assert all(c.rejected == {} for c in r.clients.values()) and r.server.cheaters == {}
    told = r.masked()
    with pytest.raises(SecAggError) as err:
        r.unmask(told)
    assert err.value.reason == "secagg_out_of_range"


def test_a_roster_above_the_vss_bound_shares_without_vss(monkeypatch):
    """Hub and devices derive from the roster's size alone whether it shares verifiably
    (``SecAggParams.vss``); the bound is lowered here so that a round stays cheap."""
    monkeypatch.setattr(params_module, "VSS_MAX_ROSTER", 4)
    assert SecAggParams().vss(4) and not SecAggParams().vss(5)
    assert not SecAggParams(verifiable_shares=False).vss(4)
    r = Round(5, seed=18)
    result = r.play(after_shares={"dev03"})
    assert not r.server.verifiable and r.server.dealt == b""
    assert all(m.vss == () for m in r.server.shares.values())
    assert torch.equal(result.words, _encodings(r, result.survivors, 5))
    small = Round(4, seed=18)
    small.play()
    assert small.server.verifiable and all(m.vss for m in small.server.shares.values())


def test_the_hub_refuses_commitments_that_are_not_group_points_by_name():
    r = Round(5, seed=16)  # t = 4
    roster = r.keys()
    msg = r.clients["dev01"].share_keys(roster)
    low_order = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
    for points, match in (((*msg.vss[:2], low_order, *msg.vss[3:]),
                           r"vss of dev01\[2\] is not a point of the prime-order group"),
                          (msg.vss[:-1], "vss has 7 points, expected 8")):
        with pytest.raises(SecAggError, match=match) as err:
            r.server.add_shares(ShareKeys("dev01", msg.ciphertexts, msg.commitments, points))
        assert err.value.reason == "secagg_bad_message"
    assert r.server.add_shares(msg)  # the honest message still goes in


def test_a_holder_colluding_with_a_bad_dealer_cannot_spoil_the_unmasking():
    """A holder that accepts an off-polynomial share (and returns it at unmasking: its
    SHA-256 commitment matches) is caught by the hub's check against the dealer's Feldman
    commitments; the share is left out and the secret comes from the others.  dev01 holds
    x = 2, so without the check its share would be among the t used."""
    r = Round(6, seed=14)  # t = 4
    roster = r.keys()
    _deal_off_polynomial(r, roster, "dev00", {"dev01"})
    for v, delivery in r.server.close_shares().items():
        check = r.clients[v].receive_shares(delivery)
        if v == "dev01":  # the accomplice keeps the bad share and refuses nobody
            assert check.rejected == ("dev00",)
            accomplice = r.clients[v]
            pt = share_crypto.decrypt_shares(r.ctx, accomplice._c_sk, roster.keys["dev00"][0],
                                             "dev00", v, delivery.ciphertexts["dev00"])
            accomplice._held["dev00"] = (pt[:32], pt[32:])
            accomplice.rejected = {}
            accomplice._sent["share_check"] = check = ShareCheck(v, ())
        r.server.add_check(check)
    for v, masking in r.server.close_checks().items():
        r.clients[v].mask_with(masking)
    told = r.masked(absent={"dev05"})
    result = r.unmask(told)
    assert r.server.bad_unmask == {"dev01": 1}  # its b share of dev00, left out
    assert torch.equal(result.words, _encodings(r, told.survivors, 6))


def test_a_hub_that_shows_holders_different_commitments_is_caught_before_unmasking():
    """The hub relays the commitments, so it could show one holder a dealer's other
    polynomial (here the dealer colludes: dev02 gets a share of that polynomial, so it
    accepts).  Survivors sign the digest of the commitments they saw, so dev02's
    signature does not verify for the others, and dev02 refuses the others' signatures."""
    r, deliveries = _deliveries(n=6, seed=15)  # t = 4
    roster = r.server.roster
    assert roster is not None
    dealer = r.clients["dev00"]
    twin = deal(dealer._seed, 4, 6, random.Random(1).randbytes)
    other = dealer._vss[:4] + vss.commit(twin.coefficients)
    d = deliveries["dev02"]
    plain = r.clients["dev02"]._open_share(d, "dev00")[:32] + twin.shares[2]
    c_pk = roster.keys["dev02"][0]
    ct = share_crypto.encrypt_shares(r.ctx, dealer._c_sk, c_pk, "dev00", "dev02", plain,
                                     random.Random(2).randbytes)
    commitment = share_crypto.commit_shares(r.ctx, "dev00", "dev02", plain)
    forged = ShareDelivery("dev02", d.members, {**d.ciphertexts, "dev00": ct},
                           {**d.commitments, "dev00": commitment}, {**d.vss, "dev00": other})
    for v, delivery in deliveries.items():
        check = r.clients[v].receive_shares(forged if v == "dev02" else delivery)
        assert check.rejected == ()  # every holder accepts what it was shown
        r.server.add_check(check)
    for v, masking in r.server.close_checks().items():
        r.clients[v].mask_with(masking)
    told = r.masked()
    signed = r.clients["dev02"].sign_survivors(told)
    with pytest.raises(SecAggError, match="survivor set signed by dev02") as err:
        r.server.add_signature(signed)
    assert err.value.reason == "secagg_unauthenticated"
    request = r.consistency(told, absent={"dev02"})
    request = UnmaskRequest(request.survivors, request.dropped,  # as a hub would pass it on
                            {**request.signatures, "dev02": signed.signature})
    with pytest.raises(SecAggError, match="secagg_unauthenticated"):
        r.clients["dev02"].unmask(request)  # the others signed commitments it never saw


@pytest.mark.parametrize(("refusals", "kept"), [(2, True), (3, False)])
def test_leaving_an_honest_dealer_out_takes_as_many_liars_as_failing_the_round(refusals,
                                                                               kept):
    """n = 6, t = 4: ``n - t + 1 = 3`` devices that go silent fail the round; the same
    number of false refusals is what it takes to leave an honest dealer out."""
    names = [f"d{i}" for i in range(6)]
    checks = {v: {"d0"} if 1 <= i <= refusals else set() for i, v in enumerate(names)}
    members, cheaters = keep_dealers(checks, 4)
    assert ("d0" in members) is kept
    assert cheaters == ({} if kept else {"d0": refusals})


def test_keep_dealers_repeats_until_every_kept_dealer_has_enough_kept_holders():
    # d4's shares: only d0, d1, d4 hold them (3 < 4). Leaving d4 out drops d5 to 3 holders.
    checks = {"d0": {"d5"}, "d1": {"d5"}, "d2": {"d4"}, "d3": {"d4"}, "d4": set(),
              "d5": {"d4"}}
    members, cheaters = keep_dealers(checks, 4)
    assert members == ("d0", "d1", "d2", "d3") and cheaters == {"d4": 3, "d5": 2}
    assert keep_dealers({"a": set(), "b": set()}, 4) == ((), {"a": 0, "b": 0})


# ------------------------------------------------------------------ messages


def test_messages_round_trip_and_refuse_garbage():
    r, deliveries = _deliveries()
    client = r.clients["dev00"]
    msgs = [client.advertise(), r.server.roster, r.server.shares["dev00"], deliveries["dev00"],
            SurvivorSet(("dev00", "dev01"), ("dev02",)),
            SurvivorSignature("dev00", bytes(range(64))),
            UnmaskRequest(("dev00", "dev01"), ("dev02",), {"dev00": bytes(64)}),
            ShareCheck("dev00", ("dev01", "dev03")), MaskingSet(("dev00", "dev01"))]
    for msg in msgs:
        assert type(msg).from_dict(msg.to_dict()) == msg
    y = torch.randint(0, MOD, (LENGTH + 1,), dtype=torch.int64)
    assert torch.equal(MaskedInput.from_dict({"client": "a", "y": y}, LENGTH + 1).y, y)
    bad = [
        (AdvertiseKeys.from_dict, {"client": "a", "c_pk": b"x", "s_pk": bytes(32)}),
        (AdvertiseKeys.from_dict, {"client": "a/b", "c_pk": bytes(32), "s_pk": bytes(32)}),
        (AdvertiseKeys.from_dict, {"client": "a", "c_pk": bytes(32), "s_pk": bytes(32), "x": 1}),
        (Roster.from_dict, {"threshold": True, "keys": {}, "auth": {}}),
        (Roster.from_dict, {"threshold": 1, "keys": {}, "auth": {"a": [bytes(32)] * 3}}),
        (SurvivorSignature.from_dict, {"client": "a", "signature": bytes(63)}),
        (ShareKeys.from_dict, {"client": "a", "ciphertexts": {"b": b"short"}}),
        (UnmaskRequest.from_dict, {"survivors": ["b", "a"], "dropped": [], "signatures": {}}),
        (UnmaskResponse.from_dict, {"client": "a", "b_shares": [], "s_shares": {}}),
        (lambda d: MaskedInput.from_dict(d, LENGTH + 1), {"client": "a", "y": y.float()}),
        (lambda d: MaskedInput.from_dict(d, LENGTH + 1), {"client": "a", "y": y + MOD}),
        (AdvertiseKeys.from_dict, ["not", "a", "dict"]),
        (ShareCheck.from_dict, {"client": "a", "rejected": ["c", "b"]}),
        (MaskingSet.from_dict, {"members": "a"}),
    ]
    for parse, raw in bad:
        with pytest.raises(SecAggError, match="secagg_bad_message"):
            parse(raw)


def test_server_refuses_conflicting_resends():
    r = Round(4, seed=10)
    client = r.clients["dev00"]
    assert r.server.add_keys(client.advertise())
    assert not r.server.add_keys(client.advertise())  # identical resend is harmless
    impostor = SecAggClient(r.ctx, "dev00", random.Random(99).randbytes)
    with pytest.raises(SecAggError, match="secagg_conflict"):
        r.server.add_keys(impostor.advertise())


# ------------------------------------------------------------------ malicious hub (issue 15)


def _hub_made(r: Round, victim: str, how: str) -> Roster:
    """A roster a malicious hub builds for ``victim``: the victim's real entry, and for
    every other member an entry the hub can produce without the devices' signing keys."""
    real = r.keys()
    keys, auth = dict(real.keys), dict(real.auth)
    other = next(c for c in real.members if c != victim)
    if how == "moved":  # a real, signed entry of `other` presented under another id
        target = next(c for c in real.members if c not in (victim, other))
        keys[target], auth[target] = keys.pop(other), auth.pop(other)
        return Roster(r.params.threshold(len(keys)), keys, auth)
    if how == "replayed":  # `other`'s signed advertisement from another round
        old = RoundContext("fed", 6, "r1", LENGTH, r.params)
        ident = AUTHORITY.issue("fed", "r1", other)
        adv = SecAggClient(old, other, identity=ident).advertise()
        keys[other], auth[other] = (adv.c_pk, adv.s_pk), adv.auth
        return Roster(real.threshold, keys, auth)
    rogue = Authority.generate()
    for c in real.members:
        if c == victim:
            continue
        fake = SecAggClient(r.ctx, c, identity=rogue.issue("fed", "r1", c)
                            if how == "other_authority" else None).advertise()
        keys[c] = (fake.c_pk, fake.s_pk)
        if how == "unsigned":
            auth.pop(c)
        elif how == "other_authority":
            auth[c] = fake.auth
        else:  # "keys_swapped": the real signature, the hub's keys
            pass
    return Roster(real.threshold, keys, auth)


@pytest.mark.parametrize("how", ["unsigned", "other_authority", "keys_swapped", "moved",
                                 "replayed"])
def test_device_refuses_a_roster_of_keys_the_hub_made(how):
    """Finding 2: on 4a146b2 the victim shared its secrets under any keys the hub put in
    the roster, so the hub decrypted its shares and removed all its masks."""
    r = Round(5, seed=20)
    roster = _hub_made(r, "dev00", how)
    with pytest.raises(SecAggError) as err:
        r.clients["dev00"].share_keys(roster)
    assert err.value.reason == "secagg_unauthenticated"
    assert r.clients["dev00"].stage == "keys"  # nothing was shared
    assert r.clients["dev00"].share_keys(r.server.roster).client == "dev00"  # control


@pytest.mark.parametrize("signed", [True, False])
def test_device_refuses_a_roster_member_the_announcement_did_not_select(signed):
    """Issue 15 (SecAgg): a hub adds devices nobody selected -- here two accomplices with
    genuine certificates and signed keys, so every signature checks -- to have more
    colluders in the roster than the threshold tolerates.  The victim refuses the roster
    naming the stranger, shares nothing, and accepts the honest roster afterwards."""
    r = Round(6, seed=23, signed=signed)
    selected = [c for c in r.clients if c not in ("dev04", "dev05")]
    victim = SecAggClient(r.ctx, "dev00", random.Random(5).randbytes,
                          AUTHORITY.issue("fed", "r1", "dev00") if signed else None,
                          selected=selected)
    r.clients["dev00"] = victim
    roster = r.keys()  # all six advertised and the hub put them all in
    assert roster.members == sorted(r.clients) and (not signed or len(roster.auth) == 6)
    with pytest.raises(SecAggError) as err:
        victim.share_keys(roster)
    assert err.value.reason == "secagg_unauthenticated"
    assert "dev04 was not announced as selected for round 7" in str(err.value)
    assert victim.stage == "keys" and victim.roster is None  # nothing was shared
    r.server = SecAggServer(r.ctx)
    honest = r.keys(absent={"dev04", "dev05"})
    assert victim.share_keys(honest).client == "dev00"  # control: the selected roster


@pytest.mark.parametrize("how", ["other_authority", "other_client", "other_region",
                                 "unsigned", "forged_signature"])
def test_a_hub_with_the_authority_key_leaves_a_badly_certified_device_out(how):
    """Issue 15: without the authority's key the hub put any self-consistently signed
    advertisement in the roster, every member refused that roster, and the region lost its
    round.  With it the hub refuses the advertisement (``secagg_unauthenticated``), the
    roster holds the others, and every member accepts it."""
    r = Round(5, seed=24)
    r.server = SecAggServer(r.ctx, AUTHORITY.public)
    bad = r.clients["dev02"]
    if how in ("other_authority", "other_client", "other_region"):
        signer = Authority.generate() if how == "other_authority" else AUTHORITY
        client = "dev09" if how == "other_client" else "dev02"
        region = "r2" if how == "other_region" else "r1"
        issued = signer.issue("fed", region, client)
        ident = type(issued)("fed", "r1", "dev02", issued.key, issued.certificate,
                             issued.authority)  # the certificate is for someone else
        bad = SecAggClient(r.ctx, "dev02", random.Random(1).randbytes, ident,
                           selected=list(r.clients))
    msg = bad.advertise()
    assert msg.auth is not None
    if how == "unsigned":
        msg = AdvertiseKeys(msg.client, msg.c_pk, msg.s_pk)
    elif how == "forged_signature":
        msg = AdvertiseKeys(msg.client, msg.c_pk, msg.s_pk,
                            KeyAuth(msg.auth.signing_pk, msg.auth.certificate, bytes(64)))
    with pytest.raises(SecAggError) as err:
        r.server.add_keys(msg)
    assert err.value.reason == "secagg_unauthenticated"
    roster = r.keys(absent={"dev02"})
    assert roster.members == ["dev00", "dev01", "dev03", "dev04"]
    for c in roster.members:  # the honest members accept the roster the hub checked
        assert r.clients[c].share_keys(roster).client == c
    # without the key the hub takes the other authority's entry, which the members refuse
    if how == "other_authority":
        plain = Round(5, seed=24)
        plain.server.add_keys(msg)
        roster = plain.keys(absent={"dev02"})
        with pytest.raises(SecAggError, match="certificate of dev02"):
            plain.clients["dev00"].share_keys(roster)


def test_device_with_an_identity_refuses_an_unsigned_but_honest_roster():
    r = Round(4, seed=21)
    roster = r.keys()
    with pytest.raises(SecAggError, match="secagg_unauthenticated"):
        r.clients["dev00"].share_keys(Roster(roster.threshold, roster.keys, {}))


def test_roster_below_the_floor_is_refused_whatever_the_configuration():
    """Finding 3: a roster of 3 (t = 2) lets a hub with one colluding device remove both
    masks of the third; devices refuse rosters smaller than MIN_ROSTER, and the
    configuration cannot ask for less."""
    assert MIN_ROSTER == 4
    with pytest.raises(ValueError, match="min_clients"):
        SecAggParams(min_clients=3)
    r = Round(3, seed=22, params=SecAggParams())
    with pytest.raises(SecAggError, match="secagg_too_few"):
        r.keys()  # the hub does not even try
    real = Round(4, seed=22)
    roster = real.keys()
    small = Roster(2, {c: roster.keys[c] for c in roster.members[:3]},
                   {c: roster.auth[c] for c in roster.members[:3]})
    with pytest.raises(SecAggError, match="secagg_too_few"):
        real.clients["dev00"].share_keys(small)


def test_hub_cannot_unmask_with_two_different_survivor_sets():
    """Finding 3: the hub tells some survivors that dev05 dropped (to get shares of its
    s_sk) and others that it survived (shares of its b).  Each survivor signs only the set
    it was told, and reveals only against t valid signatures over that same set."""
    r = Round(6, seed=23)  # t = 4
    r.shares(r.keys())
    for c in r.server.members:
        values, samples = r.inputs[c]
        r.server.add_input(r.clients[c].masked_input(values, samples))
    everyone = tuple(sorted(r.clients))
    view_a = SurvivorSet(everyone[:-1], everyone[-1:])  # dev05 "dropped"
    view_b = SurvivorSet(everyone, ())  # dev05 survived
    sig_a = {c: r.clients[c].sign_survivors(view_a).signature for c in ("dev00", "dev01")}
    sig_b = {c: r.clients[c].sign_survivors(view_b).signature
             for c in ("dev02", "dev03", "dev04", "dev05")}
    with pytest.raises(SecAggError, match="secagg_refused"):
        r.clients["dev00"].sign_survivors(view_b)  # one set per device
    # too few signatures over view A: dev00 does not reveal dev05's s_sk share
    with pytest.raises(SecAggError, match="secagg_too_few"):
        r.clients["dev00"].unmask(UnmaskRequest(view_a.survivors, view_a.dropped, sig_a))
    # view B's signatures presented as if they were over view A: they do not verify
    mixed = {**sig_a, "dev02": sig_b["dev02"], "dev03": sig_b["dev03"]}
    with pytest.raises(SecAggError) as err:
        r.clients["dev00"].unmask(UnmaskRequest(view_a.survivors, view_a.dropped, mixed))
    assert err.value.reason == "secagg_unauthenticated"
    # a request for the set the device did not sign
    with pytest.raises(SecAggError, match="secagg_refused"):
        r.clients["dev00"].unmask(UnmaskRequest(view_b.survivors, view_b.dropped, sig_b))
    # the hub itself refuses a signature over another set than its own, naming the device
    assert r.server.close_inputs() == view_b
    with pytest.raises(SecAggError, match="dev00"):
        r.server.add_signature(SurvivorSignature("dev00", sig_a["dev00"]))
    assert r.server.add_signature(SurvivorSignature("dev02", sig_b["dev02"]))


def test_hub_needs_t_signatures_before_anyone_unmasks():
    r, told = _ready_round()  # t = 4 of 6, dev05 dropped
    for c in ("dev00", "dev01", "dev02"):
        r.server.add_signature(r.clients[c].sign_survivors(told))
    with pytest.raises(SecAggError, match="secagg_too_few"):
        r.server.close_consistency()
    assert r.server.stage == "failed"


# ------------------------------------------------------------------ a crafted encoding (finding 4)


def _cheat(r: Round, cheater: str, offset: torch.Tensor) -> SurvivorSet:
    """Every device masks honestly; ``cheater`` then adds ``offset`` (mod 2^32) to its
    masked vector, which adds it to its encoding: the hub cannot see it under the masks."""
    r.shares(r.keys())
    for c in r.server.members:
        values, samples = r.inputs[c]
        msg = r.clients[c].masked_input(values, samples)
        if c == cheater:
            msg = MaskedInput(c, add_mod(msg.y, torch.remainder(offset, MOD)))
        r.server.add_input(msg)
    return r.server.close_inputs()


def test_a_crafted_weight_word_cannot_blow_up_the_mean():
    """Finding 4: on 4a146b2 a device's negative weight word made the unmasked total
    weight tiny (4 instead of 12,289) and the decoded mean huge; the hub forwarded it."""
    r = Round(4, seed=30)
    for c in r.inputs:
        r.inputs[c] = (torch.full((LENGTH,), 0.01), 4096)
    offset = torch.zeros(LENGTH + 1, dtype=torch.int64)
    offset[-1] = -(4 * 4096 - 4)  # total weight 4: the smallest the count allows
    told = _cheat(r, "dev01", offset)
    with pytest.raises(SecAggError) as err:
        r.unmask(told)
    assert err.value.reason == "secagg_out_of_range"
    assert r.server.stage == "failed"  # refused, never forwarded


@pytest.mark.parametrize("word", [2**30, -(2**30), 2**31 + 5])
def test_value_words_beyond_the_weight_or_wrapping_are_refused(word):
    r = Round(5, seed=31)
    offset = torch.zeros(LENGTH + 1, dtype=torch.int64)
    offset[3] = word
    with pytest.raises(SecAggError, match="secagg_out_of_range"):
        r.unmask(_cheat(r, "dev02", offset))


def test_an_honest_extreme_sum_passes_the_range_check():
    """Control: every device at +clip with the largest weight is accepted."""
    r = Round(4, seed=32)
    for c in r.inputs:
        r.inputs[c] = (torch.full((LENGTH,), 5.0), 4096)  # clipped to 1.0
    result = r.play()
    assert result.weight == 4 * 4096
    assert torch.allclose(result.sums / result.weight, torch.ones(LENGTH, dtype=torch.float64))
