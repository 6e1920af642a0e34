"""Which intake process of a region takes a device's updates (pure; a leaf like ``names``).

Why by device and not an MQTT shared subscription: a shared subscription hands each message
to any member, so the chunks of one update could land in two processes, and a device's
resend could land in another process than its first copy and be accepted twice (a duplicate
is only recognisable where the first copy was accepted).  Hashing the client id sends every
frame and every resend of a device to the same intake process, round after round.
"""

from __future__ import annotations

import zlib

MAX_INTAKE_SHARDS = 64  # intake processes of one region: far above the cores of a gateway


def intake_shard(client: str, shards: int) -> int:
    """The intake process (0 .. shards-1) that takes ``client``'s updates: crc32 of its id
    modulo ``shards`` (stable across processes, versions and platforms, unlike ``hash``)."""
    if not 1 <= shards <= MAX_INTAKE_SHARDS:
        raise ValueError(f"intake_shards {shards} not in 1..{MAX_INTAKE_SHARDS}")
    return zlib.crc32(client.encode()) % shards
