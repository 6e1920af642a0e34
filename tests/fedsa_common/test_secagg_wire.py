"""Secure-aggregation messages in the envelope: a region of 1,000 devices (the largest
roster allowed) round-trips every stage's message through the real envelope and chunking
code, and a malformed body is a counted ``WireError``, never a crash.

Finding 8 of issue 15: on 4a146b2 the messages travelled in the envelope's JSON header,
capped at 64 KiB, so a roster of about 445 devices could not be sent at all."""

from __future__ import annotations

import random

import pytest
import torch

from edge_client.secagg_client import MAX_MESSAGE_BYTES
from fedsa_common.privacy.secagg import SecAggError, wire
from fedsa_common.privacy.secagg.identity import Authority
from fedsa_common.privacy.secagg.messages import (
    KeyAuth,
    Roster,
    ShareDelivery,
    ShareKeys,
    SurvivorSet,
    UnmaskRequest,
    UnmaskResponse,
)
from fedsa_common.privacy.secagg.params import (
    MAX_ROSTER,
    VSS_MAX_ROSTER,
    RoundContext,
    threshold_for,
)
from fedsa_common.privacy.secagg.protocol import SecAggClient
from fedsa_common.privacy.secagg.share_crypto import CIPHERTEXT_BYTES, COMMIT_BYTES
from fedsa_common.wire.chunking import Reassembler, split_payload
from fedsa_common.wire.envelope import pack, unpack
from fedsa_common.wire.errors import WireError

HEADER_LIMIT = 65_536  # envelope.unpack's max_header_bytes
FRAME_LIMIT = 256_000  # a broker packet limit well below the messages' size
MAX_BYTES = 16_000_000


def _region(n: int) -> tuple[list[str], dict[str, tuple[bytes, bytes]], dict[str, KeyAuth]]:
    rng = random.Random(n)
    names = sorted(f"device-{i:04d}" for i in range(n))
    keys = {c: (rng.randbytes(32), rng.randbytes(32)) for c in names}
    auth = {c: KeyAuth(rng.randbytes(32), rng.randbytes(64), rng.randbytes(64)) for c in names}
    return names, keys, auth


def _through_the_wire(stage: str, client: str, msg: object) -> object:
    payload = wire.encode("fed", 3, "r1", client, stage, msg)  # type: ignore[arg-type]
    frames = split_payload(payload, FRAME_LIMIT)
    assert len(frames) >= 1
    assembler = Reassembler(max_message_bytes=MAX_BYTES)
    out = None
    for i, frame in enumerate(reversed(frames)):  # out of order, as a broker may deliver
        got = assembler.add(f"secagg/{client}", frame, now=float(i))
        if got is not None:
            out = got
    assert out == payload
    header, decoded = wire.decode(out, MAX_BYTES)
    assert (header.stage, header.client, header.round) == (stage, client, 3)
    # the header stays small whatever the region's size: the message is in the body
    header_len = int.from_bytes(payload[4:8], "big")
    assert header_len < 1024
    return decoded


def test_a_region_of_1000_round_trips_every_message():
    n = MAX_ROSTER
    names, keys, auth = _region(n)
    rng = random.Random(7)
    t = threshold_for(n, 2 / 3)
    roster = Roster(t, keys, auth)
    delivery = ShareDelivery(names[0], tuple(names),
                             {c: rng.randbytes(CIPHERTEXT_BYTES) for c in names},
                             {c: rng.randbytes(COMMIT_BYTES) for c in names})
    share_keys = ShareKeys(names[1], dict(delivery.ciphertexts), dict(delivery.commitments))
    survivors, dropped = tuple(names[: n - 300]), tuple(names[n - 300:])
    told = SurvivorSet(survivors, dropped)
    request = UnmaskRequest(survivors, dropped, {c: rng.randbytes(64) for c in survivors})
    answer = UnmaskResponse(names[1], {c: rng.randbytes(32) for c in survivors},
                            {c: rng.randbytes(32) for c in dropped})
    sizes = {}
    for stage, client, msg in (("roster", names[0], roster),
                               ("share_keys", names[1], share_keys),
                               ("share_delivery", names[0], delivery),
                               ("survivors", names[0], told),
                               ("unmask_request", names[0], request),
                               ("unmask_response", names[1], answer)):
        assert _through_the_wire(stage, client, msg) == msg
        sizes[stage] = len(wire.encode("fed", 3, "r1", client, stage, msg))  # type: ignore
    # each of these would have overflowed the 64 KiB header that carried them before
    assert sizes["roster"] > 5 * HEADER_LIMIT
    assert sizes["share_delivery"] > 2 * HEADER_LIMIT
    assert sizes["unmask_request"] > HEADER_LIMIT
    # a round of MAX_ROSTER shares without VSS (above VSS_MAX_ROSTER): every message fits
    # a device's message limit, the largest (the share delivery) with room to spare
    assert max(sizes.values()) < MAX_MESSAGE_BYTES / 20
    assert b'"vss"' not in wire.encode("fed", 3, "r1", names[0], "share_delivery", delivery)


