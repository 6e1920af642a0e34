"""The files ``hub provision`` writes, run in a real Mosquitto process (started here with the
generated mosquitto.conf on a free port; skipped when Mosquitto is not installed).

Mosquitto's ACL file refuses unauthorized *publishes* silently for MQTT 3.1.1 (our transport)
and with PUBACK 0x87 for MQTT 5; it grants every SUBSCRIBE and checks read access on each
delivered message. So refusals are asserted as non-delivery to a subscriber that is allowed to
read the topic, with an authorized message published after it as proof of delivery order.
"""

from __future__ import annotations

import json
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from typer.testing import CliRunner

from fedsa_common.net.broker import mosquitto_path, mqtt_ping
from fedsa_common.net.broker_auth import BrokerAuth
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.protocol import Topics
from hub.cli import app
from hub.provision_acl import federation_accounts, rules_for
from hub.provision_tls import new_ca

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
]

FED = "fed"
T = Topics(FED)
REGIONS = {"north": ["dev-0", "dev-1"], "south": ["dev-2"]}


@pytest.fixture(scope="module")
def broker(provisioned_broker):
    return provisioned_broker(FED, REGIONS)


class Inbox:
    """Every (topic, payload) a handler got, to wait for one and look at the rest."""

    def __init__(self) -> None:
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.seen.append(topic)
        self.got.put((topic, payload))

    def wait_for(self, topic: str, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            got_topic, payload = self.got.get(timeout=max(0.01, deadline - time.monotonic()))
            if got_topic == topic:
                return payload

    def topics(self) -> list[str]:
        with self.lock:
            return list(self.seen)


@pytest.fixture
def connect(broker) -> Iterator:
    sessions: list[MqttSession] = []

    def _connect(user: str, *, url: str | None = None, auth: BrokerAuth | None = None,
                 timeout: float = 15.0) -> MqttSession:
        session = MqttSession(url or broker.url, f"{user}-{uuid.uuid4().hex[:8]}",
                              clean_session=True, auth=auth or broker.creds(user).auth(),
                              reconnect_min_s=0.1, reconnect_max_s=0.5)
        sessions.append(session)
        session.connect(timeout=timeout)
        return session

    yield _connect
    for s in sessions:
        s.close()


def observe(session: MqttSession) -> Inbox:
    """Raw frames of everything under the federation the session's account may read."""
    inbox = Inbox()
    session.subscribe_raw(T.all, inbox)
    return inbox


def test_every_account_connects_over_tls_with_its_credentials_file(broker, connect):
    for user in ("hub-cloud", "monitor", "hub-regional-north", "dev-2"):
        creds = broker.creds(user)
        assert creds.broker == f"mqtts://localhost:{broker.port}"  # the certificate's host
        session = connect(user, url=creds.broker)
        assert session.connected
        assert isinstance(session._client.socket(), ssl.SSLSocket)  # TLS, not plain TCP


@pytest.mark.parametrize("auth", [
    pytest.param(None, id="anonymous"),
    pytest.param("wrong-password", id="wrong-password"),
    pytest.param("unknown-user", id="unknown-user"),
])
def test_unauthenticated_clients_are_refused(broker, auth):
    ca = broker.creds("dev-0").ca_pem
    creds = {None: BrokerAuth(ca_pem=ca),
             "wrong-password": BrokerAuth("dev-0", "not-the-password", ca_pem=ca),
             "unknown-user": BrokerAuth("intruder", "pw", ca_pem=ca)}[auth]
    session = MqttSession(broker.url, f"x-{uuid.uuid4().hex[:8]}", auth=creds)
    with pytest.raises(ConnectionError) as err:
        session.connect(timeout=30)
    # refused by CONNACK, reported at once rather than after retrying until the timeout
    assert "CONNACK refused: Not authorized" in str(err.value)
    assert "within" not in str(err.value)


def test_plain_tcp_and_untrusted_certificates_are_refused(broker):
    with pytest.raises(OSError):  # an MQTT CONNECT in clear text gets no CONNACK
        mqtt_ping(f"mqtt://127.0.0.1:{broker.port}", timeout=3)
    creds = broker.creds("dev-0")
    plain = MqttSession(f"mqtt://127.0.0.1:{broker.port}", "plain",
                        auth=BrokerAuth(creds.username, creds.password), reconnect_min_s=0.1,
                        reconnect_max_s=0.2)
    with pytest.raises(ConnectionError):
        plain.connect(timeout=2)
    stranger_ca = new_ca(FED).cert_pem.decode()  # a CA that did not sign the broker's cert
    untrusted = MqttSession(broker.url, "untrusted",
                            auth=BrokerAuth(creds.username, creds.password, ca_pem=stranger_ca),
                            reconnect_min_s=0.1, reconnect_max_s=0.2)
    with pytest.raises(ConnectionError, match="TLS handshake failed"):
        untrusted.connect(timeout=2)


def test_loop_driven_sessions_use_the_same_tls_credentials_and_refusals(broker):
    """A light device's session (fedsa_common/net/session_loop.py) is configured by the
    same code as a real device's: TLS with the federation's CA, its account, its ACL; a
    wrong password is refused at once, an untrusted CA names the TLS handshake."""
    from fedsa_common.net.session_loop import LoopSession, SessionLoop

    loop = SessionLoop(name="tls-test-loop")
    creds = broker.creds("dev-0")
    made: list[MqttSession] = []

    def session(auth: BrokerAuth) -> LoopSession:
        made.append(new := LoopSession(broker.url, f"dev-0-{uuid.uuid4().hex[:8]}",
                                       loop=loop, clean_session=True, auth=auth,
                                       reconnect_min_s=0.1, reconnect_max_s=0.2))
        return new

    try:
        dev = session(creds.auth())
        inbox = Inbox()
        dev.subscribe_raw(T.ack("north", "dev-0"), inbox)  # its own acks: the ACL allows
        dev.connect(timeout=15)
        assert isinstance(dev._client.socket(), ssl.SSLSocket)
        hub = MqttSession(broker.url, f"hub-{uuid.uuid4().hex[:8]}", clean_session=True,
                          auth=broker.creds("hub-regional-north").auth())
        made.append(hub)
        hub.connect(timeout=15)
        hub.publish_raw(T.ack("north", "dev-0"), b"through TLS")
        assert inbox.wait_for(T.ack("north", "dev-0")) == b"through TLS"
        wrong = session(BrokerAuth("dev-0", "not-the-password", ca_pem=creds.ca_pem))
        with pytest.raises(ConnectionError) as err:
            wrong.connect(timeout=30)
        assert "CONNACK refused: Not authorized" in str(err.value)
        assert "within" not in str(err.value)
        stranger_ca = new_ca(FED).cert_pem.decode()
        untrusted = session(BrokerAuth(creds.username, creds.password, ca_pem=stranger_ca))
        with pytest.raises(ConnectionError, match="TLS handshake failed"):
            untrusted.connect(timeout=2)
    finally:
        for s in made:
            s.close()
        loop.close(timeout=10)


FORBIDDEN = {
    # sender: [(topic, chunked)] it must not be able to publish
    "dev-0": [
        (T.update("north", "dev-1"), True),  # another device's update
        (T.update("south", "dev-2"), True),  # another region's device
        (T.secagg_up("north", "dev-1"), True),
        (T.secagg_down("north", "dev-0"), True),  # only its hub may write to it
        (T.announce, True),
        (T.partial("north"), True),
        (T.ack("north", "dev-1"), False),
        (T.presence("north", "dev-1"), False),
        (T.metrics("north", "dev-1"), False),
        (T.summary, False),
        (T.status("regional", "north"), False),
        (T.control, False),  # only the cloud's account sends lifecycle commands
    ],
    "hub-regional-north": [
        (T.partial("south"), True),
        (T.ack("south", "dev-2"), False),
        (T.announce, True),
        (T.partial_ack("north"), False),
        (T.status("cloud", "cloud"), False),
        (T.presence("north", "dev-0"), False),
        (T.secagg_down("south", "dev-2"), True),
        (T.control, False),
    ],
}


# the cloud observes partials, which no other account may read
OBSERVERS = ("monitor", "hub-regional-north", "hub-regional-south", "dev-0", "dev-2",
             "hub-cloud")


def readable_by_an_observer(topic: str) -> bool:
    accounts = [a for a in federation_accounts(REGIONS) if a.username in OBSERVERS]
    return any(r.access == "read" and mqtt.topic_matches_sub(r.topic, topic)
               for a in accounts for r in rules_for(a, T))


@pytest.mark.parametrize("sender", sorted(FORBIDDEN))
def test_publishes_outside_the_account_are_dropped(connect, sender):
    on_the_wire = {f"{t}/0" if chunked else t for t, chunked in FORBIDDEN[sender]}
    assert all(readable_by_an_observer(t) for t in on_the_wire)  # else the test proves nothing
    observers = [observe(connect(u)) for u in OBSERVERS]
    session = connect(sender)
    for topic, chunked in FORBIDDEN[sender]:
        if chunked:
            session.publish(topic, b"forged")
        else:
            session.publish_raw(topic, b"forged")
    # then an authorized message: once it arrived, anything published before it would have
    if sender == "dev-0":
        session.publish_raw(T.presence("north", "dev-0"), b"ok")
        session.publish(T.update("north", "dev-0"), b"ok")
        observers[0].wait_for(T.presence("north", "dev-0"))
        observers[1].wait_for(f"{T.update('north', 'dev-0')}/0")
    else:
        session.publish_raw(T.status("regional", "north"), b"ok")
        observers[0].wait_for(T.status("regional", "north"))
    for inbox in observers:
        assert [t for t in inbox.topics() if t in on_the_wire] == []


def test_mqtt5_puback_names_the_refusal(broker):
    """With MQTT 5 the broker says why: PUBACK reason 0x87 Not authorized."""
    creds = broker.creds("dev-0")
    reasons: dict[int, mqtt.ReasonCode] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5-dev-0",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.username_pw_set(creds.username, creds.password)
    client.tls_set_context(ssl.create_default_context(cadata=creds.ca_pem))

    def on_publish(_c, _u, mid, reason, _p):
        reasons[mid] = reason
        if len(reasons) == 2:
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        other = client.publish(f"{T.update('north', 'dev-1')}/0", b"x", qos=1)
        own = client.publish(f"{T.update('north', 'dev-0')}/0", b"x", qos=1)
        assert done.wait(15)
    finally:
        client.disconnect()
        client.loop_stop()
    assert reasons[other.mid].value == 0x87 and str(reasons[other.mid]) == "Not authorized"
    assert not reasons[own.mid].is_failure


def test_devices_receive_only_the_announcement_and_their_own_acks(connect):
    dev0 = connect("dev-0")
    seen = observe(dev0)
    # Mosquitto grants the subscription (its ACL file checks reads per message) ...
    dev0.subscribe(T.update_filter("south"), seen)
    north = observe(connect("hub-regional-north"))
    south = observe(connect("hub-regional-south"))
    hub_north = connect("hub-regional-north")
    cloud = connect("hub-cloud")

    dev1 = connect("dev-1")
    dev1.publish(T.update("north", "dev-1"), b"private")
    dev1.publish_raw(T.presence("north", "dev-1"), b"{}")
    connect("dev-2").publish(T.update("south", "dev-2"), b"private")
    hub_north.publish_raw(T.ack("north", "dev-1"), b"{}")
    hub_north.publish(T.secagg_down("north", "dev-1"), b"shares for dev-1")
    hub_north.publish(T.partial("north"), b"aggregate")
    cloud.publish_raw(T.partial_ack("north"), b"{}")
    cloud.publish_raw(T.summary, b"{}")
    cloud.publish(T.announce, b"global A")
    hub_north.publish_raw(T.ack("north", "dev-0"), b"{}")

    seen.wait_for(T.ack("north", "dev-0"))
    north.wait_for(f"{T.update('north', 'dev-1')}/0")  # they were published ...
    south.wait_for(f"{T.update('south', 'dev-2')}/0")
    # ... but dev-0 got only what is addressed to it or to everyone
    assert sorted(set(seen.topics())) == sorted([f"{T.announce}/0", T.ack("north", "dev-0")])


def test_the_monitor_does_not_receive_partials(connect):
    """A regional partial can be one device's un-noised update; the monitor reads the
    cloud's summaries and hub status instead."""
    monitor = observe(connect("monitor"))
    cloud = observe(connect("hub-cloud"))
    hub_north = connect("hub-regional-north")
    hub_north.publish(T.partial("north"), b"one device's update")
    hub_north.publish_raw(T.status("regional", "north"), b"ok")
    cloud.wait_for(f"{T.partial('north')}/0")  # it was delivered to whoever may read it
    monitor.wait_for(T.status("regional", "north"))  # published after the partial
    assert f"{T.partial('north')}/0" not in monitor.topics()


def test_cli_uses_credentials_and_checks_their_identity(broker, connect):
    runner = CliRunner()
    creds = broker.out / "credentials"
    hub = connect("hub-regional-north")
    hub.publish_raw(T.status("regional", "north"), b'{"online": true, "round": 1}', retain=True)
    # an intake process of north (intake_shards > 1) logs in with north's account
    hub.publish_raw(T.intake_status("north", 1), b'{"online": true, "round": 1}', retain=True)
    try:
        ok = runner.invoke(app, ["status", "--federation", FED, "--broker", broker.url,
                                 "--credentials", str(creds / "monitor.json"), "--json",
                                 "--timeout", "5"])
        assert '"regional/north"' in ok.output, ok.output
        assert json.loads(ok.stdout)["intake"] == {"north": {"1": {"online": True, "round": 1}}}
        wrong = runner.invoke(app, ["status", "--federation", FED, "--credentials",
                                    str(creds / "dev-0.json")])
        assert wrong.exit_code == 2 and "device account" in wrong.output
        anonymous = runner.invoke(app, ["status", "--federation", FED, "--broker", broker.url,
                                        "--tls-ca", str(broker.out / "ca.crt"),
                                        "--timeout", "5"])
        assert anonymous.exit_code == 2 and "Not authorized" in anonymous.output
    finally:
        hub.publish_raw(T.status("regional", "north"), b"", retain=True)
        hub.publish_raw(T.intake_status("north", 1), b"", retain=True)
