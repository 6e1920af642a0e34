"""A multi-site deployment's brokers, as ``hub provision --site`` writes them: three real
Mosquitto processes (the cloud broker and the brokers of sites north and south, each bridged
to the cloud's over TLS with its bridge account), started from the generated files by
``hub.site_brokers``.  Clients log in with the generated credentials; an extra read-all
``observer`` account on each broker sees what arrived there.

Proof of non-delivery is ordering, as in test_provision.py: messages that must stay in the
site are published (and acknowledged by the site broker) before one that must cross; once
that one arrived at the cloud, anything the bridge forwarded before it would have too.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsa_common.net.broker import free_port, mosquitto_path
from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.protocol import Topics
from hub.site_brokers import SiteBrokers, start_site_brokers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

FED = "fed"
T = Topics(FED)
REGIONS = {"north": ["dev-0", "dev-1"], "south": ["dev-2"]}


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Iterator[SiteBrokers]:
    ports = {name: free_port() for name in ("cloud", *REGIONS)}
    out: Path = tmp_path_factory.mktemp("sites")
    with start_site_brokers(FED, REGIONS, out, ports) as brokers:
        yield brokers


class Inbox:
    def __init__(self) -> None:
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seen: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.seen.append((topic, payload))
        self.got.put((topic, payload))

    def wait_for(self, topic: str, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            got, payload = self.got.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == topic:
                return payload

    def topics(self) -> set[str]:
        with self.lock:
            return {t for t, _ in self.seen}


@pytest.fixture
def connect(sites) -> Iterator:
    sessions: list[MqttSession] = []

    def _connect(user: str, region: str | None = None) -> MqttSession:
        auth: BrokerAuth = sites.observer_auth() if user == "observer" else \
            sites.auth(user, region)
        session = MqttSession(sites.url(region), f"{user}-{uuid.uuid4().hex[:8]}",
                              clean_session=True, auth=auth)
        sessions.append(session)
        session.connect(timeout=20)
        return session

    yield _connect
    for s in sessions:
        s.close()


def observe(session: MqttSession) -> Inbox:
    inbox = Inbox()
    session.subscribe_raw(T.all, inbox)
    return inbox


def test_device_traffic_stays_in_the_site_and_the_partial_goes_up(connect):
    cloud = observe(connect("observer"))
    south = observe(connect("observer", "south"))
    dev = connect("dev-0", "north")
    hub = connect("hub-regional-north", "north")
    stays = {
        frame(T.update("north", "dev-0")), T.metrics("north", "dev-0"),
        frame(T.secagg_up("north", "dev-0")), T.ack("north", "dev-0"),
        frame(T.secagg_down("north", "dev-0")),
    }
    dev.publish(T.update("north", "dev-0"), b"device update", timeout=20)
    dev.publish_raw(T.metrics("north", "dev-0"), b"{}", timeout=20)
    dev.publish(T.secagg_up("north", "dev-0"), b"masked", timeout=20)
    hub.publish_raw(T.ack("north", "dev-0"), b"{}", timeout=20)
    hub.publish(T.secagg_down("north", "dev-0"), b"shares", timeout=20)
    dev.publish_raw(T.presence("north", "dev-0"), b'{"online": true}', retain=True, timeout=20)
    hub.publish_raw(T.status("regional", "north"), b'{"online": true}', retain=True, timeout=20)
    hub.publish(T.partial("north"), b"region sum", timeout=20)

    assert cloud.wait_for(frame(T.partial("north"))).endswith(b"region sum")
    arrived = cloud.topics()  # published before the partial, so forwarded before it
    assert {T.presence("north", "dev-0"), T.status("regional", "north")} <= arrived
    assert arrived & stays == set()
    # the cloud broker is where the crossing stops: nothing of north reaches site south
    south_topics = south.topics()
    assert not any("/north" in t for t in south_topics), south_topics
    dev.publish_raw(T.presence("north", "dev-0"), b"", retain=True, timeout=20)
    hub.publish_raw(T.status("regional", "north"), b"", retain=True, timeout=20)


def test_the_cloud_reaches_each_site_with_only_what_it_needs(connect):
    north_live = observe(connect("observer", "north"))
    south_live = observe(connect("observer", "south"))
    cloud = connect("hub-cloud")
    cloud.publish(T.announce, b"announcement", retain=True, timeout=20)
    cloud.publish(T.global_params, b"global", retain=True, timeout=20)
    cloud.publish_raw(T.summary, b"{}", timeout=20)
    cloud.publish_raw(T.control, b"{}", timeout=20)
    cloud.publish_raw(T.partial_ack("south"), b"{}", timeout=20)
    cloud.publish_raw(T.partial_ack("north"), b"{}", timeout=20)
    cloud.publish_raw(T.status("cloud", "cloud"), b'{"online": true}', retain=True, timeout=20)

    north_live.wait_for(T.status("cloud", "cloud"))  # published last
    south_live.wait_for(T.status("cloud", "cloud"))
    assert north_live.topics() == {frame(T.announce), frame(T.global_params),
                                   T.partial_ack("north"), T.status("cloud", "cloud")}
    assert T.partial_ack("north") not in south_live.topics()

    # retained at the site: a device that connects later gets the round from its own broker
    late = Inbox()
    connect("dev-1", "north").subscribe_raw(f"{T.announce}/+", late)
    assert late.wait_for(frame(T.announce)).endswith(b"announcement")

    # clearing it at the cloud (hub federation reset) clears it at every site
    cloud.publish_raw(frame(T.announce), b"", retain=True, timeout=20)
    assert north_live.wait_for(frame(T.announce)) == b""
    fresh = Inbox()
    reader = connect("observer", "north")
    reader.subscribe_raw(f"{T.announce}/+", fresh)
    reader.subscribe_raw(T.status("cloud", "cloud"), fresh)
    cloud.publish_raw(T.status("cloud", "cloud"), b'{"online": false}', retain=True, timeout=20)
    fresh.wait_for(T.status("cloud", "cloud"))
    assert frame(T.announce) not in fresh.topics()
    for topic in (frame(T.global_params), T.status("cloud", "cloud")):
        cloud.publish_raw(topic, b"", retain=True, timeout=20)


def test_a_bridge_account_cannot_speak_for_another_region(sites, connect):
    """The cloud broker's ACL holds a bridge to its region, whatever its site forwards."""
    cloud = observe(connect("observer"))
    creds = sites.auth("bridge-north")
    rogue = MqttSession(sites.url(), f"rogue-{uuid.uuid4().hex[:8]}", clean_session=True,
                        auth=creds)
    rogue.connect(timeout=20)
    try:
        rogue.publish(T.partial("south"), b"forged", timeout=20)
        rogue.publish_raw(T.announce + "/0", b"forged", timeout=20)
        rogue.publish(T.partial("north"), b"own region", timeout=20)
        cloud.wait_for(frame(T.partial("north")))
    finally:
        rogue.close()
    assert cloud.topics() == {frame(T.partial("north"))}


