"""Frame splitting and reassembly: round trips, reordering, and every hostile-input rule."""

from __future__ import annotations

import contextlib
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsa_common.wire.chunking import (
    FRAME_HEADER_BYTES,
    FRAME_MAGIC,
    MIN_CHUNK_BYTES,
    Reassembler,
    parse_frame,
    split_payload,
)
from fedsa_common.wire.errors import WireError

LIMIT = 1000
CHUNK = LIMIT - FRAME_HEADER_BYTES


def frame(msg_id: bytes, idx: int, total: int, data: bytes, magic: bytes = FRAME_MAGIC) -> bytes:
    return struct.pack(">4s16sHH", magic, msg_id, idx, total) + data


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def feed(r: Reassembler, key: str, frames: list[bytes], now: float = 0.0) -> list[bytes]:
    return [out for f in frames if (out := r.add(key, f, now)) is not None]


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 10 * LIMIT, 10 * LIMIT + 7]
)
def test_round_trip_sizes_around_the_limit(size: int) -> None:
    payload = os.urandom(size)
    frames = split_payload(payload, LIMIT)
    assert all(len(f) <= LIMIT for f in frames)
    assert len(frames) == max(1, -(-size // CHUNK))
    assert feed(Reassembler(), "t", frames) == [payload]


def test_payload_that_fits_is_exactly_one_frame() -> None:
    assert len(split_payload(b"x" * (LIMIT - 24), LIMIT)) == 1  # limit-24 fits
    assert len(split_payload(b"x" * (LIMIT - 23), LIMIT)) == 2  # limit-23 does not
    (only,) = split_payload(b"", LIMIT)
    assert len(only) == FRAME_HEADER_BYTES


def test_frames_share_msg_id_and_number_themselves() -> None:
    frames = split_payload(os.urandom(3 * CHUNK), LIMIT, msg_id=mid(7))
    headers = [parse_frame(f)[0] for f in frames]
    assert [(h.msg_id, h.idx, h.total) for h in headers] == [(mid(7), i, 3) for i in range(3)]
    assert split_payload(b"a", LIMIT)[0][4:20] != split_payload(b"a", LIMIT)[0][4:20]


def test_split_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        split_payload(b"x", FRAME_HEADER_BYTES + MIN_CHUNK_BYTES - 1)
    with pytest.raises(ValueError):
        split_payload(b"x", LIMIT, msg_id=b"short")


def test_out_of_order_frames() -> None:
    payload = os.urandom(7 * CHUNK + 3)
    frames = split_payload(payload, LIMIT)
    random.Random(1).shuffle(frames)
    assert feed(Reassembler(), "t", frames) == [payload]


def test_duplicate_frames_are_harmless_and_do_not_redeliver() -> None:
    payload = os.urandom(3 * CHUNK)
    frames = split_payload(payload, LIMIT)
    r = Reassembler()
    assert feed(r, "t", [frames[0], frames[0], frames[1], frames[0], frames[2]]) == [payload]
    # QoS 1 redelivery / retained replay after completion: nothing delivered twice
    assert feed(r, "t", frames) == []
    single = split_payload(b"small", LIMIT)
    assert feed(r, "t", single + single) == [b"small"]
    assert r.pending == 0


def test_forget_lets_a_key_deliver_a_seen_message_again() -> None:
    """After an unsubscribe (MqttSession.unsubscribe) a new subscription's retained replay
    is delivered again; other keys keep their memory."""
    payload = os.urandom(2 * CHUNK)
    frames = split_payload(payload, LIMIT)
    r = Reassembler()
    assert feed(r, "a/global", frames) == [payload] and feed(r, "b", frames) == [payload]
    feed(r, "a/global", [split_payload(os.urandom(2 * CHUNK), LIMIT)[0]])  # a partial
    r.forget(lambda key: key.startswith("a/"))
    assert r.pending == 0
    assert feed(r, "a/global", frames) == [payload] and feed(r, "b", frames) == []


def test_interleaved_messages_on_different_keys() -> None:
    a, b = os.urandom(4 * CHUNK), os.urandom(3 * CHUNK + 5)
    fa, fb = split_payload(a, LIMIT), split_payload(b, LIMIT)
    r = Reassembler()
    out = []
    for i in range(4):
        out += feed(r, "a", [fa[i]])
        if i < len(fb):
            out += feed(r, "b", [fb[len(fb) - 1 - i]])
    assert sorted(out) == sorted([a, b])


def test_same_msg_id_on_different_keys_is_independent() -> None:
    payload = os.urandom(2 * CHUNK)
    frames = split_payload(payload, LIMIT, msg_id=mid(1))
    r = Reassembler()
    assert feed(r, "a", frames[:1]) == []
    assert feed(r, "b", frames) == [payload]
    assert feed(r, "a", frames[1:]) == [payload]


def test_newer_message_supersedes_older_incomplete_one() -> None:
    old = split_payload(os.urandom(3 * CHUNK), LIMIT, msg_id=mid(1))
    new_payload = os.urandom(2 * CHUNK)
    new = split_payload(new_payload, LIMIT, msg_id=mid(2))
    r = Reassembler()
    assert feed(r, "t", old[:2]) == []
    assert feed(r, "t", new) == [new_payload]
    assert r.pending == 0  # the old partial is gone
    assert feed(r, "t", old[2:]) == []  # and its late frames do not bring it back
    assert r.pending == 0


def test_new_message_completes_among_stale_frames_of_old_one() -> None:
    """A half-replaced retained message: T/0 new, T/1 old, then T/1 new."""
    old = split_payload(os.urandom(2 * CHUNK), LIMIT, msg_id=mid(1))
    new_payload = os.urandom(2 * CHUNK)
    new = split_payload(new_payload, LIMIT, msg_id=mid(2))
    r = Reassembler()
    assert feed(r, "t", [new[0], old[1], new[1]]) == [new_payload]
    assert feed(r, "t", [old[0]]) == []  # the stale message must not complete after it
    assert r.pending == 0


def test_at_most_two_partials_per_key() -> None:
    r = Reassembler()
    for n in range(5):
        r.add("t", frame(mid(n), 0, 2, b"x" * CHUNK), now=0.0)
    assert r.pending == 2


# ---------------------------------------------------------------------------- malformed input


GOOD = frame(mid(1), 0, 2, b"x" * CHUNK)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "frame_truncated"),
        (GOOD[: FRAME_HEADER_BYTES - 1], "frame_truncated"),
        (frame(mid(1), 0, 1, b"x", magic=b"FSC\x02"), "frame_bad_magic"),
        (frame(mid(1), 0, 0, b"x"), "frame_bad_total"),
        (frame(mid(1), 2, 2, b"x"), "frame_bad_index"),
        (frame(mid(1), 0, 65535, b"x" * MIN_CHUNK_BYTES), "frame_total_implausible"),
        (frame(mid(1), 0, 2, b"x" * (MIN_CHUNK_BYTES - 1)), "frame_too_small"),
        (frame(mid(1), 1, 2, b""), "frame_too_small"),
        (frame(mid(1), 0, 1, b"x" * 2001), "message_too_large"),
        (frame(mid(1), 0, 3, b"x" * 1001), "message_too_large"),  # 2 * 1001 + 1 > 2000
        (frame(mid(1), 7, 8, b"x" * 300), "message_too_large"),  # >= 7 * 256 + 300 bytes
    ],
)
def test_malformed_frame_raises_wire_error(raw: bytes, reason: str) -> None:
    r = Reassembler(max_message_bytes=2000)
    with pytest.raises(WireError) as info:
        r.add("t", raw, 0.0)
    assert info.value.reason == reason
    assert r.pending == 0


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        (frame(mid(1), 2, 3, b"y" * 10), "frame_inconsistent_total"),
        (frame(mid(1), 0, 2, b"y" * CHUNK), "frame_conflicting_duplicate"),
        (frame(mid(1), 1, 2, b"y" * (CHUNK + 1)), "frame_inconsistent_size"),
    ],
)
def test_frame_inconsistent_with_earlier_ones_drops_the_message(second: bytes, reason: str) -> None:
    r = Reassembler()
    assert r.add("t", GOOD, 0.0) is None
    with pytest.raises(WireError) as info:
        r.add("t", second, 0.0)
    assert info.value.reason == reason
    assert r.pending == 0
    # the rest of the (now distrusted) message is ignored
    assert r.add("t", frame(mid(1), 1, 2, b"z"), 0.0) is None


