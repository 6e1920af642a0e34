"""A device's copy of the global shared parameters under downlink deltas (pure).

With ``fedsa_lora.compression.downlink`` on, an announcement of version v carries the
change from ``delta_from`` (v-1) instead of the parameters.  A device therefore keeps the
global shared parameters of the last version it held, with that version (persisted by
edge_client/snapshot.py, so a rebooted device can still apply the next delta), and on every
announcement, selected or not:

* it holds version v already: it uses them;
* it holds ``delta_from``: it applies the delta (``fedsa_common.wire.downlink.apply_delta``,
  the cloud's own computation, so the result is bit-identical; ``global_digest`` checks);
* otherwise, or when the delta does not decode or check out: it fetches the full
  parameters retained on ``Topics.global_params`` (``check_fetched``).

Without downlink deltas (no ``global_digest``) the announcement carries the parameters and
none of this runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsa_common.wire.downlink import apply_delta
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, GlobalHeader, params_digest
from fedsa_common.wire.tensors import Tensors


@dataclass(frozen=True)
class HeldGlobal:
    """The global shared parameters of one version of one federation configuration."""

    version: int
    config_hash: str
    digest: str  # params_digest(tensors)
    tensors: dict[str, torch.Tensor]

    def is_version(self, header: AnnounceHeader) -> bool:
        return (self.version == header.version and self.config_hash == header.config_hash
                and self.digest == header.global_digest
                and sorted(self.tensors) == sorted(header.shared))


def _checked(tensors: Tensors, digest: str | None, what: str) -> dict[str, torch.Tensor]:
    out = {n: t.to(torch.float32) for n, t in tensors.items()}
    if digest is not None and params_digest(out) != digest:
        raise WireError("wrong_digest", f"{what} does not match the announced digest")
    return out


def _full(shared: list[str], tensors: Tensors) -> dict[str, torch.Tensor]:
    if sorted(tensors) != sorted(shared):
        raise WireError("bad_header", "full parameters do not name exactly the shared tensors")
    return dict(tensors)


def from_announcement(header: AnnounceHeader, tensors: Tensors, held: HeldGlobal | None
                      ) -> dict[str, torch.Tensor] | None:
    """The announced version's global shared parameters from the announcement's body and
    what the device holds; None when the full parameters must be fetched.  Raises WireError
    for a delta that does not decode or whose result is not the announced one."""
    if header.global_digest is None:  # no downlink deltas: the body is the parameters
        return dict(tensors)
    if held is not None and held.is_version(header):
        return dict(held.tensors)
    if not header.is_delta:
        return _checked(_full(header.shared, tensors), header.global_digest, "announcement")
    if held is None or held.version != header.delta_from or \
            held.config_hash != header.config_hash:
        return None
    assert header.delta_codec is not None and header.shapes is not None
    shapes = {n: tuple(s) for n, s in header.shapes.items()}
    new = apply_delta(held.tensors, header.delta_codec, header.delta_params or {},
                      header.delta_meta or {}, tensors, shapes)
    return _checked(new, header.global_digest, f"version {header.version} from the delta")


def check_fetched(header: AnnounceHeader, fetched: GlobalHeader, tensors: Tensors
                  ) -> HeldGlobal:
    """The fetched full parameters as held ones, checked against their own header (and the
    announcement's digest when it is the announced version).  WireError when they belong
    to another federation or configuration, or do not match a digest."""
    if fetched.federation != header.federation or fetched.config_hash != header.config_hash:
        raise WireError("wrong_federation", "full global of another federation or config")
    own = _checked(_full(fetched.shared, tensors), fetched.global_digest, "full global")
    if fetched.version == header.version and (
            fetched.global_digest != header.global_digest
            or sorted(fetched.shared) != sorted(header.shared)):
        raise WireError("wrong_digest", f"full global of version {fetched.version} is not "
                                        "the announced one")
    return HeldGlobal(fetched.version, fetched.config_hash, fetched.global_digest, own)
