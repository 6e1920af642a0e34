"""Two devices running with one client id, told apart from a restart (pure: no I/O).

Every start of a device says online with a fresh random ``session`` and its start time
(``Presence.session``, ``since``).  Two copies of one client id on two machines share one
MQTT client id, so the broker keeps disconnecting one when the other connects, and their
presences alternate: A, B, A, B.  A restarted device never brings an earlier session
back, so the first return of a superseded session proves that two are alive.  The newer
of the two (the later ``since``) is the one told to leave: the older one was there first.

Memory is bounded: a few sessions per client, and at most ``max_clients`` clients (the
least recently heard are forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from fedsa_common.wire.protocol import Ack

SESSIONS_KEPT = 4  # per client: enough to see any two that alternate


@dataclass(frozen=True)
class Duplicate:
    """``client`` runs in ``older`` and ``newer`` (sessions), in regions ``older_region``
    and ``newer_region`` (the same, unless the two copies joined different regions: only
    the cloud sees that); ``first`` when this pair was not flagged before (count and log it
    once, tell the newer one every time)."""

    client: str
    older: str
    newer: str
    newer_since: float
    older_since: float
    first: bool
    older_region: str = ""
    newer_region: str = ""


@dataclass
class _Sessions:
    current: str
    started: dict[str, float] = field(default_factory=dict)  # session -> since, in order
    region: dict[str, str] = field(default_factory=dict)  # session -> region it said


class DuplicateWatch:
    def __init__(self, max_clients: int = 100_000) -> None:
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _Sessions] = OrderedDict()
        self.flagged: dict[str, dict[str, object]] = {}  # client -> what hub status shows

    def online(self, client: str, session: str | None, since: float, region: str = ""
               ) -> Duplicate | None:
        """Record that ``client`` says online from ``session`` (in ``region``); a
        ``Duplicate`` when an earlier, superseded session of it has come back."""
        if session is None:  # a device that does not say its session: nothing to compare
            return None
        rec = self._clients.get(client)
        if rec is None:
            rec = self._clients[client] = _Sessions(current=session)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client)
        returning = session != rec.current and session in rec.started
        rec.started[session] = rec.started.get(session, since)
        rec.region[session] = region
        while len(rec.started) > SESSIONS_KEPT:
            rec.region.pop(next(iter(rec.started)), None)
            del rec.started[next(iter(rec.started))]
        previous, rec.current = rec.current, session
        if not returning:
            return None
        pair = sorted([(rec.started.get(previous, 0.0), previous), (since, session)])
        (older_since, older), (newer_since, newer) = pair
        first = client not in self.flagged or self.flagged[client].get("newer") != newer
        regions = [rec.region.get(older, ""), rec.region.get(newer, "")]
        self.flagged[client] = {"sessions": [older, newer], "newer": newer,
                                "newer_since": newer_since, "regions": regions,
                                "detected": time.time()}
        return Duplicate(client, older, newer, newer_since, older_since, first, *regions)

    def is_current(self, client: str, session: str | None) -> bool:
        """Whether an offline presence from ``session`` is the client's latest session (a
        will of a connection that another copy displaced is not: the client is online)."""
        rec = self._clients.get(client)
        return session is None or rec is None or rec.current == session

    def status_fields(self) -> dict[str, object]:
        """``{"duplicate_clients": {client: {...}}}`` for the hub's status (empty: none)."""
        return {"duplicate_clients": dict(self.flagged)} if self.flagged else {}


def notice(dup: Duplicate) -> Ack:
    """What the newer device is told on its acknowledgement topic (and raises as its
    error), naming the session and region that hold the client id."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dup.older_since))
    reason = (f"client id {dup.client!r} is already in use in region {dup.older_region} by "
              f"another running device (session {dup.older}, started {started}); two "
              "devices with one client id displace each other's connection and updates: "
              "give each device its own --client-id (this one, started later, leaves)")
    return Ack(kind="duplicate", id=dup.client, accepted=False, reason=reason,
               session=dup.newer)
