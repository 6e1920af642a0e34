"""Reading a hub's retained status, and the reminder of what a process still waits for
(pure)."""

from __future__ import annotations

import pytest

from fedsa_common.wire.errors import WireError
from fedsa_common.wire.liveness import Reminder, hub_serving, status_serving


@pytest.mark.parametrize(("payload", "serving"), [
    (b'{"online": true, "round": 2}', True),
    (b'{"online": false}', False),  # the will of a hub that died
    (b'{"online": true, "finished": true}', False),  # the federation ended
    (b'{"online": "yes"}', False),
    (b"", False),  # a cleared status
])
def test_hub_serving_reads_online_and_finished(payload: bytes, serving: bool) -> None:
    assert hub_serving(payload) is serving


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff"])
def test_a_status_that_is_not_a_json_object_is_bad_input(payload: bytes) -> None:
    with pytest.raises(WireError) as err:
        hub_serving(payload)
    assert err.value.reason == "bad_status"


def test_status_serving_on_a_decoded_body() -> None:
    assert status_serving({"online": True})
    assert not status_serving({"online": True, "finished": True})


def test_reminder_is_due_every_interval_from_its_start() -> None:
    r = Reminder(10.0, start=100.0)
    assert not r.due(105.0)
    assert r.due(110.0)
    assert not r.due(115.0)
    assert r.due(121.0)  # the next one counts from when this one was given
    assert not r.due(130.0)
    with pytest.raises(ValueError, match="every_s"):
        Reminder(0.0, start=0.0)
