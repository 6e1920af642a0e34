"""One thread drives the network traffic of many MQTT sessions from one epoll selector.

Why: an ``MqttSession`` normally runs paho's threaded loop, a thread per session that
watches its socket and a loopback pair with select(), which cannot watch a descriptor
numbered 1024 or more: a process holds ~330 such sessions, and 10,000 light devices
(edge_client/light.py) would take 34 processes.  Here the sessions share one thread and one
``selectors.DefaultSelector`` (epoll on Linux): one descriptor per session, so the process's
descriptor limit (``fd_limit``) is the only bound.

How: paho-mqtt 2.x's external-loop interface.  The client says when its socket opens and
closes (``on_socket_open``/``on_socket_close``) and when it has bytes waiting to go out
(``on_socket_register_write``/``on_socket_unregister_write``); the loop calls ``loop_read``
and ``loop_write`` when the selector reports the socket ready, and ``loop_misc`` (keepalive)
every ``MISC_EVERY_S``.  ``LoopSession`` is an ``MqttSession`` in everything else: the same
paho client configuration (client id, persistent session, will, TLS, credentials), the same
subscriptions, chunking, acknowledgement waits and callbacks; it only hands its network to a
``SessionLoop``.  paho reconnects on its own only in its threaded loop, so the loop
reconnects a dropped session itself, after the same exponential delay plus jitter.

Threads: the loop thread runs every session's handlers and ``on_connect`` (as paho's thread
does for one session: keep them short).  Other threads may publish, subscribe and close:
paho queues the packet and asks for write interest, which reaches the loop through a wake-up
socket pair; the write interest actually set is recomputed from ``want_write()`` after every
read and write, so a request that races with the end of a write is never lost.

Connecting is paced: at most ``max_connecting`` sessions are between their TCP connect and
the acknowledgement of their subscriptions at once, so that thousands started together do
not all queue on the broker's accept backlog.  paho opens the TCP connection (and does the
TLS handshake) blocking, on the loop thread: quick against a broker that answers or refuses,
but a broker host that drops packets stalls the loop for ``CONNECT_TIMEOUT_S`` per attempt.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from fedsa_common.net.transport import MqttSession

log = logging.getLogger(__name__)

MISC_EVERY_S = 2.0  # keepalive checks: well inside a 30 s keepalive
MAX_CONNECTING = 256  # sessions between TCP connect and SUBACK at once
CONNECT_TIMEOUT_S = 2.0  # a blocking TCP connect on the loop thread gives up after this

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class SessionLoop:
    """The thread and selector that serve every ``LoopSession`` attached to it.

    Started by the first session's ``start()``; ``close()`` waits for the sessions to finish
    (closed and their DISCONNECT sent) and stops the thread."""

    def __init__(self, *, name: str = "mqtt-session-loop",
                 max_connecting: int = MAX_CONNECTING) -> None:
        if max_connecting < 1:
            raise ValueError(f"max_connecting must be >= 1, not {max_connecting}")
        self.name = name
        self.max_connecting = max_connecting
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        self._woken = False
        self._calls: deque[Callable[[], None]] = deque()  # from any thread
        self._writes: deque[LoopSession] = deque()  # write interest asked off the loop
        self._to_start: deque[LoopSession] = deque()
        self._connecting: set[LoopSession] = set()
        self._timers: list[tuple[float, int, LoopSession]] = []  # reconnects due
        self._seq = itertools.count()
        self._lock = threading.Condition()  # guards _sessions; notified when one finishes
        self._sessions: set[LoopSession] = set()  # started and not finished
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._stop = False

    # ------------------------------------------------------------------- any thread

    @property
    def sessions(self) -> int:
        """Sessions started and not finished yet."""
        with self._lock:
            return len(self._sessions)

    def on_loop_thread(self) -> bool:
        return self._ident is not None and threading.get_ident() == self._ident

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread."""
        self._calls.append(fn)
        self._wake()

    def attach(self, session: LoopSession) -> None:
        """Queue ``session`` for connecting (``LoopSession.start``); starts the thread."""
        with self._lock:
            if self._stop:
                raise RuntimeError(f"session loop {self.name!r} is closed")
            self._sessions.add(session)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name,
                                                daemon=True)
                self._thread.start()
        self._to_start.append(session)
        self._wake()

    def close(self, timeout: float = 30.0) -> bool:
        """Wait up to ``timeout`` for every session to finish (close them first), then stop
        the thread, cutting what is still open.  Returns whether all had finished."""
        with self._lock:
            done = self._lock.wait_for(lambda: not self._sessions, timeout)
            self._stop = True
            thread = self._thread
        self._woken = False
        self._wake()
        if thread is not None and not self.on_loop_thread():
            thread.join(timeout)
        if thread is None:
            self._release_selector()
        return done

    def _wake(self) -> None:
        if self._woken:
            return  # a byte is on its way; the loop drains the queues after reading it
        self._woken = True
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_w.send(b"\0")

    # ------------------------------------------------------- paho's socket callbacks

    def _opened(self, s: LoopSession, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._selector.register(sock, _READ, s)
        s._loop_sock, s._loop_mask = sock, _READ

    def _closing(self, s: LoopSession, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        s._loop_sock, s._loop_mask = None, 0
        if not s._loop_reconnecting:  # reconnect() closes the old socket first
            self.call_soon(functools.partial(self._after_close, s))

    def _wants_write(self, s: LoopSession, _client: mqtt.Client, _userdata: Any,
                     _sock: Any) -> None:
        if self.on_loop_thread():
            self._sync(s)
        else:
            self._writes.append(s)
            self._wake()

    def _wrote(self, s: LoopSession, _client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        if self.on_loop_thread():
            self._sync(s)

    # ------------------------------------------------------------------ loop thread

    def _run(self) -> None:
        self._ident = threading.get_ident()
        next_misc = time.monotonic() + MISC_EVERY_S
        try:
            while not self._stop:
                now = time.monotonic()
                wait = next_misc - now
                if self._timers:
                    wait = min(wait, self._timers[0][0] - now)
                for key, mask in self._selector.select(max(0.0, wait)):
                    if key.data is None:
                        self._drain_wake()
                    else:
                        self._serve(key.data, mask)
                self._run_calls()
                self._flush_writes()
                self._run_timers()
                if self._to_start:
                    self._start_queued()
                if time.monotonic() >= next_misc:
                    self._misc()
                    next_misc = time.monotonic() + MISC_EVERY_S
        except Exception:
            log.exception("session loop %s failed; its sessions stop", self.name)
        finally:
            self._release_selector()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        self._woken = False

    def _serve(self, s: LoopSession, mask: int) -> None:
        client = s._client
        try:
            if mask & _READ:
                client.loop_read()
                sock = s._loop_sock
                # TLS may hold decrypted bytes the selector cannot see: read them too
                while sock is not None and getattr(sock, "pending", None) and sock.pending():
                    client.loop_read()
                    sock = s._loop_sock
            if mask & _WRITE and s._loop_sock is not None:
                client.loop_write()
        except Exception:
            log.exception("%s: network loop step failed", s.client_id)
        self._sync(s)

    def _sync(self, s: LoopSession) -> None:
        """Set the socket's interest from what the client has to send now."""
        sock = s._loop_sock
        if sock is None:
            return
        want = _READ | (_WRITE if s._client.want_write() else 0)
        if want != s._loop_mask:
            self._selector.modify(sock, want, s)
            s._loop_mask = want

    def _run_calls(self) -> None:
        while self._calls:
            fn = self._calls.popleft()
            try:
                fn()
            except Exception:
                log.exception("session loop call failed")

    def _flush_writes(self) -> None:
        seen: set[LoopSession] = set()
        while self._writes:
            s = self._writes.popleft()
            if s in seen or s._loop_sock is None:
                continue
            seen.add(s)
            try:
                s._client.loop_write()  # most often the socket takes it all at once
            except Exception:
                log.exception("%s: network write failed", s.client_id)
            self._sync(s)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, s = heapq.heappop(self._timers)
            self._attempt(s)

    def _start_queued(self) -> None:
        self._connecting = {s for s in self._connecting
                            if not (s._settled.is_set() or s._stopping.is_set())}
        while self._to_start and len(self._connecting) < self.max_connecting:
            s = self._to_start.popleft()
            self._connecting.add(s)
            self._attempt(s)

    def _misc(self) -> None:
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            if s._loop_sock is not None:
                try:
                    s._client.loop_misc()  # keepalive: PINGREQ, or drop a silent broker
                except Exception:
                    log.exception("%s: keepalive check failed", s.client_id)

    def _attempt(self, s: LoopSession) -> None:
        """Open the session's connection (paho sends CONNECT); on failure, try again later."""
        if s._stopping.is_set():
            self._finish(s)
            return
        if s._loop_sock is not None:
            return
        s._loop_reconnecting = True
        try:
            s._client.reconnect()
        except OSError:  # refused, unreachable, timed out, TLS: the reason is kept
            s._handle_connect_fail(s._client, None)
            self._schedule(s)
        except Exception:
            log.exception("%s: connection attempt failed", s.client_id)
            self._schedule(s)
        else:
            self._sync(s)
        finally:
            s._loop_reconnecting = False

    def _after_close(self, s: LoopSession) -> None:
        if s._loop_sock is not None:
            return  # already connected again
        if s._stopping.is_set():
            self._finish(s)
        else:
            self._schedule(s)

    def _schedule(self, s: LoopSession) -> None:
        attempt = max(1, s._attempts)
        delay = s.reconnect_delay(attempt) + s.reconnect_jitter(attempt)
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), s))

    def _finish(self, s: LoopSession) -> None:
        self._connecting.discard(s)
        with self._lock:
            self._sessions.discard(s)
            self._lock.notify_all()

    def _release_selector(self) -> None:
        """Cut the connections still open (their brokers publish the wills) and free the
        selector and the wake-up pair."""
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError, KeyError, ValueError):
                self._selector.unregister(key.fileobj)
            if key.data is not None:
                key.data._loop_sock = None
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        with self._lock:
            self._sessions.clear()
            self._lock.notify_all()