def frame(topic: str) -> str:
    return f"{topic}/0"


def test_a_partial_sent_while_the_link_is_down_arrives_after_it_heals(sites, connect):
    """The cloud broker goes away (stopped, as a cut link looks to the site) while region
    north's hub sends its partial; the site broker keeps it for the bridge's persistent
    session and forwards it once the bridge is back.  The cloud's subscriber has a
    persistent session too (as the cloud hub's), so the partial waits for it there."""
    inbox = Inbox()
    cloud = MqttSession(sites.url(), "cloud-observer-persistent", clean_session=False,
                        auth=sites.observer_auth(), reconnect_min_s=0.2, reconnect_max_s=1)
    cloud.subscribe_raw(T.all, inbox)
    cloud.connect(timeout=20)
    hub = connect("hub-regional-north", "north")
    try:
        sites.stop("cloud")  # the link is cut: the site keeps working on its own
        hub.publish(T.partial("north"), b"sent during the cut", timeout=20)  # site acks it
        assert frame(T.partial("north")) not in inbox.topics()
        sites.start("cloud")  # healed: the bridge reconnects, then the observer
        sites.wait_for_bridges(timeout=60)
        assert inbox.wait_for(frame(T.partial("north")), timeout=60).endswith(
            b"sent during the cut")
    finally:
        cloud.close()


def test_a_cut_link_holds_the_sites_partial_until_it_heals(sites, connect):
    """``cut_link`` (what ``scenarios run`` plays for a cut_link fault) drops region north's
    bridge at the cloud broker's door and refuses it, while both brokers keep serving: the
    north hub's partial is accepted by its site broker, south's link still carries its
    partial (sent after north's, so north's would have arrived first had it crossed), and
    north's arrives once the link is healed."""
    cloud = observe(connect("observer"))
    north = connect("hub-regional-north", "north")
    south = connect("hub-regional-south", "south")
    sites.cut_link("north")
    try:
        sites.wait_for_link("north", up=False)
        north.publish(T.partial("north"), b"sent during the cut", timeout=20)
        south.publish(T.partial("south"), b"south still crosses", timeout=20)
        cloud.wait_for(frame(T.partial("south")))
        assert frame(T.partial("north")) not in cloud.topics()
        assert "bridge-north" not in (sites.dir() / "passwd").read_text()
    finally:
        sites.heal_link("north")
    assert cloud.wait_for(frame(T.partial("north")), timeout=60).endswith(
        b"sent during the cut")
    assert "bridge-north:" in (sites.dir() / "passwd").read_text()
