"""A device whose link goes down in the middle of a round loses nothing: the update it sent
into the outage is resent until the hub acknowledges it, and the federation finishes with
that update applied.

Starts a real broker (Mosquitto when installed, else embedded amqtt) and real cloud and
regional hub processes; the one device runs in this process with its own session wrapped
in a ``SimulatedLink`` whose schedule the test moves into an offline window just as the
device sends its first update.
"""

from __future__ import annotations

import threading
import time

import pytest

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.link_schedule import LinkSchedule
from fedsa_common.net.simulated_link import SimulatedLink
from fedsa_common.net.transport import MqttSession
from fedsa_common.process.atomic import read_json
from fedsa_common.wire.protocol import Metrics
from scenarios.monitor import Monitor

pytestmark = pytest.mark.integration

FED = "linkchurn"
ROUNDS = 2
OUTAGE_AT, OUTAGE_S = 1000.0, 3.0


class JumpClock:
    """The link's clock: 0 until the test jumps it to ``OUTAGE_AT``, real seconds from there
    on, so that the outage starts exactly when the device sends, however long loading and
    training took."""

    def __init__(self) -> None:
        self.jumped_at: float | None = None

    def jump(self) -> None:
        self.jumped_at = time.monotonic()

    def __call__(self) -> float:
        if self.jumped_at is None:
            return 0.0
        return OUTAGE_AT + time.monotonic() - self.jumped_at


class OutageInFirstRound(Device):
    """A device over a simulated link that goes down as it sends its first update."""

    clock: JumpClock
    link: SimulatedLink

    def _own_session(self, broker_url: str, payload_limit: int) -> MqttSession:
        self.clock = JumpClock()
        schedule = LinkSchedule(offline=((OUTAGE_AT, OUTAGE_AT + OUTAGE_S),))
        self.link = SimulatedLink(super()._own_session(broker_url, payload_limit), schedule,
                                  clock=self.clock)
        return self.link  # type: ignore[return-value]

    def send(self, round_: int, payload: bytes, metrics: Metrics) -> None:
        if round_ == 1:
            self.clock.jump()
        super().send(round_, payload, metrics)


def test_an_update_sent_into_an_outage_is_resent_and_applied(tmp_path, broker, start_hubs):
    config = FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 2},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
        "rounds": ROUNDS,
        "training": {"local_steps": 2, "batch_size": 8, "lr": 0.001},
        "sampling": {"min_clients": 1},
        "round_policy": {"deadline_s": 120, "resend_s": 1.0},
    })
    monitor = Monitor(broker.url, FED)
    monitor.start()
    procs = start_hubs(broker.url, config)
    data = DataSpec(source="20newsgroups", classes=3, partition="iid", num_clients=1,
                    shard=0, max_train=24, max_test=12)
    device = OutageInFirstRound(
        DeviceSpec(client="d0", region="r1", federation=FED, data=data,
                   state_dir=tmp_path / "d0"), broker.url, ModelHost())
    try:
        thread = threading.Thread(target=device.run, daemon=True)
        thread.start()
        thread.join(timeout=240)
        assert not thread.is_alive()
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        monitor.stop()

    # the link really was down while the device sent round 1's update and metrics
    assert device.link.dropped["published"] >= 2
    assert device.state.last_round == ROUNDS
    with monitor.lock:
        summaries = dict(monitor.obs.summaries)
        acked = set(monitor.obs.acked)
    assert {"d0:1", "d0:2"} <= acked
    for round_ in range(1, ROUNDS + 1):  # nothing acknowledged went missing
        assert summaries[round_].applied == [f"d0:{round_}"]
    assert read_json(tmp_path / "cloud" / "checkpoint.json")["round"] == ROUNDS
