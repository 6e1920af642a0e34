"""The simulated link around a session (here the recording fake): publishes held back by
the scheduled delay, and everything lost either way while the link is down."""

from __future__ import annotations

from fedsa_common.net.link_schedule import LinkSchedule
from fedsa_common.net.simulated_link import SimulatedLink
from tests.support.sessions import RecordingSession


class ManualClock:
    """The seconds the link reads its schedule at, set by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def link(schedule: LinkSchedule) -> tuple[SimulatedLink, RecordingSession, ManualClock,
                                          list[float]]:
    inner, clock, slept = RecordingSession(), ManualClock(), []
    return (SimulatedLink(inner, schedule, clock=clock, sleep=slept.append), inner, clock,
            slept)


def test_an_always_up_link_passes_everything_through_unchanged():
    sim, inner, _, slept = link(LinkSchedule())
    got: list[tuple[str, bytes]] = []
    sim.subscribe("a/#", lambda t, p: got.append((t, p)))
    sim.connect()
    assert sim.publish("u", b"123") == 3
    sim.publish_raw("m", b"x", retain=True)
    assert sim.publish_raw_many([("a1", b"1"), ("a2", b"22")]) == 3
    inner.subscribed["a/#"]("a/b", b"in")
    assert inner.sent == [("u", b"123"), ("m", b"x"), ("a1", b"1"), ("a2", b"22")]
    assert got == [("a/b", b"in")]
    assert inner.state == "connected" and sim.connected
    assert sim.broker_url == inner.broker_url and sim.payload_limit == inner.payload_limit
    assert slept == [] and not sim.dropped


def test_while_offline_publishes_and_arrivals_are_lost_then_the_link_recovers():
    sim, inner, clock, _ = link(LinkSchedule(offline=((10.0, 20.0),)))
    got: list[bytes] = []
    sim.subscribe_raw("ack", lambda _t, p: got.append(p))
    deliver = inner.subscribed["ack"]
    sim.publish("u", b"before")
    clock.now = 110.0  # 10 s after the link started: down
    assert not sim.connected and sim.offline
    assert sim.publish("u", b"lost") == len(b"lost")  # the owner is not told
    sim.publish_raw_many([("a", b"1"), ("b", b"2")])
    deliver("ack", b"lost ack")
    clock.now = 120.0  # recovered
    assert sim.connected
    sim.publish("u", b"after")
    deliver("ack", b"ack")
    assert inner.published == [("u", b"before"), ("u", b"after")] and inner.raw == []
    assert got == [b"ack"]
    assert sim.dropped == {"published": 3, "received": 1}


def test_each_publish_waits_its_scheduled_delay_first():
    schedule = LinkSchedule(publish_delay_s=0.5, delay_jitter_s=0.2, seed=1)
    sim, inner, _, slept = link(schedule)
    sim.publish("u", b"1")
    sim.publish_raw("m", b"2")
    sim.publish_raw_many([("a", b"3"), ("b", b"4")])  # one batch, one delay
    assert slept == [schedule.publish_delay(i) for i in range(3)]
    assert len(inner.sent) == 4


def test_a_publish_delayed_into_an_offline_window_is_lost():
    inner, clock = RecordingSession(), ManualClock()

    def sleep(seconds: float) -> None:  # the delay takes clock time
        clock.now += seconds

    sim = SimulatedLink(inner, LinkSchedule(offline=((1.0, 9.0),), publish_delay_s=2.0),
                        clock=clock, sleep=sleep)
    sim.publish("u", b"late")
    assert inner.sent == [] and sim.dropped["published"] == 1


def test_unsubscribing_a_handler_removes_the_gate_put_before_it():
    sim, inner, _, _ = link(LinkSchedule())

    def keep(_t: str, _p: bytes) -> None: ...

    sim.subscribe("g", keep)
    assert sim.unsubscribe("g", keep)
    assert inner.unsubscribed == ["g"] and "g" not in inner.subscribed
    assert not sim.unsubscribe("g", keep)  # nothing left through this link
    sim.subscribe_raw("h", keep)
    assert sim.unsubscribe("h") and inner.unsubscribed == ["g", "h"]


def test_close_and_drop_reach_the_inner_session():
    sim, inner, _, _ = link(LinkSchedule())
    sim.drop()
    assert inner.state == "dropped"
    sim.close()
    assert inner.state == "closed"
