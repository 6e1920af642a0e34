"""Which of a device's tensors a round shares, and the value each one starts training from.

The cloud announces the round's shared set (``AnnounceHeader.shared``) with their global
values.  Under a fixed or layer-wise split the device can compute that set itself and
checks it; under ``importance_based`` it changes between rounds and the announcement is the
authority, limited to LoRA tensors of the device's model.  The head is accepted only in
the rounds the configuration shares it (``personalization.share_head_rounds``); B moves
like an adaptive split's tensors under ``share_b_rounds``.

When a tensor moves between the shared and the local set (adaptive split):

* a tensor shared this round that was *local* when the device last trained starts from the
  device's own value, one that was shared (or never held) from the announced global value;
* a tensor local this round keeps the device's value if it was local, else the last global
  value it loaded (``global.safetensors``), else its seeded initial value;
* the update is always ``trained - announced global``, so averaging makes a newly shared
  tensor's global the mean of the devices' own values (personalization is not reset).

Under a fixed split nothing moves and all of this reduces to what the device always did.
Pure functions (tensors in, tensors out).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from fedsa_common.federation.adaptive_split import round_shared, shares_head
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.tensors import Tensors

LORA = ("lora_A", "lora_B")


def round_split(names: Sequence[str], announced: Sequence[str], tensors: Tensors,
                shapes: Mapping[str, tuple[int, ...]], config: FederationConfig, round_: int
                ) -> tuple[list[str], list[str]]:
    """(shared, local) names of round ``round_``; ``WireError("bad_header")`` when the
    announced set is not LoRA tensors of this model (and its head, in a round that shares
    it) with values of the right shapes, or differs from the split the configuration
    fixes."""
    shared = sorted(announced)
    if len(set(shared)) != len(shared):
        raise WireError("bad_header", "announced shared set repeats a name")
    known = set(names)
    head = shares_head(config, round_)
    for name in shared:
        if name not in known or not (role(name) in LORA or (head and role(name) == "head")):
            what = "a LoRA tensor or the head" if head else "a LoRA tensor"
            raise WireError("bad_header", f"announced shared {name[:80]!r} is not {what} of "
                                          f"this model in round {round_}")
        value = tensors.get(name)
        if value is None or tuple(value.shape) != tuple(shapes[name]):
            raise WireError("bad_header", f"announced value of {name[:80]!r} missing or of "
                                          "the wrong shape")
    if not config.fedsa_lora.adaptive_split.importance_based:
        expected = round_shared(names, config, round_)
        if shared != expected:
            raise WireError("bad_header", "announced shared set differs from the configured "
                                          "split")
    local = sorted(known - set(shared))
    return shared, local


def shared_start(shared: Iterable[str], announced: Tensors, own_local: Tensors
                 ) -> dict[str, torch.Tensor]:
    """Start values of the round's shared tensors: own value if it was local, else global."""
    return {n: (own_local[n] if n in own_local else announced[n]).to(torch.float32)
            for n in shared}


def local_start(local: Iterable[str], own_local: Tensors, last_global: Tensors,
                initial: Tensors) -> dict[str, torch.Tensor]:
    """Start values of the round's local tensors: own, else last global loaded, else initial."""
    out = {}
    for n in local:
        source = own_local if n in own_local else last_global if n in last_global else initial
        out[n] = source[n].to(torch.float32)
    return out


def carry_residual(residual: Tensors, shared: Sequence[str],
                   shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | None:
    """The error-feedback residual for this round's shared names: entries of names no longer
    shared are dropped, newly shared names start at zero (None when nothing carries over)."""
    if set(residual) == set(shared):
        return dict(residual)
    kept = {n: residual[n] for n in shared if n in residual}
    if not kept:
        return None
    return {n: kept.get(n, torch.zeros(shapes[n], dtype=torch.float32)) for n in shared}


def importance_report(importance: Mapping[str, float] | None) -> dict[str, float] | None:
    """The LoRA tensors' finite importances (the head is never shared), for the update."""
    if importance is None:
        return None
    return {n: float(v) for n, v in sorted(importance.items())
            if role(n) in LORA and math.isfinite(v) and v >= 0}


def final_global(saved: Tensors, announced: Sequence[str], tensors: Tensors
                 ) -> dict[str, torch.Tensor] | None:
    """What the device keeps for export from the final announcement: its values of the
    tensors the device last trained as shared (those in ``saved``), the others as saved.
    None when the announcement lacks a value it names."""
    if not all(n in tensors for n in announced):
        return None
    if not saved:
        return {n: tensors[n].to(torch.float32) for n in announced}
    wanted = set(announced)
    return {n: (tensors[n].to(torch.float32) if n in wanted else v) for n, v in saved.items()}
