"""Whether a hub serves, read from its retained status, and when to remind an operator
what a process is still waiting for.

Hubs publish a retained JSON status with a last will that says ``online: false`` (see
``hub/process.py``).  The cloud and the devices read a regional hub's status to learn
whether their region is served: without a regional hub, nobody collects a region's updates,
so the cloud must not wait for them and the device must say why it is never selected.
Kept here, below both, so that the cloud and the device read a status the same way.
"""

from __future__ import annotations

import json
from typing import Any

from fedsa_common.wire.errors import WireError


def hub_serving(payload: bytes) -> bool:
    """Whether a hub's retained status says it serves: online (its will says otherwise)
    and not finished.  An empty payload (a cleared status) says it does not.

    Raises ``WireError("bad_status")`` when the payload is not a JSON object: the status
    topic is writable by that hub's account only, so this is a broken or hostile hub."""
    if not payload:
        return False
    try:
        body = json.loads(payload)
    except ValueError:
        raise WireError("bad_status", "hub status is not JSON") from None
    if not isinstance(body, dict):
        raise WireError("bad_status", "hub status is not a JSON object")
    return status_serving(body)


def status_serving(body: dict[str, Any]) -> bool:
    """Whether a decoded hub status says its hub serves (online, not finished)."""
    return body.get("online") is True and not body.get("finished")


class Reminder:
    """Says when a periodic "still waiting for ..." line is due: every ``every_s`` seconds
    from ``start`` (monotonic or wall clock, as long as ``due`` gets the same)."""

    def __init__(self, every_s: float, start: float) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, not {every_s}")
        self.every_s = every_s
        self.next = start + every_s

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.every_s
        return True
