"""When a device sends its unacknowledged update again: jittered exponential backoff from
the round policy's ``resend_s`` up to ``MAX_RESEND_S``.  One schedule for the device
(edge_client/device.py) and the light devices of a load run (edge_client/light.py), so that
a load run presses the hubs with the resends real devices would make."""

from __future__ import annotations

import random

MAX_RESEND_S = 60.0


def backoff_after(backoff: float, max_s: float = MAX_RESEND_S) -> tuple[float, float]:
    """After a resend at ``backoff``: the next backoff (doubled, at most ``max_s``) and the
    seconds until the next resend (that backoff, jittered by ±25 % so that devices that
    lost their acknowledgements together do not resend together)."""
    nxt = min(max_s, backoff * 2)
    return nxt, nxt * random.uniform(0.75, 1.25)
