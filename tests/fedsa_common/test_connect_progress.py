"""Why a connection attempt failed, in an operator's words (pure), and a session that
cannot reach its broker saying so while it waits (a real socket, nothing listening)."""

from __future__ import annotations

import logging
import socket
import ssl

import pytest

from fedsa_common.net.broker import free_port
from fedsa_common.net.transport import BrokerUnreachable, MqttSession, describe_connect_error


def verify_error() -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "self-signed certificate in certificate chain"
    return err


@pytest.mark.parametrize(("exc", "says"), [
    (ConnectionRefusedError(111, "Connection refused"),
     "connection refused: nothing listens on h:1?"),
    (verify_error(), "the broker's certificate did not verify (self-signed certificate in "
                     "certificate chain); check the CA"),
    (socket.gaierror(-2, "Name or service not known"),
     "cannot resolve host 'h': Name or service not known"),
    (TimeoutError("timed out"), "no answer from h:1 (timed out)"),
    (OSError(113, "No route to host"), "cannot reach h:1: No route to host"),
    (None, "cannot reach h:1 or TLS handshake failed"),
])
def test_connect_errors_are_described(exc: BaseException | None, says: str) -> None:
    assert says in describe_connect_error(exc, "h", 1, tls=True)


def test_waiting_for_an_unreachable_broker_says_why_then_gives_up(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    session = MqttSession(f"mqtt://127.0.0.1:{port}", client_id="lonely",
                          reconnect_min_s=0.1, reconnect_max_s=0.2)
    with caplog.at_level(logging.WARNING, logger="fedsa_common.net.transport"), \
            pytest.raises(BrokerUnreachable) as err:
        session.connect(timeout=1.5, report_every_s=0.3)
    assert f"mqtt://127.0.0.1:{port}" in str(err.value)
    assert "connection refused" in str(err.value)
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("still waiting for broker")]
    assert lines and all(m == f"still waiting for broker 127.0.0.1:{port} (connection "
                              f"refused: nothing listens on 127.0.0.1:{port}?)" for m in lines)
    assert isinstance(err.value, ConnectionError)  # what callers caught before
