"""A partial the cloud refuses is negatively acknowledged with its reason, and the region
stops resending it (issue 15, point 7).  Pure: the hubs are built but never connected;
their publishes are captured.  (Against a real broker: test_partial_nack_e2e.py.)"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import Ack, PartialHeader, Topics, encode_json, encode_message
from hub.aggregation import RunningSum
from hub.checkpoint import CloudState
from hub.cloud import CloudHub
from hub.cloud_intake import CloudIntake
from hub.process import Event
from hub.regional import RegionalHub
from tests.support.sessions import RecordingSession

SHAPES = {"l0.lora_A.weight": (2, 8)}
TOPICS = Topics("f")


def partial(value: float, seq: int = 0) -> tuple[PartialHeader, dict[str, torch.Tensor]]:
    header = PartialHeader(federation="f", round=3, region="north", base_version=2, seq=seq,
                           count=2, weight=20.0, accepted=["n1:3", "n2:3"])
    return header, {n: torch.full(s, value) for n, s in SHAPES.items()}


def test_the_cloud_answers_a_refused_partial_with_a_negative_ack(tmp_path: Path) -> None:
    cloud = CloudHub("mqtt://127.0.0.1:1", FederationConfig.model_validate(
        {"federation": {"name": "f"}}), tmp_path)
    state = CloudState(2, 2, {n: torch.zeros(s) for n, s in SHAPES.items()}, "h")
    cloud.inflight = CloudIntake(3, b"", {"north": ["n1", "n2"]}, 0.0, RunningSum.zeros(SHAPES))
    payload = encode_message(*partial(float("inf")))
    with pytest.raises(WireError):
        cloud.on_partial(Event("partial", TOPICS.partial("north"), payload, time.time()), state)
    assert cloud.pending_acks == [("north", Ack(kind="partial", id="north:3:0", accepted=False,
                                                reason="non_finite"))]
    assert cloud.counters["partials.refused"] == 1 and cloud.inflight.total.count == 0
    # a forged partial on another region's topic is refused without an answer to anyone
    with pytest.raises(WireError):
        cloud.on_partial(Event("partial", TOPICS.partial("south"), payload, time.time()), state)
    assert len(cloud.pending_acks) == 1


def test_the_region_stops_resending_a_refused_partial_and_counts_its_updates(
        tmp_path: Path) -> None:
    session = RecordingSession()
    hub = RegionalHub("mqtt://127.0.0.1:1", "f", "north", tmp_path,
                      session=session)  # type: ignore[arg-type]
    sent = session.published
    hub.outbox = {"north:3:0": partial(1.0), "north:3:1": partial(2.0, seq=1)}
    hub.resend(force=True)
    assert len(sent) == 2
    nack = Ack(kind="partial", id="north:3:0", accepted=False, reason="non_finite")
    hub.handle(Event("partial_ack", TOPICS.partial_ack("north"), encode_json(nack), 0.0))
    assert set(hub.outbox) == {"north:3:1"} and hub.dirty
    assert hub.counters == Counter({"partials.sent": 2, "bytes.forwarded": hub.counters[
        "bytes.forwarded"], "partials.refused": 1, "updates.lost": 2})
    hub.resend(force=True)
    assert len(sent) == 3  # only the partial still waiting for its answer


def test_a_partial_that_is_not_finite_travels_empty_and_its_updates_are_counted_lost(
        tmp_path: Path) -> None:
    """The last check before sending (the aggregators' overflow guard makes it moot): the
    cloud would refuse non-finite sums, so the region sends the round's close without them."""
    hub = RegionalHub("mqtt://127.0.0.1:1", "f", "north", tmp_path)
    header, sums = hub.emptied("north:3:0", *partial(float("inf")))
    assert (header.count, header.weight, header.accepted, header.seq) == (0, 0.0, [], 0)
    assert all(float(t.abs().sum()) == 0 for t in sums.values())
    assert hub.counters["updates.lost"] == 2 and hub.counters["partials.non_finite"] == 1