def test_the_largest_delivery_with_vss_fits_a_devices_message_limit():
    """At ``VSS_MAX_ROSTER`` (t = 200) every dealer's 400 points come down to each
    member: about 5.6 MB, within ``MAX_BODY_BYTES`` and a device's 16 MB limit."""
    n = VSS_MAX_ROSTER
    names, _, _ = _region(n)
    t = threshold_for(n, 2 / 3)
    rng = random.Random(5)
    delivery = ShareDelivery(names[0], tuple(names),
                             {c: rng.randbytes(CIPHERTEXT_BYTES) for c in names},
                             {c: rng.randbytes(COMMIT_BYTES) for c in names},
                             {c: tuple(rng.randbytes(32) for _ in range(2 * t)) for c in names})
    size = len(wire.encode("fed", 3, "r1", names[0], "share_delivery", delivery))
    assert 2 * t * n * 32 < size < min(wire.MAX_BODY_BYTES, MAX_MESSAGE_BYTES)
    assert _through_the_wire("share_delivery", names[0], delivery) == delivery


def test_a_real_signed_advertisement_and_share_message_round_trip():
    ctx = RoundContext("fed", 3, "r1", 8)
    authority = Authority.generate()
    client = SecAggClient(ctx, "device-0001", identity=authority.issue("fed", "r1",
                                                                       "device-0001"))
    adv = client.advertise()
    assert _through_the_wire("advertise", "device-0001", adv) == adv


@pytest.mark.parametrize("body", [
    {"x": torch.zeros(3, dtype=torch.uint8), wire.BODY_TENSOR: torch.zeros(3, dtype=torch.uint8)},
    {wire.BODY_TENSOR: torch.zeros(3, dtype=torch.int32)},
    {wire.BODY_TENSOR: torch.frombuffer(bytearray(b"{not json"), dtype=torch.uint8)},
    {wire.BODY_TENSOR: torch.frombuffer(bytearray(b"[1, 2]"), dtype=torch.uint8)},
    {wire.BODY_TENSOR: torch.zeros(wire.MAX_BODY_BYTES + 1, dtype=torch.uint8)},
    {},
])
def test_a_malformed_body_is_a_wire_error(body):
    good = wire.encode("fed", 3, "r1", "device-0001", "survivors", SurvivorSet(("a",), ()))
    header = unpack(good, max_bytes=MAX_BYTES).header
    assert wire.decode(pack(header, unpack(good, max_bytes=MAX_BYTES).tensors), MAX_BYTES)
    data = pack(header, body)  # a valid envelope: the secagg layer must refuse its body
    with pytest.raises(WireError) as err:
        wire.decode(data, MAX_BYTES)
    assert err.value.reason in ("unexpected_tensor", "bad_tensor", "bad_body", "too_large",
                                "secagg_bad_message")


def test_feldman_commitments_round_trip_and_a_short_point_is_named():
    """Every dealer's ``2t`` commitment points travel in ``share_keys`` and, for all
    dealers, in each ``share_delivery``; the body stays within the ``VSS_BODY_BYTES``
    budget per (dealer, point) and a point of the wrong size names its field."""
    n = 60
    names, _, _ = _region(n)
    t = threshold_for(n, 2 / 3)
    rng = random.Random(3)
    points = {c: tuple(rng.randbytes(32) for _ in range(2 * t)) for c in names}
    delivery = ShareDelivery(names[0], tuple(names),
                             {c: rng.randbytes(CIPHERTEXT_BYTES) for c in names},
                             {c: rng.randbytes(COMMIT_BYTES) for c in names}, points)
    share_keys = ShareKeys(names[1], dict(delivery.ciphertexts), dict(delivery.commitments),
                           points[names[1]])
    assert _through_the_wire("share_delivery", names[0], delivery) == delivery
    assert _through_the_wire("share_keys", names[1], share_keys) == share_keys
    size = len(wire.encode("fed", 3, "r1", names[0], "share_delivery", delivery))
    assert 2 * t * n * 32 < size < 1024 * n + 4096 + 96 * n * t
    raw = share_keys.to_dict()
    raw["vss"] = [*raw["vss"][:3], b"\x01" * 31]
    with pytest.raises(SecAggError, match=r"vss\[3\] must be 32 bytes"):
        ShareKeys.from_dict(raw)
