"""Many MQTT sessions served by one thread (fedsa_common/net/session_loop.py) against a
real Mosquitto: past the 1,024 descriptors select() can watch, through a broker restart, and
with the will semantics of a threaded session."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from fedsa_common.net.broker import BrokerProcess, free_port, mosquitto_path, start_broker
from fedsa_common.net.fd_limit import ensure_sessions_fit
from fedsa_common.net.session_loop import LoopSession, SessionLoop
from fedsa_common.net.transport import MqttSession, Will

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

MANY = 1_100  # more sessions than select() could watch sockets for (descriptors < 1024)


@pytest.fixture
def loop() -> Iterator[SessionLoop]:
    running = SessionLoop(name="test-loop")
    yield running
    running.close(timeout=10)


@pytest.fixture(scope="module")
def mosquitto() -> Iterator[BrokerProcess]:
    ensure_sessions_fit(MANY + 50, what="test sessions")  # the broker inherits the limit
    with start_broker("mosquitto") as running:
        yield running


def test_one_thread_serves_more_sessions_than_select_could_watch(
        mosquitto: BrokerProcess, loop: SessionLoop) -> None:
    topic = f"test/{uuid.uuid4().hex[:10]}"
    with MqttSession(mosquitto.url, f"pub-{topic[5:]}", clean_session=True) as pub:
        pub.connect(timeout=10)
        pub.publish(f"{topic}/retained", b"r" * 20_000, retain=True)
        got: set[int] = set()
        lock = threading.Lock()

        def handler(i: int) -> Callable[[str, bytes], None]:
            def on_message(_topic: str, payload: bytes) -> None:
                if len(payload) == 20_000:
                    with lock:
                        got.add(i)
            return on_message

        threads_before = threading.active_count()
        sessions = [LoopSession(mosquitto.url, f"many-{i}-{topic[5:]}", loop=loop,
                                clean_session=True) for i in range(MANY)]
        for i, s in enumerate(sessions):
            s.subscribe(f"{topic}/retained", handler(i))
            s.start()
        for s in sessions:
            s.await_connected(120)
        assert threading.active_count() == threads_before + 1  # the loop's thread only
        assert max(s._client.socket().fileno() for s in sessions) >= 1024
        deadline = time.monotonic() + 60
        while len(got) < MANY and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == set(range(MANY))

        # a publish from another thread goes out through the loop and is acknowledged
        inbox: queue.Queue[bytes] = queue.Queue()
        pub.subscribe_raw(f"{topic}/last", lambda _t, p: inbox.put(p))
        sessions[-1].publish_raw(f"{topic}/last", b"from the last", timeout=10)
        assert inbox.get(timeout=10) == b"from the last"
        for s in sessions:
            s.close()
        assert loop.close(timeout=30) and loop.sessions == 0
        pub.clear_retained(f"{topic}/retained")


def test_handlers_publish_on_the_loop_thread_and_a_drop_leaves_the_will(
        mosquitto: BrokerProcess, loop: SessionLoop) -> None:
    topic = f"test/{uuid.uuid4().hex[:10]}"
    seen: queue.Queue[tuple[str, bytes]] = queue.Queue()
    with MqttSession(mosquitto.url, f"watch-{topic[5:]}", clean_session=True) as watch:
        watch.subscribe_raw(f"{topic}/#", lambda t, p: seen.put((t, p)))
        watch.connect(timeout=10)
        echo = LoopSession(mosquitto.url, f"echo-{topic[5:]}", loop=loop,
                           will=Will(f"{topic}/will/echo", b"gone"))
        echo.subscribe_raw(f"{topic}/ping", lambda _t, p: echo.publish_raw(
            f"{topic}/pong", p))  # on the loop thread: queued, never waited for
        polite = LoopSession(mosquitto.url, f"polite-{topic[5:]}", loop=loop,
                             will=Will(f"{topic}/will/polite", b"gone"))
        echo.connect(timeout=10)
        polite.connect(timeout=10)
        watch.publish_raw(f"{topic}/ping", b"1")
        assert _next(seen, f"{topic}/pong") == b"1"
        polite.close()  # a DISCONNECT: no will
        echo.drop()  # the connection just ends: the will
        assert _next(seen, f"{topic}/will/echo") == b"gone"
        assert loop.close(timeout=10)
        with contextlib.suppress(queue.Empty):
            while True:
                assert seen.get(timeout=0.5)[0] != f"{topic}/will/polite"


def test_a_loop_session_reconnects_and_resubscribes_after_a_broker_restart(
        loop: SessionLoop) -> None:
    port, topic = free_port(), f"test/{uuid.uuid4().hex[:10]}"
    broker = start_broker("mosquitto", port=port)
    connects: list[float] = []
    inbox: queue.Queue[bytes] = queue.Queue()
    sub = LoopSession(broker.url, f"sub-{topic[5:]}", loop=loop, reconnect_min_s=0.1,
                      reconnect_max_s=0.5, on_connect=lambda: connects.append(1))
    pub = LoopSession(broker.url, f"pub-{topic[5:]}", loop=loop, reconnect_min_s=0.1,
                      reconnect_max_s=0.5)
    try:
        sub.subscribe(f"{topic}/x", lambda _t, p: inbox.put(p))
        sub.connect(timeout=10)
        pub.connect(timeout=10)
        pub.publish(f"{topic}/x", b"before")
        assert inbox.get(timeout=10) == b"before"
        broker.stop()
        deadline = time.monotonic() + 10
        while (sub.connected or pub.connected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sub.connected and not pub.connected
        broker = start_broker("mosquitto", port=port)  # forgot every session
        received = None
        deadline = time.monotonic() + 20
        while received is None and time.monotonic() < deadline:
            if sub.connected and pub.connected:
                pub.publish(f"{topic}/x", b"after", timeout=5)
                with contextlib.suppress(queue.Empty):
                    received = inbox.get(timeout=0.5)
            else:
                time.sleep(0.05)
        assert received == b"after" and len(connects) == 2
    finally:
        sub.close()
        pub.close()
        loop.close(timeout=10)
        broker.stop()


def _next(seen: queue.Queue[tuple[str, bytes]], topic: str) -> bytes:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        t, payload = seen.get(timeout=max(0.01, deadline - time.monotonic()))
        if t == topic:
            return payload
    raise AssertionError(f"nothing on {topic}")
