"""Start and stop a local MQTT broker as a child process.

Every test, scenario and single-machine demo needs a broker. Mosquitto is the reference broker;
where it is not installed we fall back to an embedded amqtt broker (``fedsa_common.
embedded_broker``) run in its own process, so that clients see the same thing either way: a TCP
listener on 127.0.0.1 speaking MQTT 3.1.1, anonymous access, retained messages, QoS 1, a packet
size cap, and a process that can be stopped (or killed) independently of the clients.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from fedsa_common.net.broker_auth import parse_url, redact_url

BrokerKind = Literal["mosquitto", "embedded"]
_MOSQUITTO_FALLBACK = Path("/usr/sbin/mosquitto")
_LOOPBACK = "127.0.0.1"
_LOG_TAIL_BYTES = 4000


class BrokerStartError(RuntimeError):
    """The broker process did not come up; the message carries the tail of its log."""


def parse_broker_url(url: str) -> tuple[str, int]:
    """Return ``(host, port)`` from ``mqtt://host[:port]`` (port defaults to 1883): the plain
    brokers this module starts and probes, so TLS and credentials are refused here."""
    endpoint = parse_url(url)
    if endpoint.tls or endpoint.username is not None:
        raise ValueError(f"broker URL must be just mqtt://host:port, got {redact_url(url)!r}")
    return endpoint.host, endpoint.port


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (racy by nature, but good enough for local brokers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


def mosquitto_path() -> str | None:
    """The Mosquitto binary, if installed (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return str(_MOSQUITTO_FALLBACK) if _MOSQUITTO_FALLBACK.exists() else None


@dataclass
class BrokerProcess:
    """A running broker child process; ``stop()`` (or leaving the ``with`` block) ends it."""

    url: str
    kind: BrokerKind
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None
    _own_workdir: Path | None = field(default=None, repr=False)
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return parse_broker_url(self.url)[1]

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate, kill if it lingers past ``timeout``, and reap the process."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_workdir is not None:
            shutil.rmtree(self._own_workdir, ignore_errors=True)
            if self.log_path is not None and self.log_path.is_relative_to(self._own_workdir):
                self.log_path = None
            self._own_workdir = None

    def log_tail(self, nbytes: int = _LOG_TAIL_BYTES) -> str:
        """The end of the broker's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with self.log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - nbytes))
            return fh.read().decode("utf-8", "replace")

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_broker(
    kind: Literal["auto", "mosquitto", "embedded"] = "auto",
    *,
    port: int | None = None,
    max_packet_bytes: int = 4_000_000,
    workdir: Path | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 15.0,
    max_queued_messages: int | None = None,
) -> BrokerProcess:
    """Start a broker on 127.0.0.1 and return once it answers an MQTT CONNECT.

    ``auto`` picks Mosquitto when installed, else the embedded amqtt broker. Config and log go
    to ``workdir`` (a temporary directory removed on ``stop()`` when not given). Raises
    ``BrokerStartError`` with the log tail if the broker is not ready within ``ready_timeout``.
    ``max_queued_messages`` (Mosquitto only; its default is 1,000, 0 = no limit) caps the QoS 1
    messages kept for an offline persistent session, such as a regional hub's while it restarts.
    """
    if max_packet_bytes < 1024:
        raise ValueError("max_packet_bytes must be at least 1024")
    binary = mosquitto_path()
    if kind == "auto":
        kind = "mosquitto" if binary else "embedded"
    if kind == "mosquitto" and binary is None:
        raise BrokerStartError("mosquitto requested but not installed")
    if kind not in ("mosquitto", "embedded"):
        raise ValueError(f"unknown broker kind {kind!r}")
    port = free_port() if port is None else port

    own_workdir = None
    if workdir is None:
        own_workdir = workdir = Path(tempfile.mkdtemp(prefix="fedsa-broker-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or workdir / f"{kind}-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")

    if kind == "mosquitto":
        assert binary is not None
        config = workdir / f"mosquitto-{port}.conf"
        config.write_text(_mosquitto_config(port, max_packet_bytes, max_queued_messages))
        cmd = [binary, "-c", str(config)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "fedsa_common.net.embedded_broker",
            "--host",
            _LOOPBACK,
            "--port",
            str(port),
            "--max-packet-bytes",
            str(max_packet_bytes),
        ]
    proc = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    broker = BrokerProcess(
        url=f"mqtt://{_LOOPBACK}:{port}",
        kind=kind,
        process=proc,
        log_path=log_path,
        _own_workdir=own_workdir,
        _log_file=log_file,
    )
    try:
        _wait_ready(broker, ready_timeout)
    except BaseException:
        broker.stop()
        raise
    return broker


def _mosquitto_config(port: int, max_packet_bytes: int,
                      max_queued_messages: int | None = None) -> str:
    # Log to stderr (unbuffered, unlike stdout), which we redirect into the log file: mosquitto
    # may drop root privileges after reading its config and then could not open our file.
    return "\n".join(
        [
            f"listener {port} {_LOOPBACK}",
            "allow_anonymous true",
            "persistence false",
            f"max_packet_size {max_packet_bytes}",
            *([f"max_queued_messages {max_queued_messages}"]
              if max_queued_messages is not None else []),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "",
        ]
    )


def _wait_ready(broker: BrokerProcess, timeout: float) -> None:
    """Poll until the port accepts a connection and answers CONNECT with CONNACK 0."""
    assert broker.process is not None
    deadline = time.monotonic() + timeout
    last_error = "not tried"
    while time.monotonic() < deadline:
        code = broker.process.poll()
        if code is not None:
            raise BrokerStartError(
                f"{broker.kind} broker exited with code {code} during startup; log tail:\n"
                f"{broker.log_tail()}"
            )
        try:
            mqtt_ping(broker.url, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except OSError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise BrokerStartError(
        f"{broker.kind} broker on {broker.url} not ready after {timeout:.1f}s ({last_error}); "
        f"log tail:\n{broker.log_tail()}"
    )


def mqtt_ping(url: str, timeout: float = 2.0) -> None:
    """Open a TCP connection, do an MQTT 3.1.1 CONNECT/CONNACK handshake, then DISCONNECT.

    Raises ``OSError`` (``ConnectionError`` for a refused handshake) when the broker does not
    answer as an MQTT broker. Hand-rolled so the readiness check needs no client library.
    """
    host, port = parse_broker_url(url)
    client_id = f"fedsa-ping-{os.getpid()}-{time.monotonic_ns() % 10**9}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, ka 10s
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    connect = bytes([0x10, len(body)]) + body  # body < 128 bytes: one-byte remaining length
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(connect)
        connack = _recv_exact(sock, 4)
        if connack[0] != 0x20 or connack[1] != 0x02 or connack[3] != 0:
            raise ConnectionError(f"unexpected CONNACK {connack.hex()} from {url}")
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection during the handshake")
        buf += chunk
    return buf
