"""Broker URLs, credentials files and how CLI options combine (pure logic, no broker)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from fedsa_common.net.broker_auth import (
    NAME_RE,
    BrokerAuth,
    Credentials,
    check_identity,
    credentials_auth,
    load_credentials,
    parse_url,
    redact_url,
    resolve_connection,
    resolve_endpoint,
    tls_context,
)
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire import protocol


def write_creds(path: Path, **overrides) -> Path:
    body = {"format": "fedsa-broker-credentials/1", "federation": "fed", "role": "device",
            "username": "dev-0", "password": "s3cret", "broker": "mqtts://broker.example:8883",
            "ca_pem": None, "region": "north", "client": "dev-0", **overrides}
    path.write_text(json.dumps(body))
    path.chmod(0o600)
    return path


def test_name_pattern_is_the_protocols():
    assert NAME_RE == protocol.NAME_RE


@pytest.mark.parametrize(("url", "host", "port", "tls", "user", "password"), [
    ("mqtt://localhost", "localhost", 1883, False, None, None),
    ("mqtts://broker.example", "broker.example", 8883, True, None, None),
    ("mqtts://h:9999", "h", 9999, True, None, None),
    ("mqtts://dev-0:p%40ss%3Aword@h:8883", "h", 8883, True, "dev-0", "p@ss:word"),
    ("mqtt://dev-0@10.0.0.1:1883", "10.0.0.1", 1883, False, "dev-0", None),
])
def test_parse_url(url, host, port, tls, user, password):
    ep = parse_url(url)
    assert (ep.host, ep.port, ep.tls, ep.username, ep.password) == (host, port, tls, user,
                                                                    password)


@pytest.mark.parametrize("bad", ["tcp://h:1883", "h:1883", "mqtt://:1883", "mqtts://h:99999",
                                 "mqtt://h:1883/path", "mqtt://h:0", "mqtts://h?x=1",
                                 "mqtts://:pw@h"])
def test_parse_url_rejects(bad):
    with pytest.raises(ValueError):
        parse_url(bad)


def test_passwords_never_reach_messages():
    url = "mqtts://dev-0:hunter2@h:8883"
    assert redact_url(url) == "mqtts://dev-0:***@h:8883"
    assert redact_url("mqtt://h:1") == "mqtt://h:1"
    with pytest.raises(ValueError) as err:
        parse_url("mqtts://dev-0:hunter2@h:8883/x")
    assert "hunter2" not in str(err.value)
    session = MqttSession(url, "redact-test")
    assert "hunter2" not in session.broker_url and "hunter2" not in repr(BrokerAuth("u", "hunter2"))
    session.close()


@pytest.mark.parametrize(("url", "auth", "warned"), [
    ("mqtt://dev-0:hunter2@h:1883", None, True),
    ("mqtt://h:1883", BrokerAuth("dev-0", "hunter2"), True),
    ("mqtts://dev-0:hunter2@h:8883", None, False),
    ("mqtt://dev-0@h:1883", None, False),  # a user name alone reveals no secret
])
def test_a_password_over_plain_mqtt_is_warned_about(caplog, url, auth, warned):
    with caplog.at_level("WARNING", logger="fedsa_common.net.broker_auth"):
        session = MqttSession(url, "plain-test", auth=auth)
        session.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsa_common.net.broker_auth"]
    assert any("clear text" in line for line in lines) == warned
    assert not any("hunter2" in line for line in lines)


def test_resolve_endpoint_merges_and_refuses_conflicts():
    ep = resolve_endpoint("mqtts://dev-0@h", BrokerAuth(password="pw"))
    assert (ep.username, ep.password, ep.tls) == ("dev-0", "pw", True)
    with pytest.raises(ValueError, match="user name"):
        resolve_endpoint("mqtts://dev-0@h", BrokerAuth(username="dev-1"))
    with pytest.raises(ValueError, match="mqtts"):  # a CA means TLS was intended
        resolve_endpoint("mqtt://h", BrokerAuth(ca_pem="x"))
    with pytest.raises(ValueError, match="user name"):
        resolve_endpoint("mqtts://h", BrokerAuth(password="pw"))


def test_tls_context_verifies_host_and_chain():
    ctx = tls_context(None)
    assert ctx.check_hostname and ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="CA"):
        tls_context(BrokerAuth(ca_pem="-----BEGIN CERTIFICATE-----\nnope\n"))


def test_credentials_file_round_trip_and_errors(tmp_path):
    path = write_creds(tmp_path / "c.json")
    creds = load_credentials(path)
    assert creds.auth() == BrokerAuth("dev-0", "s3cret", None, None)
    assert "s3cret" not in repr(creds)
    write_creds(path, role="admin")
    with pytest.raises(ValueError, match=r"c\.json: role"):
        load_credentials(path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "role": "device", "x": 1}))
    with pytest.raises(ValueError, match="x"):
        load_credentials(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_credentials(tmp_path / "missing.json")


def test_resolve_connection_precedence(tmp_path):
    creds = write_creds(tmp_path / "c.json")
    conn = resolve_connection(None, credentials=creds, default_url="mqtt://127.0.0.1:1883")
    assert conn.url == "mqtts://broker.example:8883"
    assert conn.auth == BrokerAuth("dev-0", "s3cret")
    assert isinstance(conn.credentials, Credentials)

    pw = tmp_path / "pw"
    pw.write_text("other\n")
    ca = tmp_path / "ca.pem"
    conn = resolve_connection("mqtts://10.0.0.9", credentials=creds, username="dev-x",
                              password_file=pw, tls_ca=ca)
    assert conn.url == "mqtts://10.0.0.9"
    assert conn.auth == BrokerAuth("dev-x", "other", ca, None)

    plain = resolve_connection(None, default_url="mqtt://127.0.0.1:1883")
    assert plain.url == "mqtt://127.0.0.1:1883" and plain.auth is None
    with pytest.raises(ValueError, match="--broker is required"):
        resolve_connection(None, username="u")
    pw.write_text("")
    with pytest.raises(ValueError, match="empty"):
        resolve_connection("mqtts://h", username="u", password_file=pw)


def test_identity_checks(tmp_path):
    creds = load_credentials(write_creds(tmp_path / "c.json"))
    check_identity(creds, federation="fed", role="device", region="north", client="dev-0")
    check_identity(None, federation="fed", role="cloud")
    for kwargs, msg in [({"client": "dev-1"}, "client 'dev-0'"),
                        ({"region": "south"}, "region 'north'"),
                        ({"federation": "other"}, "federation 'fed'"),
                        ({"role": "regional"}, "device account")]:
        args = {"federation": "fed", "role": "device", "region": "north", "client": "dev-0",
                **kwargs}
        with pytest.raises(ValueError, match=msg):
            check_identity(creds, **args)
    with pytest.raises(ValueError, match="client"):
        credentials_auth(tmp_path / "c.json", federation="fed", role="device", region="north",
                         client="dev-9")


@pytest.mark.parametrize(("url", "why"), [
    ("localhost:1883", "must look like mqtt://host:port"),
    ("tcp://broker:1883", "must look like mqtt://host:port"),
    ("wss://broker", "WebSockets is not supported"),
    ("mqtt://broker:70000", "bad port"),
    ("mqtt://:1883", "no host"),
    ("mqtt://broker/path", "must be just mqtt://host:port"),
])
def test_resolve_connection_checks_a_plain_url_too(url: str, why: str) -> None:
    """Without credentials the URL used to be parsed only by the network thread, late."""
    with pytest.raises(ValueError, match=why):
        resolve_connection(url)
    with pytest.raises(ValueError, match=why):
        resolve_connection(None, default_url=url)
    assert resolve_connection("mqtt://broker").url == "mqtt://broker"
