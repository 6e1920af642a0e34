"""Secure-aggregation building blocks: fixed point mod 2^32, the ChaCha20 mask PRG, Shamir
sharing of 32-byte secrets, share encryption, and the dense/randk vector layout."""

from __future__ import annotations

import os
import random

import pytest
import torch

from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.fixed_point import (
    HALF,
    MOD,
    FixedPoint,
    add_mod,
    from_wire,
    to_signed,
    to_wire,
)
from fedsa_common.privacy.secagg.masks import pair_key, prg_words, self_key, signed_pair_mask
from fedsa_common.privacy.secagg.params import RoundContext, SecAggParams, threshold_for
from fedsa_common.privacy.secagg.shamir import combine_shares, random_secret, split_secret
from fedsa_common.privacy.secagg.vector import gather, residual, scatter, vector_length
from fedsa_common.wire.codec import RandKCodec, round_seed

# ------------------------------------------------------------------ fixed point


@pytest.mark.parametrize("n", [1, 3, 12, 100])
def test_fixed_point_range_cannot_wrap_and_is_maximal(n):
    fp = FixedPoint.for_sum(n, clip=1.0, max_weight=4096)
    for edge in (1.0, -1.0, 7.5, -7.5):  # beyond the clip range is clipped
        words = torch.zeros(3, dtype=torch.int64)
        for _ in range(n):
            words = add_mod(words, fp.encode(torch.full((2,), edge), 4096))
        sums, weight = fp.decode_sum(words, n)
        assert sums.tolist() == [n * 4096 * max(-1.0, min(1.0, edge))] * 2
        assert weight == n * 4096
    if fp.frac_bits < 40:  # one more fractional bit would let n extreme terms wrap
        assert n * 4096 * 2.0 ** (fp.frac_bits + 1) + n >= HALF - 1


def test_fixed_point_refuses_a_range_without_precision():
    with pytest.raises(ValueError, match="fractional bits"):
        FixedPoint.for_sum(1000, clip=1000.0, max_weight=100_000)


def test_fixed_point_sum_decodes_negative_and_positive_values():
    fp = FixedPoint.for_sum(4, clip=1.0, max_weight=10)
    xs = [torch.tensor([-1.0, 0.25, 0.9, -0.3]), torch.tensor([-1.0, -0.5, 0.9, 0.1]),
          torch.tensor([-1.0, 0.0, 0.9, 0.7]), torch.tensor([-1.0, 1.0, 0.9, -2.0])]
    ws = [10, 3, 7, 1]
    words = torch.zeros(5, dtype=torch.int64)
    for x, w in zip(xs, ws, strict=True):
        words = add_mod(words, fp.encode(x, w))
    sums, weight = fp.decode_sum(words, 4)
    expected = sum(x.clamp(-1, 1).double() * w for x, w in zip(xs, ws, strict=True))
    assert weight == 21
    assert torch.allclose(sums, expected, atol=4 / 2 ** (fp.frac_bits + 1))
    assert float(sums[0]) == pytest.approx(-21.0)  # the clip range's edge, all devices


def test_fixed_point_sent_is_what_the_sum_holds():
    fp = FixedPoint.for_sum(3, clip=0.5, max_weight=100)
    x = torch.tensor([0.123456789, -0.7, 0.5])
    sent = fp.sent(x, 37)
    sums, _ = fp.decode_sum(fp.encode(x, 37), 1)
    assert torch.equal(sums, sent * 37)
    assert float(sent[1]) == -0.5  # clipped


def test_fixed_point_rejects_impossible_weight():
    fp = FixedPoint.for_sum(3, clip=1.0, max_weight=10)
    with pytest.raises(ValueError, match="weight"):
        fp.encode(torch.zeros(2), 11)
    garbage = torch.tensor([5, 7, MOD - 3], dtype=torch.int64)  # weight word -3
    with pytest.raises(ValueError, match="impossible"):
        fp.decode_sum(garbage, 2)


def test_wire_words_round_trip():
    words = torch.tensor([0, 1, HALF - 1, HALF, MOD - 1], dtype=torch.int64)
    wire = to_wire(words)
    assert wire.dtype == torch.int32
    assert torch.equal(from_wire(wire), words)
    assert to_signed(words).tolist() == [0, 1, HALF - 1, -HALF, -1]


# ------------------------------------------------------------------ masks


def test_prg_is_chacha20_rfc8439():
    """RFC 8439 A.1 test vector #1: all-zero key and nonce, block counter 0."""
    words = prg_words(bytes(32), 4).tolist()
    assert words == [0xADE0B876, 0x903DF1A0, 0xE56A5D40, 0x28BD8653]


def test_prg_depends_on_every_key_byte_and_is_deterministic():
    key = os.urandom(32)
    base = prg_words(key, 64)
    assert torch.equal(base, prg_words(key, 64))
    assert torch.equal(prg_words(key, 16), base[:16])  # a prefix of the same stream
    for i in range(32):
        other = bytearray(key)
        other[i] ^= 1
        diff = prg_words(bytes(other), 64) != base
        assert int(diff.sum()) > 56  # essentially every word changes
    assert int(base.max()) >= HALF  # full 32-bit words, not 31-bit or smaller
    with pytest.raises(ValueError):
        prg_words(key[:4], 8)  # a short (e.g. 32-bit) seed is refused


