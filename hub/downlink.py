"""The cloud's downlink deltas (``fedsa_lora.compression.downlink``), pure tensor code.

With downlink deltas on, the global shared parameters are *defined* as what a device can
reconstruct from the announcements: after a round the cloud takes the server step (the
server optimizer's change, hub/server_optimizer.py, from the mean after any DP noise, as
without them; ``server_lr * mean`` for the default sgd), encodes it with the downlink
codec and the cloud's own error-feedback residual, decodes that again exactly as a device
will, and the new global is ``old + decoded`` in float32.  A device holding the previous
version computes the same sum from the same tensors, so both ends agree bit for bit
(``fedsa_common.wire.protocol.params_digest`` checks it).  What the codec did not send stays in
the residual and goes out in later rounds, as on the devices' uplink.

The announcement of version v carries the encoded delta v-1 -> v (``last``) while the
version and the shared set stay those of that delta; a round that applied no step
re-announces the same delta.  Otherwise (version 0, a shared set changed by an adaptive
split, a delta lost with its checkpoint) the announcement carries the full parameters.

randk's seed is the one the uplink of the round whose step the delta carries uses
(``round_codec_params(federation seed, round)``): a randk uplink round's mean lives on
exactly those positions, so a randk downlink of at least the uplink's ratio sends all of
it (the supports of one seed are nested in k).  The seed travels in the header's
``delta_params``, so a device never derives it.

``DownlinkState`` is kept in the cloud's checkpoint (hub/checkpoint.py), so a restarted
cloud continues with the same residual and can still announce the last delta.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsa_common.federation.config import DownlinkSection
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.downlink import apply_delta
from fedsa_common.wire.tensors import Tensors


@dataclass
class DownlinkDelta:
    """The encoded change of the global shared parameters from ``version - 1`` to
    ``version``, as announced: codec, its parameters (with randk's seed), the codec's meta
    and body tensors, and the shapes of the tensors it changes."""

    version: int
    round: int  # the round whose server step it carries
    codec: str
    params: dict[str, Any]
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]

    @property
    def base_version(self) -> int:
        return self.version - 1


@dataclass
class DownlinkState:
    """The cloud's downlink error feedback and the last delta it can announce."""

    residual: dict[str, torch.Tensor] = field(default_factory=dict)
    last: DownlinkDelta | None = None

    def delta_for(self, version: int, shared: list[str]) -> DownlinkDelta | None:
        """The delta an announcement of ``version`` sharing ``shared`` carries, None when it
        must carry the full parameters."""
        last = self.last
        if last is None or last.version != version or sorted(last.shapes) != sorted(shared):
            return None
        return last

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {f"residual/{n}": t for n, t in self.residual.items()}
        meta: dict[str, Any] = {"residual": sorted(self.residual)}
        if self.last is not None:
            d = self.last
            tensors.update({f"delta/{n}": t for n, t in d.tensors.items()})
            meta["delta"] = {"version": d.version, "round": d.round, "codec": d.codec,
                             "params": d.params, "meta": d.meta,
                             "tensors": sorted(d.tensors),
                             "shapes": {n: list(s) for n, s in d.shapes.items()}}
        return meta, tensors

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Tensors) -> DownlinkState:
        residual = {n: tensors[f"residual/{n}"] for n in meta.get("residual", [])}
        raw = meta.get("delta")
        last = None
        if raw is not None:
            last = DownlinkDelta(
                version=int(raw["version"]), round=int(raw["round"]), codec=str(raw["codec"]),
                params=dict(raw["params"]), meta=dict(raw["meta"]),
                tensors={n: tensors[f"delta/{n}"] for n in raw["tensors"]},
                shapes={n: tuple(int(d) for d in s) for n, s in raw["shapes"].items()})
        return cls(residual, last)


def carried_residual(residual: Tensors, shapes: Mapping[str, tuple[int, ...]]
                     ) -> dict[str, torch.Tensor]:
    """The residual for this step's tensors: kept where the name and shape still fit, zero
    for tensors newly shared (an adaptive split), dropped for tensors no longer in it."""
    out = {}
    for name, shape in shapes.items():
        r = residual.get(name)
        out[name] = (r.to(torch.float32) if r is not None and tuple(r.shape) == tuple(shape)
                     else torch.zeros(shape, dtype=torch.float32))
    return out


def downlink_step(old: Tensors, change: Tensors, section: DownlinkSection,
                  federation_seed: int, round_: int, version: int, state: DownlinkState
                  ) -> tuple[dict[str, torch.Tensor], DownlinkState]:
    """The new global values of ``change``'s tensors and the downlink state after the
    server step of round ``round_`` (``change``: the server optimizer's ``new - old``,
    hub/server_optimizer.py), which moves the global from ``version`` to ``version + 1``."""
    shapes = {n: tuple(change[n].shape) for n in sorted(change)}
    step = {n: change[n].to(torch.float32) for n in shapes}
    params = section.round_codec_params(federation_seed, round_)
    codec = get_codec(section.codec, **params)
    enc = codec.encode(step, carried_residual(state.residual, shapes))
    delta = DownlinkDelta(version + 1, round_, section.codec, params, dict(enc.meta),
                          {n: t.detach().clone() for n, t in enc.tensors.items()}, shapes)
    new = apply_delta(old, delta.codec, delta.params, delta.meta, delta.tensors, shapes)
    residual = {n: t.detach().to(torch.float32).clone() for n, t in enc.residual.items()}
    return new, DownlinkState(residual, delta)

