"""Which adapter parameters are shared with the federation and which stay on the device.

FedSA-LoRA's finding is that LoRA's A matrices learn what all clients share while the B
matrices capture client-specific knowledge; so ``fedsa`` aggregates A and keeps B local.
The baselines are other points of the same split: ``fedit`` shares A and B (plain FedAvg of
LoRA), ``ffa`` freezes A at its common initialisation and shares B (FFA-LoRA), ``local``
shares nothing.  The classification head is local in every algorithm (unless
``fedsa_lora.personalization.share_head_rounds`` shares it in the first rounds; see
``adaptive_split.round_shared``, which decides a round's set from these functions).  A
personal head (``fedsa_lora.personalization.personal_head``, role ``personal``) is never
shared by any algorithm or option: it is the device's own correction of the shared head.

Names here are *wire names* (see ``quant.model.wire_name``), e.g.
``bert.encoder.layer.0.attention.self.query.lora_A.weight`` or ``classifier.weight``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Role = Literal["lora_A", "lora_B", "head", "personal"]
PERSONAL_HEAD = "personal_head"  # the module (and wire-name prefix) of the personal head
ALGORITHMS: tuple[str, ...] = ("fedsa", "fedit", "ffa", "local")

_SHARED: dict[str, frozenset[Role]] = {
    "fedsa": frozenset({"lora_A"}),
    "fedit": frozenset({"lora_A", "lora_B"}),
    "ffa": frozenset({"lora_B"}),
    "local": frozenset(),
}
_FROZEN: dict[str, frozenset[Role]] = {"ffa": frozenset({"lora_A"})}


def role(name: str) -> Role:
    parts = name.split(".")
    if parts[0] == PERSONAL_HEAD:
        return "personal"
    if "lora_A" in parts:
        return "lora_A"
    if "lora_B" in parts:
        return "lora_B"
    return "head"


def _check(algorithm: str) -> None:
    if algorithm not in _SHARED:
        raise ValueError(f"unknown algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")


def shared_roles(algorithm: str) -> frozenset[Role]:
    """The roles ``algorithm`` shares (the default of layers a layer-wise split leaves)."""
    _check(algorithm)
    return _SHARED[algorithm]


def shared_names(names: Iterable[str], algorithm: str) -> list[str]:
    """Parameters whose deltas leave the device and are aggregated."""
    _check(algorithm)
    return sorted(n for n in names if role(n) in _SHARED[algorithm])


def local_names(names: Iterable[str], algorithm: str) -> list[str]:
    """Parameters that never leave the device and are persisted in its state directory."""
    shared = set(shared_names(names, algorithm))
    return sorted(n for n in names if n not in shared)


def trainable_names(names: Iterable[str], algorithm: str) -> list[str]:
    """Parameters the optimizer updates (FFA-LoRA keeps A frozen at its common init)."""
    _check(algorithm)
    frozen = _FROZEN.get(algorithm, frozenset())
    return sorted(n for n in names if role(n) not in frozen)
