"""A device's resend timer measures intervals on the monotonic clock: a step of the wall
clock (NTP, a suspended laptop's clock being set) neither fires resends early nor delays
them."""

from __future__ import annotations

import time
from pathlib import Path

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from fedsa_common.wire.protocol import Metrics, decode_json
from tests.support.sessions import RecordingSession


def pending_device(state_dir: Path) -> tuple[Device, RecordingSession]:
    """A device with an update waiting for its acknowledgement, resend due now; its
    session records what it publishes (no broker; no model is loaded)."""
    session = RecordingSession()
    spec = DeviceSpec(client="d1", region="eu", federation="f",
                      data=DataSpec(source="20newsgroups"), state_dir=state_dir)
    dev = Device(spec, "mqtt://127.0.0.1:1", ModelHost(),
                 session=session)  # type: ignore[arg-type]
    dev.pending, dev.pending_round = b"update", 1
    dev.backoff, dev.next_resend = 5.0, 0.0  # due now
    return dev, session


def test_a_wall_clock_step_forward_does_not_fire_a_resend(monkeypatch, tmp_path):
    dev, session = pending_device(tmp_path)
    dev.resend_pending()
    assert len(session.published) == 1  # due: sent, next one in about 10 s
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 3600.0)  # the clock jumps an hour
    dev.resend_pending()
    assert len(session.published) == 1


def test_a_sent_update_waits_for_its_ack_and_its_metrics_count_the_bytes(tmp_path):
    dev, session = pending_device(tmp_path)
    dev.pending = None
    metrics = Metrics(federation="f", client="d1", region="eu", round=2, accuracy=0.5,
                      n_test=4)
    dev.send(2, b"payload", metrics)
    assert session.published == [(dev.topics.update("eu", "d1"), b"payload")]
    (topic, body), = session.raw
    assert topic == dev.topics.metrics("eu", "d1")
    assert decode_json(Metrics, body).bytes_up == len(b"payload")
    assert (dev.pending, dev.pending_round) == (b"payload", 2)


class TimingOutSession(RecordingSession):
    """A broker that acknowledges nothing while ``down`` (an outage longer than the
    publish timeout): publishes raise ``TimeoutError`` as ``MqttSession``'s do."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def publish(self, topic: str, payload: bytes, **kw: object) -> int:
        if self.down:
            raise TimeoutError(f"publish {topic!r}: only 0 of 1 frames acknowledged")
        return super().publish(topic, payload)

    def publish_raw(self, topic: str, payload: bytes, **kw: object) -> int:
        if self.down:
            raise TimeoutError(f"publish_raw {topic!r}: not acknowledged")
        return super().publish_raw(topic, payload)


def test_an_update_whose_publish_times_out_is_kept_and_resent(tmp_path):
    """An outage outlasting the publish timeout must not end the device's run: the update
    stays pending and the resend carries it once the link is back."""
    session = TimingOutSession()
    spec = DeviceSpec(client="d1", region="eu", federation="f",
                      data=DataSpec(source="20newsgroups"), state_dir=tmp_path)
    dev = Device(spec, "mqtt://127.0.0.1:1", ModelHost(),
                 session=session)  # type: ignore[arg-type]
    metrics = Metrics(federation="f", client="d1", region="eu", round=1, accuracy=0.5,
                      n_test=4)
    dev.send(1, b"payload", metrics)  # raised out of run() before
    assert (dev.pending, dev.pending_round) == (b"payload", 1)
    assert session.sent == []
    session.down = False
    dev.next_resend = 0.0  # due now
    dev.resend_pending()
    assert session.published == [(dev.topics.update("eu", "d1"), b"payload")]
