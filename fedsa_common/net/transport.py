"""A thin paho-mqtt 2.x session: connect with backoff, chunked and raw publish/subscribe.

Why a wrapper at all: every process (device, regional hub, cloud hub) needs the same things
from MQTT and they are easy to get subtly wrong with paho directly:

* payloads larger than the broker's packet cap. A logical message on topic ``T`` is sent as
  frames (``fedsa_common.wire.chunking``) on the subtopics ``T/0``, ``T/1``, ...; a
  subscriber to the logical filter ``F`` subscribes ``F/+`` and gets the reassembled
  payload. One subtopic per frame makes *retained* chunked messages work, since the broker
  keeps one retained message per topic. When a retained message is replaced by one with
  fewer frames, the leftover ``T/{i}`` topics are cleared with empty retained payloads, and
  receivers ignore empty frames.
* small JSON messages (presence, metrics, status, the will) go unframed via ``*_raw``.
* reconnecting: the first connect retries with exponential backoff plus jitter, later drops
  are handled by paho's automatic reconnect (same backoff, jitter added by us) and every
  subscription is re-established on every reconnect, whether or not the broker kept the session.
* hostile input: malformed frames go to ``on_reject`` and never raise out of paho's callback;
  handler exceptions are logged and never stop the network loop.

Threading: handlers, ``on_connect`` and ``on_reject`` run on paho's network thread. While one
runs, no other message is received and no keepalive is answered, so callers must hand long work
(training, aggregation, disk I/O) to another thread or queue. ``publish``/``subscribe`` called
from that thread cannot wait for acknowledgements (the thread that would receive them is busy),
so there they only queue the packets and return.  A ``session_loop.LoopSession`` is the same
session with its network driven by a loop thread shared by many sessions (one epoll
selector): the same holds for that thread.

We speak MQTT 3.1.1, which both Mosquitto and the embedded amqtt broker support (amqtt has no
MQTT 5).

Authentication (``fedsa_common.net.broker_auth``): ``mqtts://`` URLs use TLS with certificate and
host-name checks; a user name and password come from the URL or ``auth``. A broker that refuses
the credentials on the first connect makes ``connect()`` fail at once instead of retrying until
its timeout: that is a configuration error, not an outage.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from fedsa_common.net.broker_auth import (
    BrokerAuth,
    redact_url,
    resolve_endpoint,
    tls_context,
    warn_plain_password,
)
from fedsa_common.wire.chunking import (
    FRAME_HEADER_BYTES,
    MIN_CHUNK_BYTES,
    Reassembler,
    parse_header,
    split_payload,
)
from fedsa_common.wire.errors import UserError, WireError

log = logging.getLogger(__name__)


class _QuietPahoShutdown(logging.Filter):
    """paho 2.2 logs an ERROR ("Client is not connected...") from its loop after every clean
    disconnect and while reconnecting; we report connection state ourselves, so drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_QuietPahoShutdown())

# CONNACK reasons (paho's names, same for MQTT 3.1.1 and 5) that no retry will change.
_AUTH_REFUSALS = frozenset({"Bad user name or password", "Not authorized"})

Handler = Callable[[str, bytes], None]

# Threaded sessions one process can hold: each runs paho's threaded loop, which watches its
# socket and a loopback socket pair (three descriptors) with select(), and select() cannot
# watch a descriptor numbered 1024 or more: a session past ~330 in one process never
# connects.  Hosts of many sessions (edge_client/light.py) drive them from one epoll loop
# instead (fedsa_common/net/session_loop.py), limited by the file descriptors only.
MAX_SESSIONS_PER_PROCESS = 300


class BrokerUnreachable(ConnectionError, UserError):
    """``connect()`` gave up: the broker was not reached (or refused the credentials)
    within its timeout.  The message names the broker and the last reason."""

    option = "--broker"


