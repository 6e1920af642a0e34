"""A session whose link churns and lags: wraps a real ``MqttSession`` (or a test's fake)
and, following a ``LinkSchedule`` (fedsa_common/net/link_schedule.py), holds each publish
back by the scheduled delay and, while the link is scheduled offline, loses what the
owner publishes and what it would receive.

Why a wrapper: devices and hubs take their session as a constructor argument
(``session=``), so a test or a scenario can make one participant's link fail in the middle
of a round, with the process, its state and its round still running, and check that the
protocol's acknowledgements and resends lose nothing.  The participant runs its own code
unchanged; a link that never goes offline and has no delay passes everything straight
through.

It models the worst case of a lost connection: nothing published or arriving while the link
is down is queued for later (neither paho's queue of unacknowledged messages nor the
broker's for a persistent session survives), and the publisher is not told: it learns of
the loss only by a missing acknowledgement, as over a real link that died after the message
left.  ``connected`` says False meanwhile.  Not simulated: the broker publishing the will
(the TCP connection itself stays up) and the owner's ``on_connect`` on recovery.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from fedsa_common.net.link_schedule import LinkSchedule
from fedsa_common.net.transport import Handler


class SimulatedLink:
    """``inner`` seen through a link following ``schedule``; ``clock`` gives the seconds
    the schedule is read at (minus their value at construction) and ``sleep`` holds a
    publish back, both replaceable so that tests need not wait.  ``dropped`` counts the
    messages lost: ``published`` (outgoing) and ``received`` (incoming)."""

    def __init__(self, inner: Any, schedule: LinkSchedule, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.schedule = schedule
        self._clock = clock
        self._sleep = sleep
        self._t0 = clock()
        self._lock = threading.Lock()
        self._publishes = 0
        self._gates: dict[tuple[str, Handler], Handler] = {}
        self.dropped: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        """What the link does not touch (``broker_url``, ``payload_limit``, ``stats``,
        ``client_id``) is the inner session's."""
        if name == "inner":  # not set yet (copying): no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def offline(self) -> bool:
        """Whether the schedule has the link down now."""
        return self.schedule.is_offline(self._clock() - self._t0)

    @property
    def connected(self) -> bool:
        """False while the link is down; else what the inner session says (a fake without
        the notion counts as connected)."""
        return not self.offline and bool(getattr(self.inner, "connected", True))

    # ------------------------------------------------------------------------ lifecycle

    def connect(self, timeout: float = 30.0, *, report_every_s: float | None = None) -> None:
        self.inner.connect(timeout, report_every_s=report_every_s)

    def close(self) -> None:
        self.inner.close()

    def drop(self) -> None:
        self.inner.drop()

    # -------------------------------------------------------------------------- publish

    def _through(self, count: int) -> bool:
        """Hold a publish back by its scheduled delay; whether the link then carries it
        (else its ``count`` messages are counted as lost)."""
        with self._lock:
            index, self._publishes = self._publishes, self._publishes + 1
        delay = self.schedule.publish_delay(index)
        if delay > 0:
            self._sleep(delay)
        if not self.offline:
            return True
        with self._lock:
            self.dropped["published"] += count
        return False

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                timeout: float = 30.0) -> int:
        """The inner ``publish``, held back and lost as scheduled; a lost one returns the
        payload's length, as if it had gone."""
        if not self._through(1):
            return len(payload)
        return int(self.inner.publish(topic, payload, qos=qos, retain=retain,
                                      timeout=timeout))

    def publish_raw(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                    timeout: float = 30.0) -> int:
        if not self._through(1):
            return len(payload)
        return int(self.inner.publish_raw(topic, payload, qos=qos, retain=retain,
                                          timeout=timeout))

    def publish_raw_many(self, messages: Sequence[tuple[str, bytes]], *, qos: int = 1,
                         retain: bool = False, timeout: float = 30.0) -> int:
        """One batch, one delay: the whole batch goes or is lost."""
        if not self._through(len(messages)):
            return sum(len(payload) for _, payload in messages)
        return int(self.inner.publish_raw_many(messages, qos=qos, retain=retain,
                                               timeout=timeout))

    def clear_retained(self, topic: str, *, timeout: float = 30.0) -> None:
        if self._through(1):
            self.inner.clear_retained(topic, timeout=timeout)

    # ------------------------------------------------------------------------ subscribe

    def _gate(self, topic_filter: str, handler: Handler) -> Handler:
        """``handler`` behind the link: messages arriving while it is down are lost."""
        def gated(topic: str, payload: bytes) -> None:
            if self.offline:
                with self._lock:
                    self.dropped["received"] += 1
                return
            handler(topic, payload)

        with self._lock:
            self._gates[(topic_filter, handler)] = gated
        return gated

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1,
                  timeout: float = 30.0) -> None:
        self.inner.subscribe(topic_filter, self._gate(topic_filter, handler), qos=qos,
                             timeout=timeout)

    def subscribe_raw(self, topic_filter: str, handler: Handler, *, qos: int = 1,
                      timeout: float = 30.0) -> None:
        self.inner.subscribe_raw(topic_filter, self._gate(topic_filter, handler), qos=qos,
                                 timeout=timeout)

    def unsubscribe(self, topic_filter: str, handler: Handler | None = None, *,
                    timeout: float = 30.0) -> bool:
        """The inner ``unsubscribe``, of the gate put before ``handler`` (of every handler
        of ``topic_filter`` when none is given)."""
        gate: Handler | None = None
        with self._lock:
            if handler is None:
                for key in [k for k in self._gates if k[0] == topic_filter]:
                    del self._gates[key]
            else:
                gate = self._gates.pop((topic_filter, handler), None)
                if gate is None:
                    return False  # never subscribed through this link
        return bool(self.inner.unsubscribe(topic_filter, gate, timeout=timeout))