def test_non_final_frames_must_have_equal_size() -> None:
    r = Reassembler()
    r.add("t", frame(mid(1), 0, 3, b"x" * 500), 0.0)
    with pytest.raises(WireError, match="frame_inconsistent_size"):
        r.add("t", frame(mid(1), 1, 3, b"x" * 400), 0.0)


def test_final_frame_first_then_smaller_chunk_is_rejected() -> None:
    r = Reassembler()
    r.add("t", frame(mid(1), 2, 3, b"x" * 600), 0.0)
    with pytest.raises(WireError, match="frame_inconsistent_size"):
        r.add("t", frame(mid(1), 0, 3, b"x" * 500), 0.0)


def test_size_limit_checked_once_chunk_size_is_known() -> None:
    r = Reassembler(max_message_bytes=1000)
    r.add("t", frame(mid(1), 2, 3, b"x" * 10), 0.0)  # could still be >= 2*256+10 bytes
    with pytest.raises(WireError, match="message_too_large"):
        r.add("t", frame(mid(1), 0, 3, b"x" * 600), 0.0)


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        Reassembler(max_pending=0)
    with pytest.raises(ValueError):
        Reassembler(ttl_s=0)


# ------------------------------------------------------------------------------- memory bound


def test_max_pending_evicts_from_the_largest_holder_then_the_newest_message() -> None:
    r = Reassembler(max_pending=3)
    msgs = {k: split_payload(os.urandom(3 * CHUNK), LIMIT) for k in "abcde"}
    for k in "abc":
        r.add(k, msgs[k][0], 0.0)
    r.add("b", msgs["b"][1], 1.0)  # "b" holds the most
    r.add("d", msgs["d"][0], 2.0)  # evicts "b"'s message, not "a", the least recently fed
    assert r.pending == 3
    assert r.add("b", msgs["b"][2], 3.0) is None  # b's message was dropped for good
    assert r.pending == 3
    r.add("e", msgs["e"][0], 4.0)  # all hold one frame: the newest message loses
    assert r.add("e", msgs["e"][1], 4.0) is None and r.pending == 3
    assert r.add("a", msgs["a"][1], 5.0) is None
    assert r.add("a", msgs["a"][2], 5.0) is not None