def describe_connect_error(exc: BaseException | None, host: str, port: int, tls: bool) -> str:
    """Why a connection attempt failed, in the words an operator acts on: refused, name
    not resolved, TLS verification (the CA, the host name), timed out."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS handshake failed: the broker's certificate did not verify "
                f"({exc.verify_message or exc}); check the CA (--tls-ca or the credentials "
                "file) and that the URL's host name is in the broker certificate")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: nothing listens on {where}?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host!r}: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} (timed out)"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}"
    return f"cannot reach {where}" + (
        " or TLS handshake failed (check the CA and that the URL's host name is in the "
        "broker certificate)" if tls else "")
RejectHandler = Callable[[str, WireError], None]


@dataclass(frozen=True)
class Will:
    """Last-will message the broker publishes (unframed) if the session dies without ``close()``."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


@dataclass(frozen=True)
class _Subscription:
    topic_filter: str  # what the caller asked for; for chunked ones, the logical filter
    broker_filter: str  # what is subscribed at the broker
    handler: Handler
    qos: int
    chunked: bool


def chunk_filter(topic_filter: str) -> str:
    """Broker filter that matches the frame subtopics of every topic matching ``topic_filter``."""
    if topic_filter == "#" or topic_filter.endswith("/#"):
        return topic_filter  # '#' already spans the extra level and may not be followed by one
    return f"{topic_filter}/+"


def chunk_topic(topic: str, idx: int) -> str:
    """The subtopic frame ``idx`` of a logical message on ``topic`` is published to."""
    return f"{topic}/{idx}"


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid publish topic {topic!r}")


def _check_filter(topic_filter: str) -> None:
    levels = topic_filter.split("/")
    bad = (
        not topic_filter
        or "\x00" in topic_filter
        or any("#" in lvl and (lvl != "#" or i != len(levels) - 1) for i, lvl in enumerate(levels))
        or any("+" in lvl and lvl != "+" for lvl in levels)
    )
    if bad:
        raise ValueError(f"invalid topic filter {topic_filter!r}")


def _chunk_index(topic: str) -> tuple[str, int]:
    """Split a frame subtopic ``T/idx`` into ``(T, idx)``; ``WireError`` if it is not one."""
    logical, sep, idx_s = topic.rpartition("/")
    canonical = idx_s.isascii() and idx_s.isdigit() and str(int(idx_s)) == idx_s
    if not sep or not logical or not canonical or int(idx_s) > 0xFFFF:
        raise WireError("frame_bad_topic", f"{topic!r} is not <topic>/<frame index>")
    return logical, int(idx_s)


