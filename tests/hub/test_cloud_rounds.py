"""How the cloud hub closes a round and what step it applies, on the real ``CloudHub``
(no broker: a recording session; partials go in as the events its round loop handles):

* asynchronous mode (FedBuff) applies one server step per buffer of ``buffer_size``
  updates, not before, each partial weighted by 1/sqrt(1+tau) for the ``tau`` versions its
  base is behind, the next buffer counted afresh;
* over-selection closes a synchronous round once its target count arrived, before every
  selected region sent its final partial (without over-selection the round stays open);
* ``late: stale_weight`` folds a previous round's partial into the round in flight at
  1/sqrt(1+tau), where ``late: drop`` acknowledges it as late and leaves it out.

``hub/cloud_intake.py``'s own tests check the intake's arithmetic; these check that the hub
decodes, closes and steps by it, and says so in the round's summary.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import (
    Ack,
    PartialHeader,
    RoundSummary,
    Topics,
    decode_json,
    encode_message,
)
from hub.checkpoint import CloudState
from hub.cloud import CloudHub
from hub.process import Event
from tests.support.sessions import RecordingSession

SHAPES = {"l0.lora_A.weight": (2, 3)}
TOPICS = Topics("f")
ONLINE = {"n1": "north", "n2": "north", "s1": "south", "s2": "south"}


def cloud_at_version(tmp_path: Path, version: int, **policy: Any
                     ) -> tuple[CloudHub, CloudState, RecordingSession]:
    """A cloud whose last completed round (and global version) is ``version``, every
    ``ONLINE`` device online under a serving regional hub; global parameters zero, server
    learning rate 1 (so a step adds the round's mean)."""
    config = FederationConfig.model_validate({
        "federation": {"name": "f"}, "server_lr": 1.0, "round_policy": policy,
        **({"sampling": {"clients_per_round": 2}} if "over_select" in policy else {})})
    session = RecordingSession()
    cloud = CloudHub("mqtt://recording", config, tmp_path,
                     session=session)  # type: ignore[arg-type]
    cloud.online = dict(ONLINE)
    for region in set(ONLINE.values()):
        cloud.region_hubs.on_status(region, True)
    state = CloudState(version, version, {n: torch.zeros(s) for n, s in SHAPES.items()},
                       config.digest())
    return cloud, state, session


def announce(cloud: CloudHub, state: CloudState) -> None:
    """Open the next round as ``run_round`` does."""
    rnd = state.round + 1
    cloud.announce(state, "running", cloud.sample(rnd, cloud.selectable()))


def send(cloud: CloudHub, state: CloudState, region: str, round_: int, base_version: int,
         value: float, count: int = 1, final: bool = False, seq: int = 0) -> None:
    """A regional partial of ``count`` updates of one sample each, all equal to ``value``
    (so its sums are ``count * value``; its update ids count from ``seq + 1``), handled as
    the round loop handles it."""
    header = PartialHeader(federation="f", round=round_, region=region,
                           base_version=base_version, seq=seq, final=final, count=count,
                           weight=float(count),
                           accepted=[f"{region[0]}{seq + i + 1}:{round_}"
                                     for i in range(count)])
    payload = encode_message(header, {n: torch.full(s, count * value)
                                      for n, s in SHAPES.items()})
    cloud.handle_event(Event("partial", TOPICS.partial(region), payload, time.time()), state)
    cloud.flush_acks()


def close(cloud: CloudHub, state: CloudState, session: RecordingSession) -> RoundSummary:
    assert cloud.inflight is not None
    cloud.finish_round(state, cloud.inflight)
    _topic, payload = [m for m in session.raw if m[0] == TOPICS.summary][-1]
    return decode_json(RoundSummary, payload)


def acks(session: RecordingSession) -> list[Ack]:
    return [decode_json(Ack, p) for t, p in session.raw if t.startswith(f"{TOPICS.base}/ack/")]


def global_value(state: CloudState) -> float:
    values = state.params["l0.lora_A.weight"]
    assert bool((values == values[0, 0]).all())
    return float(values[0, 0])


def test_fedbuff_steps_once_per_buffer_weighting_each_partial_by_its_staleness(tmp_path):
    cloud, state, session = cloud_at_version(tmp_path, 4, mode="async", buffer_size=3)
    announce(cloud, state)  # server step 5
    send(cloud, state, "north", 5, base_version=4, value=1.0, count=2)  # tau 0
    assert not cloud.round_closed()  # 2 of 3 buffered: no step yet
    send(cloud, state, "south", 3, base_version=1, value=4.0)  # tau 3: weight 1/2
    assert cloud.round_closed()
    summary = close(cloud, state, session)
    assert summary.applied_step and summary.mode == "async"
    assert sorted(summary.applied) == ["n1:5", "n2:5", "s1:3"]
    # (2 * 1.0 + 0.5 * 4.0) / (2 + 0.5): the stale update counts half
    assert state.version == 5 and global_value(state) == pytest.approx(4.0 / 2.5)

    announce(cloud, state)  # the next buffer starts empty
    assert cloud.inflight is not None and cloud.inflight.total.count == 0
    send(cloud, state, "north", 5, base_version=4, value=1.0, seq=2)  # now tau 1
    send(cloud, state, "south", 6, base_version=5, value=3.0)
    assert not cloud.round_closed()
    send(cloud, state, "south", 6, base_version=5, value=3.0, seq=1)
    assert cloud.round_closed()
    close(cloud, state, session)
    w = 1 / math.sqrt(2)
    assert state.version == 6
    assert global_value(state) == pytest.approx(1.6 + (w * 1.0 + 2 * 3.0) / (w + 2))
    assert all(a.accepted and a.reason is None for a in acks(session))


@pytest.mark.parametrize("over_select", [1.5, 1.0])
def test_over_selection_closes_the_round_once_its_target_arrived(tmp_path, over_select):
    cloud, state, session = cloud_at_version(tmp_path, 0, over_select=over_select)
    announce(cloud, state)
    assert cloud.inflight is not None
    selected = cloud.inflight.selected
    assert sum(map(len, selected.values())) == (3 if over_select > 1 else 2)
    assert cloud.target_updates() == (2 if over_select > 1 else None)
    region = sorted(selected)[0]
    send(cloud, state, region, 1, base_version=0, value=1.0)
    assert not cloud.round_closed()
    send(cloud, state, region, 1, base_version=0, value=3.0, seq=1)
    # two updates, no region's final partial yet: only the over-selected round is done
    assert cloud.round_closed() is (over_select > 1)
    if over_select == 1:
        for r in selected:
            send(cloud, state, r, 1, base_version=0, value=0.0, count=0, final=True, seq=2)
        assert cloud.round_closed()
    summary = close(cloud, state, session)
    assert summary.applied_step and len(summary.applied) == 2
    assert summary.regions_reported == ([] if over_select > 1 else sorted(selected))
    assert global_value(state) == pytest.approx(2.0)


@pytest.mark.parametrize("late", ["stale_weight", "drop"])
def test_a_previous_rounds_partial_is_weighted_or_dropped_by_the_late_policy(tmp_path, late):
    cloud, state, session = cloud_at_version(tmp_path, 4, late=late)
    announce(cloud, state)  # round 5 on version 4
    send(cloud, state, "south", 4, base_version=3, value=3.0)  # round 4's, one version old
    send(cloud, state, "north", 5, base_version=4, value=1.0, final=True)
    assert not cloud.round_closed()  # south's final partial of round 5 is still due
    send(cloud, state, "south", 5, base_version=4, value=0.0, count=0, final=True, seq=1)
    assert cloud.round_closed()
    summary = close(cloud, state, session)
    late_ack = acks(session)[0]
    assert late_ack.id == "south:4:0" and late_ack.accepted
    w = 1 / math.sqrt(2)
    if late == "stale_weight":
        assert late_ack.reason is None and sorted(summary.applied) == ["n1:5", "s1:4"]
        assert global_value(state) == pytest.approx((1.0 + w * 3.0) / (1 + w))
    else:
        assert late_ack.reason == "late" and summary.applied == ["n1:5"]
        assert summary.dropped == {"s1:4": "late"}
        assert global_value(state) == pytest.approx(1.0)
