"""The protocol on a second, clustering MQTT broker: RabbitMQ's MQTT plugin (Debian's
``rabbitmq-server``), two nodes of one cluster on this machine.

What the protocol needs crosses the nodes: QoS 1 messages of update and global-parameter
sizes, last wills, and the queue of an offline persistent session (a hub that reconnects to
the other node still gets what arrived meanwhile). What RabbitMQ does not do is pinned too,
because docs/brokers.md rests on it: a retained message reaches only a subscription to its
exact topic on the node that stored it, never a wildcard subscription (every chunked message
and every presence, status and announcement filter of the protocol is one) nor another node.
So a federation runs on RabbitMQ when every subscriber is up before what it must see is
published, which the last test does with its hubs on one node and its devices on the other.

Runs under ``-m slow``; skipped where RabbitMQ is not installed; its two nodes start and join
once for the module (20-60 s on 2 cores, by load) and are stopped after it.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from edge_client.snapshot import load_held
from fedsa_common.federation.config import FederationConfig
from fedsa_common.net.transport import MqttSession, Will
from fedsa_common.process.atomic import read_json, read_tensors
from fedsa_common.wire.protocol import params_digest
from scenarios.monitor import Monitor
from tests.support.rabbitmq import RabbitCluster, RabbitNode, rabbitmq_bin

# under -m slow: CI does not install RabbitMQ (35 MB, ~70 s of tests), and the default suite
# keeps to the broker the project ships with
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(rabbitmq_bin() is None,
                       reason="RabbitMQ not installed (apt-get install rabbitmq-server)"),
]

QUIET_S = 3.0  # how long a message that is not coming is waited for


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitNode, RabbitNode]]:
    """Nodes a and b, clustered."""
    with RabbitCluster(tmp_path_factory.mktemp("rabbitmq")) as cluster:
        a, b = cluster.add_nodes("a", "b")
        cluster.join(b, a)
        assert cluster.running_nodes() == sorted([a.name, b.name])
        yield a, b


@pytest.fixture
def topic() -> str:
    return f"fedsa/rabbit-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def connect() -> Iterator:
    """``connect(url, subscribe=(), client_id=None, **session_options)``: a connected
    ``MqttSession`` (its subscriptions, ``(filter, handler, raw)``, made before it connects,
    so nothing queued for it is missed), closed after the test."""
    opened: list[MqttSession] = []

    def make(url: str, subscribe: tuple = (), client_id: str | None = None,
             **options) -> MqttSession:
        session = MqttSession(url, client_id or f"t-{uuid.uuid4().hex[:8]}", **options)
        for topic_filter, handler, raw in subscribe:
            (session.subscribe_raw if raw else session.subscribe)(topic_filter, handler)
        session.connect(timeout=30)
        opened.append(session)
        return session

    yield make
    for session in opened:
        session.close()


class Inbox:
    """A handler that queues what it gets."""

    def __init__(self) -> None:
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.got.put((topic, payload))

    def next(self, timeout: float = 30.0) -> tuple[str, bytes]:
        return self.got.get(timeout=timeout)

    def nothing(self) -> bool:
        try:
            self.got.get(timeout=QUIET_S)
        except queue.Empty:
            return True
        return False


@pytest.mark.parametrize("size", [60_000, 150_000, 2_500_000])
def test_update_and_global_sizes_cross_nodes(nodes, connect, topic, size):
    """A device update (tens of KB), the tiny model's global (~150 KB) and a message the
    session chunks (3 frames under its 1 MB payload limit) reach a subscriber on the other
    node whole."""
    a, b = nodes
    inbox = Inbox()
    connect(b.url, subscribe=((f"{topic}/update", inbox, False),))
    payload = os.urandom(size)
    connect(a.url).publish(f"{topic}/update", payload)
    assert inbox.next() == (f"{topic}/update", payload)


def test_last_will_crosses_nodes(nodes, connect, topic):
    """A device that vanishes on node a is marked offline for a hub on node b."""
    a, b = nodes
    inbox = Inbox()
    connect(b.url, subscribe=((f"{topic}/presence/+", inbox, True),))
    device = connect(a.url, will=Will(f"{topic}/presence/d1", b'{"online": false}'))
    device.drop()
    assert inbox.next() == (f"{topic}/presence/d1", b'{"online": false}')


def test_offline_persistent_session_keeps_qos1_messages_across_nodes(nodes, connect, topic):
    """A regional hub's session (clean_session false) that goes away on node a and comes
    back on node b gets every update published meanwhile."""
    a, b = nodes
    hub_id = f"hub-{uuid.uuid4().hex[:8]}"
    connect(a.url, subscribe=((f"{topic}/update/+", Inbox(), False),), client_id=hub_id,
            clean_session=False).close()
    sent = {f"{topic}/update/d{i}": os.urandom(30_000) for i in range(3)}
    device = connect(a.url)
    for t, payload in sent.items():
        device.publish(t, payload)
    inbox = Inbox()
    connect(b.url, subscribe=((f"{topic}/update/+", inbox, False),), client_id=hub_id,
            clean_session=False)
    assert dict(inbox.next() for _ in sent) == sent


def test_retained_reaches_only_an_exact_subscription_on_the_same_node(nodes, connect, topic):
    """What blocks late joiners on RabbitMQ (docs/brokers.md): a retained status is replayed
    to an exact subscription on node a, where it was published, but not to a wildcard one
    there, nor to an exact one on node b; a retained chunked announcement (``T/0``, read
    through the filter ``T/+``) reaches no late subscriber at all."""
    a, b = nodes
    publisher = connect(a.url)
    publisher.publish_raw(f"{topic}/status/cloud", b'{"online": true}', retain=True)
    publisher.publish(f"{topic}/round", b"announcement", retain=True)
    exact_a, wildcard_a, exact_b, chunked_a = Inbox(), Inbox(), Inbox(), Inbox()
    for url, topic_filter, inbox, raw in ((a.url, f"{topic}/status/cloud", exact_a, True),
                                          (a.url, f"{topic}/status/+", wildcard_a, True),
                                          (b.url, f"{topic}/status/cloud", exact_b, True),
                                          (a.url, f"{topic}/round", chunked_a, False)):
        # a session each: one session hands a message to every handler whose filter matches
        connect(url, subscribe=((topic_filter, inbox, raw),), clean_session=True)
    assert exact_a.next() == (f"{topic}/status/cloud", b'{"online": true}')
    assert wildcard_a.nothing() and exact_b.nothing() and chunked_a.nothing()


FED = "rabbit"
ROUNDS = 2


def test_federation_with_hubs_on_node_a_and_devices_on_node_b(tmp_path: Path, nodes,
                                                              start_hubs, wait_for_log):
    """Cloud and regional hub (OS processes) on node a, two devices on node b: every round
    completes with both updates, and both devices end with the cloud's final global bit for
    bit, applying the downlink deltas as they come. Every subscriber must be up before what
    it must see is published (see the module docstring), so the hubs and devices start one
    after the other."""
    a, b = nodes
    config = FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 3},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
        # downlink deltas: devices keep the global they hold, so the test can compare it
        "fedsa_lora": {"compression": {"downlink": {"enable": True, "method": "topk",
                                                    "ratio": 0.1, "values": "int8"}}},
        "rounds": ROUNDS,
        "training": {"local_steps": 2, "batch_size": 8, "lr": 0.001},
        "sampling": {"min_clients": 2},
        "round_policy": {"deadline_s": 60},
    })
    monitor = Monitor(a.url, FED)
    monitor.start()
    try:
        # one after the other, each once what must see it listens: the cloud, then the
        # regional hub (whose status the cloud must see), then the devices (whose presence
        # the cloud must see); the cloud subscribes as it connects, and a hub process takes
        # seconds to import before it publishes anything
        cloud, = start_hubs(a.url, config, roles=("cloud",))
        wait_for_log(tmp_path / "cloud.log", r"connected to", cloud)
        regional, = start_hubs(a.url, config, roles=("regional",))
        wait_for_log(tmp_path / "cloud.log", r"regional hub of r1 serves", cloud)
        host = ModelHost()
        devices = [Device(DeviceSpec(
            client=f"d{i}", region="r1", federation=FED, state_dir=tmp_path / f"d{i}",
            data=DataSpec(source="20newsgroups", classes=3, partition="iid", num_clients=2,
                          shard=i, max_train=24, max_test=12)), b.url, host) for i in range(2)]
        threads = [threading.Thread(target=d.run, daemon=True) for d in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
            assert not t.is_alive(), "a device did not finish"
        assert cloud.wait(timeout=60) == 0 and regional.wait(timeout=60) == 0
    finally:
        monitor.stop()

    meta = read_json(tmp_path / "cloud" / "checkpoint.json")
    assert meta["round"] == ROUNDS
    with monitor.lock:
        summaries, metrics = dict(monitor.obs.summaries), dict(monitor.obs.metrics)
        finished = monitor.obs.finished
    for rnd in range(1, ROUNDS + 1):  # both updates applied; both devices' metrics crossed
        assert len(summaries[rnd].applied) == 2, summaries[rnd]
        assert set(metrics[rnd]) == {"d0", "d1"}
    final = read_tensors(tmp_path / "cloud" / meta["tensors"])
    assert finished is not None
    want = params_digest({n: final[n] for n in finished.shared})
    for i, device in enumerate(devices):
        held = load_held(tmp_path / f"d{i}")
        assert held is not None and held.version == meta["version"] and held.digest == want
        # every version arrived live: the retained full global (which a device fetches when
        # it missed one, and RabbitMQ would not replay) was never needed
        assert device.downlink["fetched"] == 0 and device.downlink["bad_delta"] == 0
