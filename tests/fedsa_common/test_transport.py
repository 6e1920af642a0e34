"""MqttSession against real brokers; Mosquitto and the embedded amqtt broker must behave alike."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fedsa_common.net.broker import (
    BrokerProcess,
    free_port,
    mosquitto_path,
    mqtt_ping,
    parse_broker_url,
    start_broker,
)
from fedsa_common.net.transport import MqttSession, Will
from fedsa_common.wire.chunking import split_payload
from fedsa_common.wire.errors import WireError

pytestmark = pytest.mark.integration

KINDS = [
    pytest.param(
        "mosquitto",
        marks=pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
    ),
    "embedded",
]

MakeSession = Callable[..., MqttSession]


class Inbox:
    """A handler that queues what it gets, so tests can wait for messages."""

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.put((topic, payload))

    def get(self, timeout: float = 10.0) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def drain(self, quiet: float = 0.5) -> list[tuple[str, bytes]]:
        """Everything that arrives until nothing did for ``quiet`` seconds."""
        got = []
        while True:
            try:
                got.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return got


@pytest.fixture(scope="module", params=KINDS)
def mqtt_broker(request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    with start_broker(request.param) as running:
        yield running


@pytest.fixture(params=KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def topic() -> str:
    """A topic prefix no other test uses (the module's brokers are shared)."""
    return f"test/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_session(mqtt_broker: BrokerProcess) -> Iterator[MakeSession]:
    made: list[MqttSession] = []

    def make(name: str, **kwargs: Any) -> MqttSession:
        session = MqttSession(mqtt_broker.url, f"{name}-{uuid.uuid4().hex[:8]}", **kwargs)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


def test_publish_subscribe_round_trip(make_session: MakeSession, topic: str) -> None:
    sub, pub = make_session("sub"), make_session("pub")
    inbox, raw_inbox = Inbox(), Inbox()
    sub.subscribe(f"{topic}/+/data", inbox)  # before connect: sent once connected
    sub.connect(timeout=10)
    sub.subscribe_raw(f"{topic}/status", raw_inbox)
    pub.connect(timeout=10)
    assert sub.connected and pub.connected

    assert pub.publish(f"{topic}/dev1/data", b"hello") == 5 + 24
    assert inbox.get() == (f"{topic}/dev1/data", b"hello")
    assert pub.publish(f"{topic}/dev2/data", b"") == 24
    assert inbox.get() == (f"{topic}/dev2/data", b"")
    assert pub.publish_raw(f"{topic}/status", b'{"ok": true}') == 12
    assert raw_inbox.get() == (f"{topic}/status", b'{"ok": true}')
    assert inbox.drain(0.3) == [] and raw_inbox.drain(0.1) == []
    assert pub.stats["bytes_published"] == 29 + 24 + 12
    assert sub.stats["bytes_received"] == 29 + 24 + 12
    with pytest.raises(ValueError, match="payload_limit"):
        pub.publish_raw(f"{topic}/status", b"x" * (pub.payload_limit + 1))


def test_publish_raw_many_sends_a_batch_in_order_and_refuses_oversize_before_sending(
        make_session: MakeSession, topic: str) -> None:
    """Real broker: a batch arrives whole and in order; one oversized payload refuses the
    whole batch before any of it is published."""
    sub, pub, inbox = make_session("sub"), make_session("pub"), Inbox()
    sub.subscribe_raw(f"{topic}/ack/+", inbox)
    sub.connect(timeout=10)
    pub.connect(timeout=10)
    batch = [(f"{topic}/ack/d{i}", f"ok {i}".encode()) for i in range(25)]
    assert pub.publish_raw_many(batch) == sum(len(p) for _, p in batch)
    assert [inbox.get() for _ in batch] == batch
    with pytest.raises(ValueError, match="payload_limit"):
        pub.publish_raw_many([(f"{topic}/ack/x", b"fine"),
                              (f"{topic}/ack/y", b"x" * (pub.payload_limit + 1))])
    assert inbox.drain(0.3) == []


def test_handlers_may_publish_without_deadlocking(make_session: MakeSession, topic: str) -> None:
    echo, client, inbox = make_session("echo"), make_session("client"), Inbox()

    def reply(_topic: str, payload: bytes) -> None:  # runs on echo's network thread
        echo.publish(f"{topic}/pong", payload * 2)

    echo.subscribe(f"{topic}/ping", reply)
    echo.connect(timeout=10)
    client.subscribe(f"{topic}/pong", inbox)
    client.connect(timeout=10)
    client.publish(f"{topic}/ping", b"ab")
    assert inbox.get() == (f"{topic}/pong", b"abab")
    echo.close()
    with pytest.raises(RuntimeError, match="closed"):
        echo.publish(f"{topic}/pong", b"late")


def test_large_payload_is_chunked_and_arrives_whole(make_session: MakeSession, topic: str) -> None:
    sub = make_session("sub", max_message_bytes=4_000_000)
    pub = make_session("pub", payload_limit=1_000_000)
    inbox, frames = Inbox(), Inbox()
    sub.subscribe(f"{topic}/model", inbox)
    sub.subscribe_raw(f"{topic}/model/+", frames)
    sub.connect(timeout=10)
    pub.connect(timeout=10)

    payload = os.urandom(3_000_000)
    sent = pub.publish(f"{topic}/model", payload)
    assert inbox.get() == (f"{topic}/model", payload)
    seen = sorted((frames.get() for _ in range(4)), key=lambda tp: tp[0])
    assert [t for t, _ in seen] == [f"{topic}/model/{i}" for i in range(4)]
    assert all(len(p) <= 1_000_000 for _, p in seen)
    assert sent == sum(len(p) for _, p in seen) == 3_000_000 + 4 * 24


def test_retained_chunked_message_reaches_late_subscribers_and_is_replaced(
    make_session: MakeSession, topic: str
) -> None:
    pub = make_session("pub", payload_limit=100_000)
    pub.connect(timeout=10)
    first, second = os.urandom(350_000), os.urandom(150_000)  # 4 frames, then 2
    pub.publish(f"{topic}/global", first, retain=True)

    early, early_inbox = make_session("late1"), Inbox()
    early.subscribe(f"{topic}/global", early_inbox)
    early.connect(timeout=10)
    assert early_inbox.get() == (f"{topic}/global", first)

    pub.publish(f"{topic}/global", second, retain=True)
    assert early_inbox.get() == (f"{topic}/global", second)
    assert early_inbox.drain(0.5) == []  # the clearing of frames 2 and 3 delivers nothing

    late, inbox, frames = make_session("late2"), Inbox(), Inbox()
    late.subscribe(f"{topic}/global", inbox)
    late.subscribe_raw(f"{topic}/global/+", frames)
    late.connect(timeout=10)
    assert inbox.get() == (f"{topic}/global", second)
    assert inbox.drain(0.5) == []
    retained = {t for t, p in frames.drain(0.1) if p}
    assert retained == {f"{topic}/global/0", f"{topic}/global/1"}  # stale frames 2, 3 cleared

    pub.clear_retained(f"{topic}/global")
    later, later_inbox, later_frames = make_session("late3"), Inbox(), Inbox()
    later.subscribe(f"{topic}/global", later_inbox)
    later.subscribe_raw(f"{topic}/global/+", later_frames)
    later.connect(timeout=10)
    assert later_inbox.drain(0.5) == [] and later_frames.drain(0.1) == []


def test_unsubscribe_stops_delivery_and_a_new_subscription_gets_the_retained_again(
    make_session: MakeSession, topic: str
) -> None:
    """What a device does to fetch the retained full global once (edge_client/device.py)."""
    pub, sub = make_session("pub", payload_limit=100_000), make_session("sub")
    pub.connect(timeout=10)
    sub.connect(timeout=10)
    stay, fetch, other = Inbox(), Inbox(), Inbox()
    sub.subscribe(f"{topic}/round", stay)
    sub.subscribe(f"{topic}/global", fetch)
    sub.subscribe(f"{topic}/global", other)  # same filter, another handler
    big = os.urandom(250_000)  # 3 frames
    pub.publish(f"{topic}/global", big, retain=True)
    assert fetch.get() == (f"{topic}/global", big) and other.get()[1] == big
    assert sub.unsubscribe(f"{topic}/global", fetch)  # the other still needs the filter
    pub.publish(f"{topic}/global", b"second", retain=True)
    assert other.get() == (f"{topic}/global", b"second") and fetch.drain(0.3) == []
    assert sub.unsubscribe(f"{topic}/global")  # now the broker is told
    assert not sub.unsubscribe(f"{topic}/global")  # nothing left to remove
    pub.publish(f"{topic}/global", b"third", retain=True)
    pub.publish(f"{topic}/round", b"announce")
    assert stay.get() == (f"{topic}/round", b"announce")  # the rest is untouched
    assert other.drain(0.5) == [] and fetch.drain(0.1) == []

    for _ in range(2):  # subscribing again: the retained one at once, every time
        sub.subscribe(f"{topic}/global", fetch)
        assert fetch.get() == (f"{topic}/global", b"third")
        assert sub.unsubscribe(f"{topic}/global", fetch)


CHILD = """
import sys, time
from fedsa_common.net.transport import MqttSession, Will
session = MqttSession(sys.argv[1], sys.argv[2], will=Will(sys.argv[3], b"gone"), keepalive=5)
session.connect(timeout=10)
print("ready", flush=True)
time.sleep(60)
"""


def test_will_is_published_when_a_client_dies(
    make_session: MakeSession, mqtt_broker: BrokerProcess, topic: str
) -> None:
    watcher, inbox = make_session("watcher"), Inbox()
    watcher.subscribe_raw(f"{topic}/presence/+", inbox)
    watcher.connect(timeout=10)

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            mqtt_broker.url,
            f"dev-{uuid.uuid4().hex[:8]}",
            f"{topic}/presence/dev1",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert inbox.get(timeout=10) == (f"{topic}/presence/dev1", b"gone")

    # a clean close() is not a death: no will
    polite = make_session("polite", will=Will(f"{topic}/presence/dev2", b"gone"))
    polite.connect(timeout=10)
    polite.close()
    assert inbox.drain(0.5) == []

    late, late_inbox = make_session("late"), Inbox()  # the will was retained
    late.subscribe_raw(f"{topic}/presence/+", late_inbox)
    late.connect(timeout=10)
    assert late_inbox.get() == (f"{topic}/presence/dev1", b"gone")


def test_final_close_unsubscribes_under_traffic_and_leaves_no_will(
    make_session: MakeSession, mqtt_broker: BrokerProcess, topic: str
) -> None:
    """A process done for good (a hub whose federation finished) closes with
    ``unsubscribe=True`` while messages keep arriving: its will is not published (so its
    retained "finished" status stays) and its persistent session no longer queues."""
    watcher, wills = make_session("watcher"), Inbox()
    watcher.subscribe_raw(f"{topic}/status/+", wills)
    watcher.connect(timeout=10)
    client_id = f"hub-{uuid.uuid4().hex[:8]}"
    hub = MqttSession(mqtt_broker.url, client_id, clean_session=False,
                      will=Will(f"{topic}/status/hub", b"offline"))
    hub.subscribe_raw(f"{topic}/flood/#", lambda _t, _p: None)
    hub.connect(timeout=10)
    hub.publish_raw(f"{topic}/status/hub", b"finished", retain=True)
    assert wills.get() == (f"{topic}/status/hub", b"finished")

    flooder = make_session("flooder")
    flooder.connect(timeout=10)
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            flooder.publish_raw(f"{topic}/flood/x", b"x" * 2000, qos=0)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        hub.close(unsubscribe=True)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(10)
    flooder.publish_raw(f"{topic}/flood/after", b"queued?")
    assert wills.drain(1.0) == []  # no will

    # a persistent session that kept its subscription would get, on reconnecting, what
    # was published while it was away; the unsubscribed one gets nothing
    again, received = MqttSession(mqtt_broker.url, client_id, clean_session=False), Inbox()
    try:
        again.subscribe_raw(f"{topic}/flood/#", received)
        again.connect(timeout=10)
        # (the embedded broker may still hand over a QoS 0 flood message it was routing
        # while the unsubscribe was processed; what was published after is not queued)
        assert f"{topic}/flood/after" not in [t for t, _ in received.drain(1.0)]
    finally:
        again.close()


def test_session_survives_broker_restart(broker_kind: str, topic: str) -> None:
    port = free_port()
    broker = start_broker(broker_kind, port=port)  # type: ignore[arg-type]
    reconnects: list[float] = []
    sub = MqttSession(
        broker.url,
        f"sub-{uuid.uuid4().hex[:8]}",
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        on_connect=lambda: reconnects.append(time.monotonic()),
    )
    pub = MqttSession(
        broker.url, f"pub-{uuid.uuid4().hex[:8]}", reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    inbox = Inbox()
    try:
        sub.subscribe(f"{topic}/x", inbox)
        sub.connect(timeout=10)
        pub.connect(timeout=10)
        pub.publish(f"{topic}/x", b"before")
        assert inbox.get() == (f"{topic}/x", b"before")

        broker.stop()
        deadline = time.monotonic() + 5
        while (sub.connected or pub.connected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sub.connected and not pub.connected
        # a QoS 1 publish while the broker is away waits for the reconnect instead of failing
        queued = concurrent.futures.ThreadPoolExecutor(1).submit(
            pub.publish_raw, f"{topic}/queued", b"q", timeout=15
        )
        time.sleep(0.2)
        broker = start_broker(broker_kind, port=port)  # type: ignore[arg-type]
        assert queued.result(timeout=15) == 1

        # the broker forgot every session; the subscriber must re-subscribe by itself
        deadline = time.monotonic() + 15
        received = None
        while received is None and time.monotonic() < deadline:
            if sub.connected and pub.connected:
                pub.publish(f"{topic}/x", b"after", timeout=5)
                with contextlib.suppress(queue.Empty):
                    received = inbox.get(timeout=0.5)
            else:
                time.sleep(0.05)
        assert received == (f"{topic}/x", b"after")
        assert len(reconnects) == 2
    finally:
        sub.close()
        pub.close()
        broker.stop()


def test_persistent_session_gets_messages_sent_while_it_was_away(
    make_session: MakeSession, mqtt_broker: BrokerProcess, topic: str
) -> None:
    client_id = f"dev-{uuid.uuid4().hex[:8]}"
    first = MqttSession(mqtt_broker.url, client_id, clean_session=False)
    first.subscribe(f"{topic}/inbox", Inbox())
    first.connect(timeout=10)
    first.close()

    pub = make_session("pub", payload_limit=10_000)
    pub.connect(timeout=10)
    payload = os.urandom(25_000)  # 3 frames, all queued by the broker
    pub.publish(f"{topic}/inbox", payload)

    inbox = Inbox()
    second = MqttSession(mqtt_broker.url, client_id, clean_session=False)
    try:
        second.subscribe(f"{topic}/inbox", inbox)
        second.connect(timeout=10)
        assert inbox.get() == (f"{topic}/inbox", payload)
        assert inbox.drain(0.5) == []
    finally:
        second.close()


class HoldingProxy:
    """A TCP relay in front of a broker that passes the broker's first ``pass_bytes`` bytes
    (the CONNACK) to the client and holds the rest until ``release()``: it stands for a broker
    that has accepted the connection but not yet handled the subscriptions."""

    def __init__(self, broker_url: str, pass_bytes: int = 4) -> None:
        self._upstream = parse_broker_url(broker_url)
        self._pass = pass_bytes
        self._released = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"mqtt://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self._released.set()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        self._listener.close()  # one client per relay
        broker = socket.create_connection(self._upstream)
        threading.Thread(target=self._pipe, args=(client, broker, None), daemon=True).start()
        self._pipe(broker, client, self._pass)

    def _pipe(self, src: socket.socket, dst: socket.socket, hold_after: int | None) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if hold_after is not None and sent + len(data) > hold_after:
                    dst.sendall(data[: max(0, hold_after - sent)])
                    self._released.wait()
                    data, hold_after = data[max(0, hold_after - sent):], None
                dst.sendall(data)
                sent += len(data)


def test_connect_waits_until_the_subscriptions_made_before_it_are_acknowledged(
    mqtt_broker: BrokerProcess, topic: str
) -> None:
    """amqtt handles a DISCONNECT that arrives with a SUBSCRIBE first and drops the
    subscription, so a persistent session that subscribes, connects and leaves at once lost
    what was published to it while away: connect() now returns only after the SUBACK."""
    proxy = HoldingProxy(mqtt_broker.url)
    session = MqttSession(proxy.url, f"dev-{uuid.uuid4().hex[:8]}")
    session.subscribe(f"{topic}/inbox", Inbox())
    connecting = threading.Thread(target=session.connect, kwargs={"timeout": 10})
    try:
        connecting.start()
        connecting.join(2.0)
        assert connecting.is_alive()  # CONNACK came through, the SUBACK is held
        proxy.release()
        connecting.join(10.0)
        assert not connecting.is_alive() and session.connected
    finally:
        proxy.release()
        connecting.join(10.0)
        session.close()


def test_persistent_session_loses_nothing_published_while_it_disconnects(
    make_session: MakeSession, mqtt_broker: BrokerProcess, topic: str
) -> None:
    """A burst of QoS 1 messages is under way when the subscriber leaves: the ones the broker
    was still delivering to the closing connection must reach it when it comes back (amqtt
    dropped them until the embedded broker requeued them; Mosquitto keeps them)."""
    client_id = f"dev-{uuid.uuid4().hex[:8]}"
    count = 300
    first_inbox = Inbox()
    first = MqttSession(mqtt_broker.url, client_id, clean_session=False)
    first.subscribe_raw(f"{topic}/burst", first_inbox)
    first.connect(timeout=10)
    pub = make_session("pub")
    pub.connect(timeout=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        burst = pool.submit(
            pub.publish_raw_many, [(f"{topic}/burst", b"%d" % i) for i in range(count)]
        )
        first_inbox.get()  # the burst is being delivered: leave in the middle of it
        first.close()
        burst.result(timeout=30)
    received = {int(payload) for _, payload in first_inbox.drain(0.1)} | {0}

    second_inbox = Inbox()
    second = MqttSession(mqtt_broker.url, client_id, clean_session=False)
    try:
        second.subscribe_raw(f"{topic}/burst", second_inbox)
        second.connect(timeout=10)
        with contextlib.suppress(queue.Empty):
            while len(received) < count:
                received.add(int(second_inbox.get(timeout=10)[1]))
    finally:
        second.close()
    assert sorted(set(range(count)) - received) == []


def test_malformed_frames_are_rejected_and_session_keeps_working(
    make_session: MakeSession, topic: str
) -> None:
    rejects: list[tuple[str, WireError]] = []
    sub = make_session("sub", on_reject=lambda t, e: rejects.append((t, e)))
    attacker, inbox = make_session("attacker"), Inbox()

    def explode(_topic: str, _payload: bytes) -> None:
        raise RuntimeError("handler bug")

    sub.subscribe(f"{topic}/boom", explode)
    sub.subscribe(f"{topic}/up", inbox)
    sub.connect(timeout=10)
    attacker.connect(timeout=10)

    good = split_payload(b"fine", 1000)[0]
    attacker.publish_raw(f"{topic}/up/0", b"not a frame at all, no magic here")
    attacker.publish_raw(f"{topic}/up/1", good)  # header says idx 0
    attacker.publish_raw(f"{topic}/up/x", good)  # not a frame subtopic
    attacker.publish_raw(f"{topic}/up/0", b"FSC")  # truncated
    attacker.publish_raw(f"{topic}/up/0", b"")  # empty: a cleared retained frame, ignored
    attacker.publish(f"{topic}/boom", b"x")  # handler raises; logged, loop survives
    attacker.publish(f"{topic}/up", b"still alive")
    assert inbox.get() == (f"{topic}/up", b"still alive")
    assert [e.reason for _, e in rejects] == [
        "frame_bad_magic",
        "frame_index_mismatch",
        "frame_bad_topic",
        "frame_truncated",
    ]
    assert [t for t, _ in rejects] == [f"{topic}/up/{i}" for i in ("0", "1", "x", "0")]
    assert sub.stats["frames_rejected"] == 4
    assert sub.connected


def test_connect_to_nothing_raises_naming_the_url() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    session = MqttSession(url, "lonely", reconnect_min_s=0.1, reconnect_max_s=0.2)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=url):
        session.connect(timeout=1.0)
    assert time.monotonic() - start < 5


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _raw_publish(topic: str, payload_len: int) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + b"p" * payload_len  # QoS 0
    return b"\x30" + _remaining_length(len(body)) + body


def test_oversized_packet_disconnects_the_client_on_both_brokers(broker_kind: str) -> None:
    with start_broker(broker_kind, max_packet_bytes=64_000) as small:  # type: ignore[arg-type]
        host, port = parse_broker_url(small.url)
        with socket.create_connection((host, port), timeout=5) as sock:
            client_id = b"oversize"
            body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
            sock.sendall(bytes([0x10, len(body)]) + body)
            assert sock.recv(4) == b"\x20\x02\x00\x00"
            sock.sendall(_raw_publish("t/small", 60_000) + b"\xc0\x00")  # + PINGREQ
            assert sock.recv(2) == b"\xd0\x00"  # PINGRESP: still connected
            try:
                sock.sendall(_raw_publish("t/big", 70_000))
                closed = sock.recv(1) == b""
            except (ConnectionResetError, BrokenPipeError):
                closed = True
            assert closed


def test_shared_broker_fixture_and_url_parsing(broker: BrokerProcess) -> None:
    assert broker.kind == ("mosquitto" if mosquitto_path() else "embedded")
    mqtt_ping(broker.url)
    assert parse_broker_url(broker.url) == ("127.0.0.1", broker.port)
    assert parse_broker_url("mqtt://localhost") == ("localhost", 1883)
    for bad in [
        "tcp://127.0.0.1:1883",
        "127.0.0.1:1883",
        "mqtt://:1883",
        "mqtt://h:99999",
        "mqtt://h:1883/path",
        "mqtt://h:0",
    ]:
        with pytest.raises(ValueError):
            parse_broker_url(bad)
