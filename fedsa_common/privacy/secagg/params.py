"""Parameters of secure aggregation and the context of one region's round.

Everything here is derived identically by the hub and every device from what the round
announcement carries, so none of it needs to be trusted from a peer: a device checks the
threshold the hub puts in the roster against its own computation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from fedsa_common.privacy.secagg.fixed_point import FixedPoint
from fedsa_common.privacy.secagg.masks import info

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_ROSTER = 1000  # Shamir reconstruction costs O(t^2) per secret; regions are smaller
#: The largest roster whose round uses Feldman verifiable secret sharing (``vss``) when the
#: configuration asks for it.  Each device checks ``2t`` commitment points of every one of
#: ``n`` dealers, ``n·2t`` variable-base multiplications: measured about 60 s per device at
#: n = 300 (5.6 MB of commitments in its share delivery), 600 s and 63 MB at n = 1000,
#: which no longer fits a device's 16 MB message limit (docs/security.md).  A larger roster
#: runs its round without VSS; hub and devices both derive that from the roster's size
#: (``SecAggParams.vss``), so neither decides it alone and the hub logs and counts it.
VSS_MAX_ROSTER = 300
#: The smallest roster a device takes part in, whatever the announced configuration says
#: (a hub could announce a smaller ``min_clients``).  A malicious hub that gives honest
#: survivors different survivor sets can collect both kinds of share of one device only if
#: ``2t <= n + c`` with ``c`` colluding devices (each honest device reveals for one set;
#: each set needs ``t`` shares).  With the default threshold ``t = n - floor(n/3)``, a
#: roster of 3 (t = 2) tolerates no colluder at all; 4 (t = 3) is the smallest that
#: tolerates one.  In general ``c < 2t - n`` colluding devices are tolerated.
MIN_ROSTER = 4
#: When the hub closes each stage at the latest, as a fraction of the round's deadline
#: counted from the announcement (it closes earlier once every participant still online
#: has answered).  Devices train between "checks" and "inputs"; the region forwards its
#: sum before the round's own deadline.
STAGE_FRACTIONS: dict[str, float] = {"keys": 0.15, "shares": 0.3, "checks": 0.35,
                                     "inputs": 0.85, "consistency": 0.9, "unmask": 0.95}


def threshold_for(n: int, fraction: float) -> int:
    """Shares needed to reconstruct, for a roster of ``n``: ``ceil(fraction * n)``, but
    always a strict majority (so two disjoint groups can never both reconstruct) and at
    most ``n``.  With the default 2/3 this is ``n - floor(n / 3)``: up to a third of the
    roster may drop out."""
    if n < 1:
        raise ValueError(f"roster size must be >= 1, got {n}")
    t = math.ceil(round(fraction * n, 9))
    return min(n, max(t, n // 2 + 1))


@dataclass(frozen=True)
class SecAggParams:
    """``threshold_fraction``: fraction of the roster whose shares reconstruct a secret
    (> 1/2; default 2/3 tolerates a third dropping out); ``min_clients``: smallest roster
    a round may run with (a sum of one or two updates protects nobody); ``clip`` and
    ``max_weight``: the fixed-point range (see ``fixed_point``); ``verifiable_shares``:
    Feldman VSS for rosters up to ``VSS_MAX_ROSTER`` (``vss``)."""

    threshold_fraction: float = 2 / 3
    min_clients: int = MIN_ROSTER
    clip: float = 1.0
    max_weight: int = 4096
    verifiable_shares: bool = True

    def __post_init__(self) -> None:
        if not 0.5 < self.threshold_fraction <= 1.0:
            raise ValueError(f"threshold_fraction must be in (0.5, 1], got "
                             f"{self.threshold_fraction}")
        if self.min_clients < MIN_ROSTER:
            raise ValueError(f"min_clients must be >= {MIN_ROSTER}, got {self.min_clients}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be positive and finite, got {self.clip}")
        if self.max_weight < 1:
            raise ValueError(f"max_weight must be >= 1, got {self.max_weight}")

    def threshold(self, n: int) -> int:
        return threshold_for(n, self.threshold_fraction)

    def vss(self, n: int) -> bool:
        """Whether a roster of ``n`` shares verifiably: asked for, and ``n`` within
        ``VSS_MAX_ROSTER``.  Without it a dealer's inconsistent shares are not caught at the
        share check (the round fails at unmasking); the masks' privacy does not depend on
        it."""
        return self.verifiable_shares and n <= VSS_MAX_ROSTER

    def fixed_point(self, n: int) -> FixedPoint:
        """Encoding for a roster of ``n``: the unmasked sum covers at most ``n`` devices."""
        return FixedPoint.for_sum(n, self.clip, self.max_weight)

    def weight(self, num_samples: int) -> int:
        """A device's integer weight: its sample count, capped at ``max_weight``."""
        return max(1, min(int(num_samples), self.max_weight))


@dataclass(frozen=True)
class RoundContext:
    """One region's secure-aggregation round: names that bind every key and ciphertext to
    it, and the number of values each device masks (the weight word comes on top)."""

    federation: str
    round: int
    region: str
    length: int
    params: SecAggParams = field(default_factory=SecAggParams)

    def __post_init__(self) -> None:
        for kind, name in (("federation", self.federation), ("region", self.region)):
            if not NAME_RE.match(name):
                raise ValueError(f"{kind} {name!r} must match {NAME_RE.pattern}")
        if self.round < 0 or self.length < 0:
            raise ValueError("round and length must be >= 0")

    @property
    def words(self) -> int:
        """Length of a masked vector: the values plus the weight word."""
        return self.length + 1

    def info(self, purpose: str, *parts: str) -> bytes:
        return info(self.federation, self.round, self.region, purpose, *parts)