def test_ttl_expiry_frees_partials() -> None:
    r = Reassembler(ttl_s=10.0)
    frames = split_payload(os.urandom(2 * CHUNK), LIMIT)
    r.add("t", frames[0], 0.0)
    assert r.pending == 1 and r.buffered_bytes == CHUNK
    r.add("other", split_payload(b"x", LIMIT)[0], 10.0)  # not yet expired
    assert r.pending == 1
    r.add("other", split_payload(b"y", LIMIT)[0], 10.5)
    assert r.pending == 0 and r.buffered_bytes == 0
    assert r.add("t", frames[1], 11.0) is None


def test_memory_stays_bounded_under_a_flood() -> None:
    r = Reassembler(max_pending=8, max_message_bytes=100_000)
    rng = random.Random(3)
    for n in range(2000):
        total = rng.randint(2, 50)
        r.add(f"k{n % 37}", frame(mid(n), rng.randrange(total - 1), total, b"x" * 1000), n)
        assert r.pending <= 8
    assert r.buffered_bytes <= 8 * 100_000


# ---------------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_bytes_raise_only_wire_error(blobs: list[bytes]) -> None:
    r = Reassembler(max_message_bytes=5000, max_pending=4)
    for i, blob in enumerate(blobs):
        with contextlib.suppress(WireError):
            r.add(f"k{i % 3}", blob, float(i))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 70_000),
            st.integers(0, 70_000),
            st.integers(0, 3000),
        ),
        max_size=30,
    )
)
def test_random_well_formed_headers_raise_only_wire_error(
    specs: list[tuple[int, int, int, int]],
) -> None:
    r = Reassembler(max_message_bytes=20_000, max_pending=4)
    for n, (m, idx, total, size) in enumerate(specs):
        raw = frame(mid(m), idx % 65536, total % 65536, b"x" * size)
        try:
            out = r.add(f"k{m % 2}", raw, float(n))
        except WireError:
            continue
        assert out is None or len(out) <= 20_000
        assert r.pending <= 4


# ------------------------------------------------------------------------------ flooding


def test_a_flooding_sender_is_evicted_before_an_honest_message_in_progress() -> None:
    """Four other senders each hold more of an unfinished message than the honest one;
    when the table is full the largest holder loses, not the least recently fed (which
    was the honest message, and evicting it retired its id for good)."""
    r = Reassembler(max_pending=4)
    honest = split_payload(os.urandom(3 * CHUNK), LIMIT, msg_id=mid(1))
    assert r.add("honest", honest[0], 0.0) is None
    for n in range(4):  # flooding: two frames of each of four 3-frame messages
        flood = split_payload(os.urandom(3 * CHUNK), LIMIT, msg_id=mid(100 + n))
        feed(r, f"flood-{n}", flood[:2], 1.0)
        assert r.pending <= 4
    assert r.add("honest", honest[1], 2.0) is None
    assert r.add("honest", honest[2], 2.0) == b"".join(f[FRAME_HEADER_BYTES:] for f in honest)


def test_buffered_bytes_are_bounded_and_an_honest_message_completes_during_a_flood() -> None:
    """Flooding senders (three topics, one account each under the ACL) keep starting
    4-frame messages they never finish; the buffered bytes stay under the cap and the
    honest 3-frame message, whose frames arrive far apart, still completes."""
    cap = 8 * CHUNK
    r = Reassembler(max_message_bytes=4 * CHUNK, max_buffered_bytes=cap)
    payload = os.urandom(3 * CHUNK)
    honest = split_payload(payload, LIMIT, msg_id=mid(1))
    got = []
    rng = random.Random(0)
    for n in range(200):
        flood = split_payload(os.urandom(4 * CHUNK), LIMIT, msg_id=mid(1000 + n))
        feed(r, f"flood-{n % 3}", flood[: rng.randint(2, 3)], float(n))
        if n in (10, 100, 190):
            got += feed(r, "honest", [honest[(10, 100, 190).index(n)]], float(n))
        assert r.buffered_bytes <= cap
    assert got == [payload]
    with pytest.raises(ValueError):
        Reassembler(max_message_bytes=1000, max_buffered_bytes=999)
    assert Reassembler(max_message_bytes=16_000_000).max_buffered_bytes == 256 * 2**20
