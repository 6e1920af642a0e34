"""Plays the share delivery and share check of an in-memory secure-aggregation round.

Every in-memory round (protocol, aggregator and uniformity tests) takes the same path from
``close_shares`` to a masking set; one copy keeps them on the protocol's order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.protocol import SecAggClient, SecAggServer


def deliver_and_check(server: SecAggServer, clients: Mapping[str, SecAggClient],
                      absent: Collection[str] = ()) -> None:
    """Deliver the shares, collect every share check (none from ``absent``: they drop out
    before masking) and hand the masking set to everyone that checked; a client left out
    of it sits the round out, as a device does."""
    for v, delivery in server.close_shares().items():
        check = clients[v].receive_shares(delivery)
        if v not in absent:
            server.add_check(check)
    for v, masking in server.close_checks().items():
        try:
            clients[v].mask_with(masking)
        except SecAggError as err:
            if err.reason != "secagg_excluded":
                raise
