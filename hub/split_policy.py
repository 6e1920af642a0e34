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

Head sharing (``fedsa_lora.personalization.share_head_rounds`` K > 0): the cloud also holds
the head (initialised like the devices', from the seed) and shares it in rounds 1..K
(``adaptive_split.round_shared``); the round number decides, so a restarted cloud
recomputes the set of the round it resumes.  ``share_b_rounds``: likewise for every LoRA
B (held from the start, zero like the devices' own).  This class is the one place that
decides each round's shared set; ``CloudState.shared`` is kept whenever that set is per
round (``per_round``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedsa_common.config.sections import warm_rounds_of
from fedsa_common.federation.adaptive_split import (
    ImportanceStats,
    decide_shared,
    head_names,
    lora_names,
    round_shared,
)
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role, shared_names


class SplitPolicy:
    def __init__(self, config: FederationConfig, names: Sequence[str]) -> None:
        self.config = config
        self.section = config.fedsa_lora.adaptive_split
        self.algorithm = config.fedsa_lora.algorithm
        self.share_head = warm_rounds_of(config, "share_head_rounds") > 0
        self.share_b = warm_rounds_of(config, "share_b_rounds") > 0
        self.names = sorted(names)

    @property
    def adaptive(self) -> bool:
        return self.section.adaptive

    @property
    def per_round(self) -> bool:
        """Whether the shared set is decided round by round (else every held tensor is
        shared in every round, as under a plain fixed split)."""
        return self.adaptive or self.share_head or self.share_b

    def held(self) -> list[str]:
        """Tensors the cloud keeps a global value for."""
        lora = (lora_names(self.names) if self.adaptive or self.share_b
                else shared_names(self.names, self.algorithm))
        return sorted({*lora, *head_names(self.names)}) if self.share_head else lora

    def for_round(self, round_: int) -> list[str]:
        """The shared tensors of round ``round_`` (importance_based: of its warm-up);
        ValueError when a configured split shares none."""
        shared = round_shared(self.names, self.config, round_)
        if self.adaptive and not lora_names(shared):
            raise ValueError("fedsa_lora.adaptive_split: the split shares no tensor of this "
                             "model; share at least one role in some layer")
        return shared

    def first(self) -> list[str]:
        """The first round's shared tensors."""
        return self.for_round(1)

    def resume(self, finished_round: int, checkpointed: Sequence[str] | None) -> list[str]:
        """The shared tensors of round ``finished_round + 1`` for a (re)starting cloud: the
        checkpoint's decision under importance_based, else computed from the round."""
        if self.section.importance_based and checkpointed is not None:
            return sorted(checkpointed)
        return self.for_round(finished_round + 1)

    def next(self, finished_round: int, stats: ImportanceStats, current: Sequence[str],
             applied: bool) -> list[str]:
        """The shared tensors of round ``finished_round + 1``."""
        if not self.section.importance_based:
            return self.for_round(finished_round + 1)
        if finished_round < self.section.warmup_rounds:
            return self.first()
        if not applied:
            return sorted(current)
        return decide_shared(stats, lora_names(self.held()), self.section.threshold, current)


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
