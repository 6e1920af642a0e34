"""The error a secure-aggregation step raises when it cannot or must not go on.

It is a :class:`~fedsa_common.wire.errors.WireError` so that a hub handler that counts and
drops bad wire input also survives a failed round; ``reason`` says which kind:

* ``secagg_too_few``: fewer than the threshold of clients are left at some stage (the
  region's round fails, nothing is forwarded);
* ``secagg_refused``: a client will not answer a request that could unmask someone
  (e.g. asked for both the self-mask seed and the mask key of the same client);
* ``secagg_bad_share``: an encrypted share does not decrypt or authenticate, or is not
  the one its dealer committed to;
* ``secagg_excluded``: the hub left this device out of the masking set at the share
  check (too few holders could use its shares); it sits the round out;
* ``secagg_bad_message``: a malformed message (wrong types, sizes, ids);
* ``secagg_conflict``: a second, different message for a step already taken;
* ``secagg_state``: a message or call for a stage that is not the current one;
* ``secagg_reconstruct``: reconstructed secrets do not match what was advertised;
* ``secagg_out_of_range``: the unmasked sum is impossible for honest encodings (a device
  crafted its encoding, or the unmasking went wrong): the round is refused, not forwarded;
* ``secagg_unauthenticated``: a certificate or signature does not verify (a roster entry
  the hub made, a survivor-set signature over another set), or a roster member was not
  announced as selected for the round.
"""

from __future__ import annotations

from fedsa_common.wire.errors import WireError


class SecAggError(WireError):
    """A secure-aggregation step failed; ``reason`` starts with ``secagg_``."""