def test_pairwise_masks_cancel_and_keys_bind_the_round():
    secret = os.urandom(32)
    k_uv = pair_key(secret, "fed", 3, "r1", "alice", "bob")
    assert k_uv == pair_key(secret, "fed", 3, "r1", "bob", "alice")
    assert k_uv != pair_key(secret, "fed", 4, "r1", "alice", "bob")
    assert k_uv != pair_key(secret, "fed", 3, "r2", "alice", "bob")
    total = add_mod(signed_pair_mask("alice", "bob", k_uv, 100),
                    signed_pair_mask("bob", "alice", k_uv, 100))
    assert not bool(total.any())
    seed = os.urandom(32)
    assert self_key(seed, "fed", 3, "r1", "alice") != self_key(seed, "fed", 3, "r1", "bob")


# ------------------------------------------------------------------ shamir


@pytest.mark.parametrize("n", [3, 5, 12])
def test_any_threshold_subset_reconstructs(n):
    t = threshold_for(n, 2 / 3)
    assert t == n - n // 3
    secret = random_secret()
    shares = split_secret(secret, t, n)
    assert all(len(s) == 32 for s in shares)
    rng = random.Random(n)
    for _ in range(5):
        xs = rng.sample(range(1, n + 1), t)
        assert combine_shares({x: shares[x - 1] for x in xs}, t) == secret
    fewer = {x: shares[x - 1] for x in range(1, t)}
    with pytest.raises(SecAggError, match="secagg_too_few"):
        combine_shares(fewer, t)
    # t-1 shares interpolated as if they were enough give an unrelated value
    if t > 2:
        assert combine_shares(fewer, t - 1) != secret


def test_a_secret_that_is_not_a_scalar_is_refused():
    """Secrets live in Z_L (``shamir.ORDER``): 32 bytes at or above L are not one."""
    with pytest.raises(ValueError, match="not a scalar"):
        split_secret(b"\xff" * 32, 2, 3)
    with pytest.raises(SecAggError, match="share of x=2"):
        combine_shares({1: bytes(32), 2: b"\xff" * 32}, 2)


def test_threshold_is_a_strict_majority():
    for n in range(1, 40):
        t = threshold_for(n, 2 / 3)
        assert t > n / 2 and n - t >= n // 3
        assert threshold_for(n, 0.51) > n / 2


def test_params_refuse_a_minority_threshold():
    with pytest.raises(ValueError, match="threshold_fraction"):
        SecAggParams(threshold_fraction=0.5)


def test_context_binds_names():
    with pytest.raises(ValueError, match="region"):
        RoundContext("fed", 1, "a|b", 3)


# ------------------------------------------------------------------ vector layout

SHAPES = {"b.lora_A": (4, 32), "a.lora_A": (8, 16), "c.lora_A": (3, 7)}


def _delta(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


def test_randk_vector_matches_the_randk_codec():
    """The masked vector holds exactly the coordinates the randk codec would send, so the
    hub expands the unmasked sum as the randk decoder expands one update."""
    params = {"ratio": 0.25, "seed": round_seed(7, 2)}
    delta = _delta()
    flat = gather(delta, SHAPES, "randk", params)
    assert flat.numel() == vector_length(SHAPES, "randk", params) < sum(
        t.numel() for t in delta.values())
    codec = RandKCodec(ratio=0.25, values="fp32", seed=params["seed"])
    decoded = codec.decode(codec.encode(delta).tensors, {}, SHAPES)
    expanded = scatter(flat, SHAPES, "randk", params)
    for name in SHAPES:
        assert torch.equal(expanded[name].float(), decoded[name])


def test_dense_vector_round_trips_and_residual_is_exact():
    delta = _delta(1)
    flat = gather(delta, SHAPES, "dense", {})
    back = scatter(flat, SHAPES, "dense", {})
    assert all(torch.equal(back[n].float(), delta[n]) for n in SHAPES)
    fp = FixedPoint.for_sum(5, clip=1.0, max_weight=64)
    sent = fp.sent(flat, 9)
    res = residual(delta, sent, SHAPES, "dense", {})
    for name in SHAPES:
        total = res[name].double() + scatter(sent, SHAPES, "dense", {})[name]
        assert torch.allclose(total, delta[name].double(), atol=1e-6)


def test_randk_residual_keeps_unsent_coordinates():
    params = {"ratio": 0.1, "seed": 5}
    delta = _delta(2)
    flat = gather(delta, SHAPES, "randk", params)
    res = residual(delta, flat, SHAPES, "randk", params)  # sent exactly: only unsent remain
    expanded = scatter(flat, SHAPES, "randk", params)
    for name in SHAPES:
        assert torch.allclose(res[name] + expanded[name].float(), delta[name])
        assert int((res[name] == 0).sum()) >= int((expanded[name] != 0).sum())


def test_topk_codecs_are_refused():
    with pytest.raises(ValueError, match="randk or dense"):
        vector_length(SHAPES, "topk", {"ratio": 0.1})
