"""Bytes crossing each site's bridge per round, attributed from what an observer on the cloud
broker saw (pure, apart from the thread-safe recorder an MQTT callback fills).

Why here: ``scenarios run`` reports these bytes for a site topology and
``benchmarks/bridge_bytes.py`` measures them; both must count the same way.  A message
crosses region R's bridge if it matches one of R's bridge patterns (``hub.provision_bridge``):
partials, R's hub status and R's device presence go up; announcements, the full global, R's
partial acks and the cloud status come down (once per bridge).  Messages are put in the
round of the last announcement seen before them ("join": before the first; the last round's
bucket also holds the final 'finished' announcement).  Payload bytes only (MQTT and TLS
framing excluded).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from fedsa_common.wire.protocol import Topics
from hub.provision_bridge import bridge_topics

Seen = list[tuple[float, str, int]]


@dataclass
class Recorder:
    """Every (time, topic, payload size) one broker delivered to its observer."""

    seen: Seen = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), topic, len(payload)))

    def messages(self) -> Seen:
        with self.lock:
            return list(self.seen)


def crossing_per_round(fed: str, regions: list[str], seen: Seen
                       ) -> dict[str, dict[str, dict[str, int]]]:
    """``{region: {round: {"up": bytes, "down": bytes, "up_msgs": n, "down_msgs": n}}}``
    from what the cloud broker's observer saw (see the module doc for the attribution)."""
    t = Topics(fed)
    patterns = {r: bridge_topics(t, r) for r in regions}
    out: dict[str, dict[str, dict[str, int]]] = {r: defaultdict(lambda: defaultdict(int))
                                                 for r in regions}
    bucket, announcements = "join", 0
    for _, topic, size in sorted(seen):
        if topic == f"{t.announce}/0" and size:
            announcements += 1
            bucket = str(announcements)
        for region in regions:
            for b in patterns[region]:
                if mqtt.topic_matches_sub(b.pattern, topic):
                    way = "up" if b.direction == "out" else "down"
                    out[region][bucket][way] += size
                    out[region][bucket][f"{way}_msgs"] += 1
    return {r: {k: dict(v) for k, v in rounds.items()} for r, rounds in out.items()}
