"""Secure aggregation (Bonawitz et al., CCS 2017) for a regional hub, as pure functions.

The hub learns only the weighted sum of its region's updates and the total weight.  One
module per concern: ``fixed_point`` (floats <-> words mod 2^32 without wrap-around),
``masks`` (HKDF key derivation, ChaCha20 mask streams), ``shamir`` (t-of-n sharing of
32-byte secrets over the edwards25519 scalar field), ``vss`` (Feldman commitments that
let a holder check its share), ``share_crypto`` (X25519 + AES-GCM for shares in transit), ``params``
(threshold, fixed-point range, round context), ``vector`` (which coordinates of an
A-delta are masked: dense or the round's random-k support), ``messages`` (the wire
messages as dicts) and ``protocol`` (client and hub state machines).  No I/O here; the
MQTT wiring lives in ``hub.secagg_region`` and ``edge_client.secagg_client``.
"""

from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.params import RoundContext, SecAggParams, threshold_for
from fedsa_common.privacy.secagg.protocol import AggregateResult, SecAggClient, SecAggServer

__all__ = [
    "AggregateResult",
    "RoundContext",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggServer",
    "threshold_for",
]
