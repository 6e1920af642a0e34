"""Plays the share delivery and share check of an in-memory secure-aggregation round.

Every in-memory round (protocol, aggregator and uniformity tests) takes the same path from
``close_shares`` to a masking set; one copy keeps them on the protocol's order.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping

from fedsa_common.privacy.secagg import share_crypto
from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.messages import ShareKeys
from fedsa_common.privacy.secagg.protocol import SecAggClient, SecAggServer
from fedsa_common.privacy.secagg.shamir import SHARE_BYTES, decode_scalar, encode_scalar


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


def deal_off_polynomial(client: SecAggClient, msg: ShareKeys, victims: Collection[str]
                        ) -> ShareKeys:
    """``client``'s shares as a cheating dealer would send them: each of ``victims`` gets
    a b share one off the committed polynomial, encrypted and SHA-256-committed properly
    (so it authenticates and matches; only the Feldman check catches it).  The dealer can
    open its own ciphertexts: the X25519 key it encrypted under is symmetric."""
    roster, ctx, dealer = client.roster, client.ctx, client.client
    assert roster is not None
    cts, commitments = dict(msg.ciphertexts), dict(msg.commitments)
    for v in victims:
        c_pk = roster.keys[v][0]
        pt = share_crypto.decrypt_shares(ctx, client._c_sk, c_pk, dealer, v, cts[v])
        plain = pt[:SHARE_BYTES] + encode_scalar(decode_scalar(pt[SHARE_BYTES:], "b") + 1)
        cts[v] = share_crypto.encrypt_shares(ctx, client._c_sk, c_pk, dealer, v, plain,
                                             os.urandom)
        commitments[v] = share_crypto.commit_shares(ctx, dealer, v, plain)
    return ShareKeys(dealer, cts, commitments, msg.vss)