class _AckWaiter:
    """Matches SUBACKs and UNSUBACKs (by message id) to callers waiting for them.

    The ack can arrive on the network thread before the caller has registered its wait, so
    early results are kept until claimed; mids nobody will claim are registered as ignored.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[int, Any] = {}
        self._waiting: dict[int, threading.Event] = {}
        self._ignored: set[int] = set()

    def acked(self, mid: int, result: Any) -> None:
        with self._lock:
            if mid in self._ignored:
                self._ignored.discard(mid)
                return
            self._results[mid] = result
            event = self._waiting.pop(mid, None)
        if event is not None:
            event.set()

    def ignore(self, mid: int) -> None:
        with self._lock:
            if self._results.pop(mid, None) is None:
                self._ignored.add(mid)

    def wait(self, mid: int, timeout: float) -> Any:
        with self._lock:
            if mid in self._results:
                return self._results.pop(mid)
            event = self._waiting[mid] = threading.Event()
        event.wait(timeout)
        with self._lock:
            self._waiting.pop(mid, None)
            if mid in self._results:
                return self._results.pop(mid)
            self._ignored.add(mid)
        raise TimeoutError(f"no acknowledgement for message id {mid} within {timeout}s")

    def reset(self) -> None:
        """Forget acks of a dead connection: they will never come, and mids get reused."""
        with self._lock:
            self._results.clear()
            self._ignored.clear()


class MqttSession:
    """One MQTT client connection with chunked and raw publish/subscribe; see the module doc."""

    def __init__(
        self,
        broker_url: str,
        client_id: str,
        *,
        payload_limit: int = 1_000_000,
        will: Will | None = None,
        clean_session: bool = False,
        keepalive: int = 30,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        on_connect: Callable[[], None] | None = None,
        on_reject: RejectHandler | None = None,
        max_message_bytes: int = 8_000_000,
        auth: BrokerAuth | None = None,
    ) -> None:
        if payload_limit < FRAME_HEADER_BYTES + MIN_CHUNK_BYTES:
            raise ValueError(f"payload_limit must be >= {FRAME_HEADER_BYTES + MIN_CHUNK_BYTES}")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        endpoint = resolve_endpoint(broker_url, auth)
        warn_plain_password(endpoint, broker_url)
        self.broker_url = redact_url(broker_url)  # used in messages only
        self.client_id = client_id
        self.payload_limit = payload_limit
        self.stats: dict[str, int] = dict.fromkeys(
            ("bytes_published", "bytes_received", "frames_rejected"), 0
        )
        self._host, self._port, self._tls = endpoint.host, endpoint.port, endpoint.tls
        self._keepalive = keepalive
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._user_on_connect = on_connect
        self._on_reject = on_reject or self._log_reject
        self._reassembler = Reassembler(max_message_bytes=max_message_bytes)
        self._lock = threading.Lock()
        self._subs: list[_Subscription] = []
        self._forget: list[str] = []  # unsubscribed chunked filters; applied on the net thread
        self._retained_chunks: dict[str, int] = {}  # topic -> frames last published retained
        self._subacks = _AckWaiter()
        # set once a connection is up *and* the broker acknowledged the subscriptions made
        # before it, so a persistent session never misses what is published right after
        # connect() returns
        self._connected_once = threading.Event()
        self._settled = threading.Event()  # connected, or refused for good (bad credentials)
        self._resubscribe_mid: int | None = None  # the SUBACK that completes the first connect
        self._stopping = threading.Event()
        self._net_thread: int | None = None
        self._attempts = 0
        self._last_error = "no answer yet"
        self._started = False
        self._closed = False

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.enable_logger(_paho_log)
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            client.tls_set_context(tls_context(auth))
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]
        if will is not None:
            _check_topic(will.topic)
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_pre_connect = self._handle_pre_connect
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_suback
        client.on_unsubscribe = self._handle_suback  # same mid space, same waiter
        client.on_message = self._handle_message
        self._client = client

    # ----------------------------------------------------------------- connection lifecycle

    def connect(self, timeout: float = 30.0, *, report_every_s: float | None = None) -> None:
        """Start the network thread and wait until the broker accepted the connection and
        acknowledged the subscriptions made before it.

        Retries with exponential backoff and jitter; raises ``BrokerUnreachable`` naming the
        URL if not connected within ``timeout``, or at once if the broker refused the
        credentials (the session is then closed). With ``report_every_s``, logs a "still
        waiting for broker HOST:PORT (reason)" warning that often meanwhile, so that a
        process waiting for a broker is never silent. Once connected, paho reconnects on its
        own after any drop. Call at most once per session.
        """
        self.start()
        self.await_connected(timeout, report_every_s=report_every_s)

    def start(self) -> None:
        """Begin connecting (in the background) without waiting: ``await_connected`` waits.
        ``connect()`` is the two in one; a host of many sessions starts them all first."""
        self._ensure_open()
        if self._started:
            raise RuntimeError("connect() may be called only once per MqttSession")
        self._started = True
        self._client.connect_async(self._host, self._port, self._keepalive)
        self._start_network()

    def _start_network(self) -> None:
        """Drive the client's network traffic: here paho's own thread (``loop_start``),
        which also reconnects; ``session_loop.LoopSession`` hands it to a shared loop."""
        self._client.loop_start()

    def _stop_network(self) -> None:
        """Stop driving the network once closed (``loop_stop`` joins paho's thread)."""
        self._client.loop_stop()

    def await_connected(self, timeout: float = 30.0, *,
                        report_every_s: float | None = None) -> None:
        """Wait as ``connect()`` does for a session ``start()`` started."""
        deadline = time.monotonic() + timeout
        refused = False
        while (left := deadline - time.monotonic()) > 0:
            if self._settled.wait(left if report_every_s is None else min(left,
                                                                          report_every_s)):
                refused = not self._connected_once.is_set()
                break
            if time.monotonic() < deadline:
                log.warning("still waiting for broker %s:%d (%s)", self._host, self._port,
                            self._last_error)
        if not self._connected_once.is_set():
            if self._resubscribe_mid is not None and self.connected:
                self._last_error = "connected, but the broker did not acknowledge the subscriptions"
            self.close()
            when = "" if refused else f" within {timeout:.1f}s"
            raise BrokerUnreachable(
                f"could not connect to MQTT broker {self.broker_url} as {self.client_id!r}"
                f"{when} (last error: {self._last_error})"
            )

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now (it may drop and come back at any time)."""
        return self._client.is_connected()

    def close(self, *, unsubscribe: bool = False, timeout: float = 5.0) -> None:
        """Send a clean DISCONNECT (so the broker discards the will) and stop the network thread.

        ``unsubscribe``: first end every subscription and wait (at most ``timeout``) for the
        broker's UNSUBACK, for a process that is done for good (a hub whose federation
        finished).  Why: a socket closed while messages are still arriving is reset, and a
        broker that reads the reset before the DISCONNECT publishes the will, which then
        replaces the final retained status ("finished") with "offline".  After the UNSUBACK
        nothing more is routed to the session, so its DISCONNECT is the last thing the
        broker reads.  Not for a restart: a persistent session keeps queueing for its
        subscriptions only while it has them."""
        if self._closed:
            return
        if unsubscribe and self._started:
            with self._lock:
                filters = sorted({s.topic_filter for s in self._subs})
            for topic_filter in filters:
                try:
                    self.unsubscribe(topic_filter, timeout=timeout)
                except (TimeoutError, ConnectionError, OSError) as err:
                    log.debug("unsubscribe %s before closing: %s", topic_filter, err)
                    break
        self._closed = True
        self._stopping.set()
        self._client.disconnect()
        if self._started:
            self._stop_network()

    def drop(self) -> None:
        """Vanish without a DISCONNECT, as a device does when its battery or radio dies: the
        broker sees the connection break and publishes the will.  Used by scenarios."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        sock = self._client.socket()
        if self._started:
            self._stop_network()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> MqttSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- subscribe

    def subscribe(
        self, topic_filter: str, handler: Handler, *, qos: int = 1, timeout: float = 30.0
    ) -> None:
        """Receive whole chunked messages on topics matching ``topic_filter``.

        ``handler(logical_topic, payload)`` runs on the network thread. The subscription is kept
        and re-established on every reconnect; when connected, waits for the broker's SUBACK.
        """
        _check_filter(topic_filter)
        sub = _Subscription(topic_filter, chunk_filter(topic_filter), handler, qos, chunked=True)
        self._add(sub, timeout)

    def subscribe_raw(
        self, topic_filter: str, handler: Handler, *, qos: int = 1, timeout: float = 30.0
    ) -> None:
        """Receive unframed messages (including empty ones) exactly as published."""
        _check_filter(topic_filter)
        self._add(_Subscription(topic_filter, topic_filter, handler, qos, chunked=False), timeout)

    def _add(self, sub: _Subscription, timeout: float) -> None:
        self._ensure_open()
        with self._lock:
            self._subs.append(sub)
        if not self.connected:
            return  # sent by _handle_connect once connected
        rc, mid = self._client.subscribe(sub.broker_filter, sub.qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return  # connection dropped meanwhile; _handle_connect will subscribe
        if self._on_network_thread():
            self._subacks.ignore(mid)
            return
        codes = self._subacks.wait(mid, timeout)
        if any(code.is_failure for code in codes):
            raise ConnectionError(f"broker refused subscription {sub.broker_filter!r}: {codes}")

    def unsubscribe(
        self, topic_filter: str, handler: Handler | None = None, *, timeout: float = 30.0
    ) -> bool:
        """Stop receiving on ``topic_filter`` (as given to ``subscribe``/``subscribe_raw``):
        the subscriptions with that filter (and ``handler``, when given) are forgotten, so
        they are not re-established on reconnect, and the broker is told once no other
        subscription needs the same broker filter; when connected, waits for its UNSUBACK.
        Returns whether anything was subscribed."""
        self._ensure_open()
        with self._lock:
            gone = [s for s in self._subs if s.topic_filter == topic_filter
                    and (handler is None or s.handler is handler)]
            self._subs = [s for s in self._subs if s not in gone]
            still = {s.broker_filter for s in self._subs}
            # a later subscription must get the retained message again, even one whose
            # frames this session already reassembled
            self._forget += [s.topic_filter for s in gone if s.chunked
                             and s.broker_filter not in still]
        filters = sorted({s.broker_filter for s in gone} - still)
        if not filters or not self.connected:
            return bool(gone)  # a reconnect subscribes only what is left
        rc, mid = self._client.unsubscribe(filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return bool(gone)  # connection dropped meanwhile; nothing to resubscribe
        if self._on_network_thread():
            self._subacks.ignore(mid)
        else:
            self._subacks.wait(mid, timeout)
        return True

    # ----------------------------------------------------------------------------- publish

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 30.0,
    ) -> int:
        """Publish ``payload`` as frames on ``topic/0``, ``topic/1``, ... and wait for all acks.

        Returns the MQTT payload bytes sent (``len(payload)`` plus 24 header bytes per frame,
        plus nothing for clearing stale retained frames). Raises ``TimeoutError`` when not all
        frames are acknowledged within ``timeout``; paho keeps the unacknowledged ones queued
        and still delivers them if the connection comes back.
        """
        self._ensure_open()
        _check_topic(topic)
        frames = split_payload(payload, self.payload_limit)
        infos = [
            self._client.publish(chunk_topic(topic, i), frame, qos=qos, retain=retain)
            for i, frame in enumerate(frames)
        ]
        if retain:
            with self._lock:
                previous = self._retained_chunks.get(topic, 0)
                self._retained_chunks[topic] = len(frames)
            infos += [
                self._client.publish(chunk_topic(topic, i), b"", qos=qos, retain=True)
                for i in range(len(frames), previous)
            ]
        sent = sum(len(frame) for frame in frames)
        self._count("bytes_published", sent)
        self._wait_published(infos, timeout, f"publish to {topic!r}", qos)
        return sent

    def publish_raw(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 30.0,
    ) -> int:
        """Publish one unframed message (at most ``payload_limit`` bytes) and wait for its ack."""
        return self.publish_raw_many([(topic, payload)], qos=qos, retain=retain,
                                     timeout=timeout)

    def publish_raw_many(
        self,
        messages: Sequence[tuple[str, bytes]],
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 30.0,
    ) -> int:
        """Publish unframed messages back to back, then wait for all their acks: one round
        trip for a batch (a hub's acknowledgements of a burst of updates) instead of one per
        message.  Returns the payload bytes sent."""
        self._ensure_open()
        for topic, payload in messages:
            _check_topic(topic)
            if len(payload) > self.payload_limit:
                raise ValueError(
                    f"raw payload of {len(payload)} bytes > payload_limit {self.payload_limit}; "
                    "use publish() for large messages"
                )
        infos = []
        for topic, payload in messages:
            infos.append(self._client.publish(topic, payload, qos=qos, retain=retain))
            self._count("bytes_published", len(payload))
        what = (f"publish_raw to {messages[0][0]!r}" if len(messages) == 1
                else f"publish_raw of {len(messages)} messages")
        self._wait_published(infos, timeout, what, qos)
        return sum(len(payload) for _, payload in messages)

    def clear_retained(self, topic: str, *, timeout: float = 30.0) -> None:
        """Remove a retained chunked message: every frame topic this session published, or T/0."""
        self._ensure_open()
        _check_topic(topic)
        with self._lock:
            count = self._retained_chunks.pop(topic, 0)
        infos = [
            self._client.publish(chunk_topic(topic, i), b"", qos=1, retain=True)
            for i in range(max(1, count))
        ]
        self._wait_published(infos, timeout, f"clear_retained {topic!r}", qos=1)

    def _wait_published(
        self, infos: list[mqtt.MQTTMessageInfo], timeout: float, what: str, qos: int
    ) -> None:
        if self._on_network_thread():
            return  # waiting here would block the thread that receives the acks
        deadline = time.monotonic() + timeout
        for done, info in enumerate(infos):
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
                # Published while disconnected: paho keeps QoS>0 messages queued and sends them
                # after reconnecting, so wait for that instead of failing right away. (QoS 0
                # ones are dropped; wait_for_publish reports that as an error below.)
                info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                published = info.is_published()
            except (RuntimeError, ValueError) as exc:
                raise ConnectionError(f"{what} on {self.broker_url} failed: {exc}") from exc
            if not published:
                raise TimeoutError(
                    f"{what} on {self.broker_url}: only {done} of {len(infos)} frames "
                    f"acknowledged within {timeout:.1f}s"
                )

    # ---------------------------------------------------------- paho callbacks (net thread)

    def _handle_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._net_thread = threading.get_ident()
        attempt = self._attempts
        self._attempts += 1
        if attempt:
            self._pause_before_reconnect(attempt)

    def _pause_before_reconnect(self, attempt: int) -> None:
        """paho's thread already waited its exponential delay; add jitter so that many
        clients dropped by the same broker restart do not all come back in the same instant
        (a shared loop, which must not block, waits both before reconnecting instead)."""
        self._stopping.wait(self.reconnect_jitter(attempt))

    def reconnect_jitter(self, attempt: int) -> float:
        """Seconds of random wait added to the exponential delay before reconnect
        ``attempt`` (1, 2, ...): up to half the delay of the attempt after it."""
        return random.uniform(0.0, self.reconnect_delay(attempt + 1) / 2)

    def reconnect_delay(self, attempt: int) -> float:
        """paho's exponential delay before reconnect ``attempt`` (1, 2, ...: the minimum,
        doubling up to the maximum), for a loop that reconnects the session itself."""
        return min(self._reconnect_max_s, self._reconnect_min_s * 2 ** min(attempt - 1, 16))

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: Any,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            self._last_error = f"CONNACK refused: {reason_code}"
            log.warning(
                "%s: broker %s refused connection: %s", self.client_id, self.broker_url, reason_code
            )
            if str(reason_code) in _AUTH_REFUSALS and not self._connected_once.is_set():
                self._settled.set()  # retrying with the same credentials cannot help
            return
        self._attempts = 1  # the next connect is a reconnect and gets jitter
        log.info(
            "%s connected to %s (session present: %s)",
            self.client_id,
            self.broker_url,
            flags.session_present,
        )
        # None on a reconnect or without subscriptions; else _handle_suback completes connect
        self._resubscribe_mid = self._resubscribe()
        if self._resubscribe_mid is None:
            self._connected_once.set()
            self._settled.set()
        if self._user_on_connect is not None:
            try:
                self._user_on_connect()
            except Exception:
                log.exception("%s: on_connect callback failed", self.client_id)

    def _resubscribe(self) -> int | None:
        """Subscribe every known filter again: brokers may have lost the session (restart).
        Returns the SUBACK's message id when this is the first connect (``connect()`` waits
        for it); later ones are not waited for."""
        with self._lock:
            wanted: dict[str, int] = {}
            for sub in self._subs:
                wanted[sub.broker_filter] = max(sub.qos, wanted.get(sub.broker_filter, 0))
        if not wanted:
            return None
        rc, mid = self._client.subscribe(list(wanted.items()))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return None
        if self._connected_once.is_set():
            self._subacks.ignore(mid)
            return None
        return int(mid)

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around the connection attempt, so
        # the exception (refused, TLS verification, DNS, timeout) is the one being handled
        exc = sys.exc_info()[1]
        self._last_error = describe_connect_error(exc, self._host, self._port, self._tls)
        log.debug("%s: connection attempt to %s failed: %s", self.client_id, self.broker_url,
                  self._last_error)

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: Any,
        properties: Any,
    ) -> None:
        self._subacks.reset()
        if not (self._connected_once.is_set() or self._stopping.is_set()
                or self._last_error.startswith("CONNACK refused")):
            self._last_error = (f"the broker closed the connection before accepting it "
                                f"({reason_code})"
                                + ("" if self._tls else "; is it a TLS port (mqtts://)?"))
        if not self._stopping.is_set():
            log.warning(
                "%s lost connection to %s (%s); reconnecting",
                self.client_id,
                self.broker_url,
                reason_code,
            )

    def _handle_suback(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: list[Any], properties: Any
    ) -> None:
        if mid == self._resubscribe_mid:  # same thread as _handle_connect: no race
            self._resubscribe_mid = None
            refused = [c for c in codes if c.is_failure]
            if refused:
                log.warning("%s: broker %s refused subscriptions: %s",
                            self.client_id, self.broker_url, refused)
            self._connected_once.set()
            self._settled.set()
            return
        self._subacks.acked(mid, codes)

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._dispatch(msg.topic, msg.payload)
        except Exception:  # never let anything escape into paho's loop
            log.exception("%s: failed to handle message on %r", self.client_id, msg.topic)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        self._count("bytes_received", len(payload))
        with self._lock:
            subs = list(self._subs)
            forget, self._forget = self._forget, []
        for gone in forget:  # the reassembler belongs to this thread
            self._reassembler.forget(lambda key, f=gone: mqtt.topic_matches_sub(f, key))
        chunked = []
        for sub in subs:
            if not mqtt.topic_matches_sub(sub.broker_filter, topic):
                continue  # e.g. amqtt replays retained messages of other clients' filters
            if sub.chunked:
                chunked.append(sub)
            else:
                self._call(sub.handler, topic, payload)
        if not chunked or not payload:
            return  # empty frames are cleared retained chunks
        try:
            logical, idx = _chunk_index(topic)
            header = parse_header(payload)
            if header.idx != idx:
                raise WireError("frame_index_mismatch", f"header idx {header.idx} on {topic!r}")
            whole = self._reassembler.add(logical, payload, time.monotonic())
        except WireError as err:
            self._count("frames_rejected", 1)
            try:
                self._on_reject(topic, err)
            except Exception:
                log.exception("%s: on_reject callback failed", self.client_id)
            return
        if whole is None:
            return
        for sub in chunked:
            if mqtt.topic_matches_sub(sub.topic_filter, logical):
                self._call(sub.handler, logical, whole)

    def _call(self, handler: Handler, topic: str, payload: bytes) -> None:
        try:
            handler(topic, payload)
        except Exception:
            log.exception("%s: handler %r failed on %r", self.client_id, handler, topic)

    # ------------------------------------------------------------------------------ helpers

    def _log_reject(self, topic: str, err: WireError) -> None:
        log.warning("%s: rejected frame on %r: %s", self.client_id, topic, err)

    def _count(self, key: str, amount: int) -> None:
        with self._lock:
            self.stats[key] += amount

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"MqttSession {self.client_id!r} is closed")

    def _on_network_thread(self) -> bool:
        return self._net_thread is not None and threading.get_ident() == self._net_thread
