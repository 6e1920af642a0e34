"""Feldman verifiable secret sharing (``secagg.vss``) over edwards25519: honest shares
verify and reconstruct, a share off the committed polynomial or against another dealer's
commitments fails, points outside the prime-order group are refused by name, and the
transcript digest that survivors sign changes when one holder is shown other
commitments."""

from __future__ import annotations

import random

import pytest
from nacl import bindings

from fedsa_common.privacy.secagg import vss
from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.shamir import (
    ORDER,
    combine_shares,
    deal,
    decode_scalar,
    encode_scalar,
    random_secret,
)


def _dealing(t: int = 3, n: int = 5, seed: int = 0):
    rng = random.Random(seed)
    secret = random_secret(rng.randbytes)
    d = deal(secret, t, n, rng.randbytes)
    return secret, d, vss.commit(d.coefficients)


def test_honest_shares_verify_and_any_t_reconstruct():
    secret, d, points = _dealing(t=3, n=5)
    vss.check_points(points, "vss")
    assert len(points) == 3 and points[0] == bindings.crypto_scalarmult_ed25519_base_noclamp(
        secret)  # C_0 = secret·G
    for x, share in enumerate(d.shares, start=1):
        assert vss.verify_share(points, x, share)
    assert vss.bad_shares(points, dict(enumerate(d.shares, start=1))) == []
    rebuilt = combine_shares({2: d.shares[1], 4: d.shares[3], 5: d.shares[4]}, 3)
    assert rebuilt == secret and vss.opens(points, rebuilt)


def test_shares_on_no_single_polynomial_are_caught():
    """The hole VSS closes: two shares each authentic for their holder, but the vector of
    shares is not one polynomial of degree t-1, so two t-subsets disagree."""
    secret, d, points = _dealing(t=3, n=5, seed=1)
    shares = dict(enumerate(d.shares, start=1))
    shares[4] = encode_scalar(decode_scalar(shares[4], "s") + 1)
    assert combine_shares({1: shares[1], 2: shares[2], 3: shares[3]}, 3) == secret
    wrong = combine_shares({2: shares[2], 3: shares[3], 4: shares[4]}, 3)
    assert wrong != secret and not vss.opens(points, wrong)  # the hub's unmasking check
    assert not vss.verify_share(points, 4, shares[4])
    assert all(vss.verify_share(points, x, shares[x]) for x in (1, 2, 3, 5))
    assert vss.bad_shares(points, shares) == [4]


def test_a_share_checked_at_the_wrong_x_or_against_other_commitments_fails():
    _, d, points = _dealing(seed=2)
    _, _, other = _dealing(seed=3)
    assert not vss.verify_share(points, 2, d.shares[0])  # share of x=1 presented as x=2
    assert not vss.verify_share(other, 1, d.shares[0])  # commitments swapped for another's
    assert not vss.verify_share(points, 1, b"\xff" * 32)  # not a canonical scalar


@pytest.mark.parametrize("how", ["identity", "low_order", "off_curve", "non_canonical"])
def test_points_outside_the_prime_order_group_are_refused_by_name(how):
    _, _, points = _dealing(seed=4)
    bad = {
        "identity": (1).to_bytes(32, "little"),
        # a point of order 8 (libsodium's small-order blocklist)
        "low_order": bytes.fromhex(
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
        "off_curve": (2).to_bytes(32, "little"),
        "non_canonical": (2**255 - 19 + 1).to_bytes(32, "little"),  # y = p + 1
    }[how]
    assert not bindings.crypto_core_ed25519_is_valid_point(bad)
    with pytest.raises(SecAggError, match=r"vss of dev03\[1\] is not a point") as err:
        vss.check_points((points[0], bad, points[2]), "vss of dev03")
    assert err.value.reason == "secagg_bad_message"
    # a holder given such a point (by a hub that let it through) refuses the share
    _, d, _ = _dealing(seed=4)
    assert not vss.verify_share((points[0], bad, points[2]), 1, d.shares[0])
    assert not vss.opens((bad, *points[1:]), bytes(32))


def test_the_transcript_digest_binds_every_dealers_commitments():
    _, _, a = _dealing(seed=5)
    _, _, b = _dealing(seed=6)
    seen = vss.transcript_digest({"dev00": a, "dev01": b})
    assert seen == vss.transcript_digest({"dev01": b, "dev00": a})  # order-free
    assert seen != vss.transcript_digest({"dev00": b, "dev01": a})  # swapped per dealer
    assert seen != vss.transcript_digest({"dev00": a, "dev01": b[:2]})
    assert seen != vss.transcript_digest({"dev00": a})


def test_a_zero_coefficient_is_not_committed_to():
    with pytest.raises(ValueError, match="zero coefficient"):
        vss.commit((5, 0, 7))
    assert ORDER.bit_length() == 253