class LoopSession(MqttSession):
    """An ``MqttSession`` whose network traffic a shared ``SessionLoop`` drives; see the
    module doc.  ``connect()``, ``start()``/``await_connected()``, publish, subscribe and
    ``close()`` work as on a threaded session; ``close()`` returns without waiting for the
    DISCONNECT to go out (``SessionLoop.close`` waits for all)."""

    def __init__(self, broker_url: str, client_id: str, *, loop: SessionLoop,
                 **options: Any) -> None:
        super().__init__(broker_url, client_id, **options)
        self._loop = loop
        self._loop_sock: Any = None
        self._loop_mask = 0
        self._loop_reconnecting = False
        client = self._client
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_socket_open = functools.partial(loop._opened, self)
        client.on_socket_close = functools.partial(loop._closing, self)
        client.on_socket_register_write = functools.partial(loop._wants_write, self)
        client.on_socket_unregister_write = functools.partial(loop._wrote, self)

    def _start_network(self) -> None:
        self._loop.attach(self)

    def _stop_network(self) -> None:
        self._loop.call_soon(functools.partial(self._loop._after_close, self))

    def _pause_before_reconnect(self, attempt: int) -> None:
        """The loop waited the delay and the jitter before reconnecting: never block it."""

    def _on_network_thread(self) -> bool:
        return self._loop.on_loop_thread()

    def drop(self) -> None:
        """Vanish without a DISCONNECT (the broker publishes the will): the loop shuts the
        socket down, paho sees the connection end and the session finishes."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._started:
            self._loop.call_soon(self._cut)

    def _cut(self) -> None:
        sock = self._loop_sock
        if sock is None:
            self._loop._after_close(self)
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
