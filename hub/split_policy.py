"""The cloud's side of the shared/local split: which tensors it keeps global values for,
which it shares in each round, and the importance-based decision between rounds.

Under a fixed split the cloud holds (and shares) exactly the algorithm's shared tensors, as
it always did.  With an adaptive split (``fedsa_lora.adaptive_split``) every LoRA tensor may
become shared, so the cloud holds a global value for all A and B tensors (initialised like
the devices' own: A seeded, B zero) and announces only the round's shared ones; the rest
keep their last global value until they are shared again.

``importance_based``: rounds 1..``warmup_rounds`` share the algorithm's split; from then
on, when a round closes, the cloud shares for the next round the tensors whose importance
that round's devices agreed on (``adaptive_split.decide_shared``).  A round that was not
applied (below quorum), had fewer than two reports, or found no tensor consistent enough
keeps the split.  ``CloudState.shared`` (checkpointed) holds the decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedsa_common.adaptive_split import ImportanceStats, decide_shared, initial_split, lora_names
from fedsa_common.config import FederationConfig
from fedsa_common.split import role, shared_names


class SplitPolicy:
    def __init__(self, config: FederationConfig, names: Sequence[str]) -> None:
        self.section = config.fedsa_lora.adaptive_split
        self.algorithm = config.fedsa_lora.algorithm
        self.names = sorted(names)

    @property
    def adaptive(self) -> bool:
        return self.section.adaptive

    def held(self) -> list[str]:
        """Tensors the cloud keeps a global value for."""
        return lora_names(self.names) if self.adaptive else shared_names(self.names,
                                                                         self.algorithm)

    def first(self) -> list[str]:
        """The first round's shared tensors; ValueError when a configured split shares none."""
        rules = self.section.rules() if self.section.strategy == "layer_wise" else None
        shared = initial_split(self.names, self.algorithm, rules if self.adaptive else None)
        if self.adaptive and not shared:
            raise ValueError("fedsa_lora.adaptive_split: the split shares no tensor of this "
                             "model; share at least one role in some layer")
        return shared

    def next(self, finished_round: int, stats: ImportanceStats, current: Sequence[str],
             applied: bool) -> list[str]:
        """The shared tensors of round ``finished_round + 1``."""
        if not self.section.importance_based:
            return sorted(current)
        if finished_round < self.section.warmup_rounds:
            return self.first()
        if not applied:
            return sorted(current)
        return decide_shared(stats, self.held(), self.section.threshold, current)


def describe(shared: Sequence[str]) -> str:
    """``12 lora_A + 3 lora_B`` for logs."""
    counts: dict[str, int] = {}
    for name in shared:
        counts[role(name)] = counts.get(role(name), 0) + 1
    return " + ".join(f"{n} {r}" for r, n in sorted(counts.items())) or "nothing"


def check_held(params: Mapping[str, object], shared: Sequence[str]) -> None:
    """A checkpoint's split must name tensors the checkpoint holds."""
    missing = sorted(set(shared) - set(params))
    if missing:
        raise ValueError(f"checkpoint shares tensors it has no value for: {missing[:3]}")
