"""Issue 15, point 7, against a real broker and real cloud and regional hub processes: one
device cannot make the cloud refuse its region's round, and a partial the cloud refuses is
answered with a negative acknowledgement, after which the region stops resending it.

The test plays two devices itself (hand-made dense updates, no model): ``d0`` sends an
honest update, ``d1`` one of 3e38 in every coordinate, which used to be accepted and to
overflow the region's float32 partial to inf.  Before the hubs start, the region's state
directory gets an unacknowledged partial of round 7 (as a region left from an earlier run
of the federation would hold), which the cloud, in round 1, refuses as ``future``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import (
    Ack,
    PartialHeader,
    RoundSummary,
    Topics,
    decode_json,
)
from hub.cloud import initial_global
from hub.regional import RegionalHub
from tests.support.scripted_devices import ScriptedDevices, dense_update

pytestmark = pytest.mark.integration

FED = "nack"
REGION = "r1"  # what the start_hubs fixture serves


def config() -> FederationConfig:
    return FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 1},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
        "fedsa_lora": {"compression": {"method": "dense"}},
        "rounds": 1,
        "sampling": {"min_clients": 2, "wait_for_clients_s": 120},
        "round_policy": {"deadline_s": 60, "resend_s": 1},
    })


def leftover_partial(state_dir: Path, cfg: FederationConfig) -> str:
    """Persist an unacknowledged partial of round 7 where the regional hub will load it."""
    hub = RegionalHub("mqtt://127.0.0.1:1", FED, REGION, state_dir)
    header = PartialHeader(federation=FED, round=7, region=REGION, base_version=6, seq=0,
                           count=0, weight=0.0, accepted=[])
    hub.outbox["r1:7:0"] = (header, {n: torch.zeros_like(t)
                                     for n, t in initial_global(cfg).items()})
    hub.persist()
    return "r1:7:0"


def test_a_huge_update_is_refused_and_a_refused_partial_is_not_resent(tmp_path, broker,
                                                                      start_hubs):
    cfg = config()
    pid = leftover_partial(tmp_path / "regional", cfg)
    topics = Topics(FED)
    devices = ScriptedDevices(broker.url, FED, framed=(topics.announce,), raw=(
        topics.partial_ack(REGION), topics.ack(REGION, "d0"), topics.ack(REGION, "d1"),
        topics.summary))
    procs = start_hubs(broker.url, cfg)
    devices.hubs = procs
    wait_for = devices.wait_for

    def refusals() -> int:
        return len(re.findall(rf"refused partial {pid} ", (tmp_path / "cloud.log").read_text()))

    def ack_on(topic_wanted: str):
        return lambda topic, payload: (decode_json(Ack, payload)
                                       if topic == topic_wanted and payload else None)

    try:
        for client in ("d0", "d1"):
            devices.presence(REGION, client)
        header, env = devices.running_announcement()
        # the cloud refuses the leftover partial and says so; the region drops it
        nack = wait_for("negative ack", ack_on(topics.partial_ack(REGION)), timeout=60)
        assert (nack.id, nack.accepted, nack.reason) == (pid, False, "future")
        time.sleep(1.5)  # copies the region sent before the answer reached it
        refused = refusals()
        time.sleep(4)  # four resend intervals: a region still resending would be refused again
        assert refusals() == refused >= 1

        shapes = {n: tuple(t.shape) for n, t in env.tensors.items()}
        for client, value in (("d0", 0.01), ("d1", 3e38)):
            *_, payload = dense_update(header, REGION, client,
                                       {n: torch.full(s, value) for n, s in shapes.items()}, 10)
            devices.session.publish(topics.update(REGION, client), payload, timeout=30)
            ack = wait_for(f"{client}'s ack", ack_on(topics.ack(REGION, client)))
            assert ack.accepted == (client == "d0"), ack
        assert ack.reason == "value_bound"
        devices.presence(REGION, "d1", online=False)

        summary = wait_for("round summary", lambda topic, payload: (
            decode_json(RoundSummary, payload, max_bytes=16_000_000)
            if topic == topics.summary and payload else None))
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        devices.close()

    assert summary.applied_step and summary.applied == ["d0:1"]
    assert summary.rejected.get("value_bound") == 1
    assert refusals() == refused
    regional_log = (tmp_path / "regional.log").read_text()
    assert f"cloud refused partial {pid} (future); not resending it" in regional_log
    assert "non_finite" not in (tmp_path / "cloud.log").read_text()
