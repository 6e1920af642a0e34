"""A device that loses the federation's final announcement still learns that it finished.

The announcement is retained, but the broker sends a retained message to a subscriber once,
when it subscribes; a link that loses the final announcement without the connection
closing (no reconnect, so no new subscription) would leave the device waiting for ever.
After two round deadlines without an announcement the device reads the retained one again.

A real broker (Mosquitto when installed, else embedded amqtt); no hubs: the test publishes
the announcements as the cloud does (retained, chunked), and the device, which is selected
for nothing, runs in this process with its own session seen through a ``SimulatedLink``
that the test takes offline exactly while the final announcement is published.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from edge_client.round_hooks import NoHooks
from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.link_schedule import LinkSchedule
from fedsa_common.net.simulated_link import SimulatedLink
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.protocol import AnnounceHeader, Topics, encode_message
from tests.support.sessions import RecordingSession

FED = "lostfinal"
DEADLINE_S = 3.0  # the device reads the announcement again after 6 s of silence
CONFIG = FederationConfig.model_validate({"federation": {"name": FED}, "rounds": 1})
OFFLINE = 1000.0  # the link's schedule: offline from here, for good


def announcement(status: str) -> bytes:
    header = AnnounceHeader(federation=FED, round=1, version=0, status=status,
                            selected={"r1": ["someone-else"]},
                            config=CONFIG.model_dump(mode="json"),
                            config_hash=CONFIG.digest(), deadline_s=DEADLINE_S,
                            issued_at=time.time(), shared=[])
    return encode_message(header, {})


class SwitchedLink(NoHooks):
    """Hooks whose link is up until ``down`` and again after ``up`` (the schedule's clock
    is set by the test, not by time)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.link: SimulatedLink | None = None

    def down(self) -> None:
        self.t = OFFLINE

    def up(self) -> None:
        self.t = 0.0

    def over_link(self, session: MqttSession) -> MqttSession:
        self.link = SimulatedLink(session, LinkSchedule(offline=((OFFLINE, OFFLINE + 1),)),
                                  clock=lambda: self.t)
        return self.link  # type: ignore[return-value]


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    until = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.05)


@pytest.mark.integration
def test_a_final_announcement_lost_on_the_link_is_read_again(tmp_path, broker):
    hooks = SwitchedLink()
    spec = DeviceSpec(client="d0", region="r1", federation=FED,
                      data=DataSpec(source="20newsgroups"), state_dir=tmp_path / "d0")
    device = Device(spec, broker.url, ModelHost(), hooks=hooks)
    cloud = MqttSession(broker.url, client_id="test-cloud", clean_session=True)
    cloud.connect()
    topic = Topics(FED).announce
    thread = threading.Thread(target=device.run, daemon=True)
    thread.start()
    try:
        cloud.publish(topic, announcement("running"), retain=True)
        wait_until(lambda: device.silence_s == 2 * DEADLINE_S)  # followed round 1
        assert hooks.link is not None
        hooks.down()
        cloud.publish(topic, announcement("finished"), retain=True)
        link = hooks.link
        wait_until(lambda: link.dropped["received"] >= 1)  # the link lost it
        hooks.up()
        thread.join(timeout=60)  # waits for ever without the reading again
        assert not thread.is_alive()
        assert device.done.is_set()
    finally:
        device.stop()
        cloud.clear_retained(topic)
        cloud.close()


def test_silence_reads_the_retained_announcement_again_once(tmp_path):
    session = RecordingSession()
    spec = DeviceSpec(client="d0", region="r1", federation=FED,
                      data=DataSpec(source="20newsgroups"), state_dir=tmp_path)
    device = Device(spec, "mqtt://127.0.0.1:1", ModelHost(),
                    session=session)  # type: ignore[arg-type]
    topic = device.topics.announce
    now = device.heard_at + device.silence_s - 1.0
    device.reread_if_silent(now)  # not silent long enough
    assert session.unsubscribed == []
    device.reread_if_silent(now + 1.0)
    assert session.unsubscribed == [topic] and topic in session.subscribed
    device.reread_if_silent(now + 1.5)  # the silence counts anew from the reading
    assert session.unsubscribed == [topic]
