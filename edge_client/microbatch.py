"""Choosing micro-batch sizes that keep a device's training under its memory budget.

A step's effective batch (``training.batch_size``) is fixed by the federation; the device
only decides how many samples go through forward and backward at once, and accumulates
gradients over the micro-batches.  Activation memory grows with the number of tokens in a
micro-batch (samples x padded width), on top of a floor (the process before training:
base model, adapters, tokenized data).

The estimate starts from a probe: the first micro-batch has ``probe_size`` samples and its
peak RSS gives bytes per token.  The probe's figure includes fixed costs (autograd buffers,
allocator overhead), so it overestimates the per-token cost and the next micro-batch is
chosen conservatively; each observation with at least as many tokens replaces the estimate,
so sizes grow toward the budget from below rather than overshooting it.  A peak over the
budget always raises the estimate.  An out-of-memory error halves the micro-batch and
caps it there for the rest of the device's life.

Under ``training.gradient_checkpointing: auto`` the planner also decides on activation
checkpointing: it switches it on once a single sample is estimated (or, failing to
allocate, found) not to fit, the one case micro-batching cannot help, and then measures
afresh, since checkpointing changes the cost per token.  It does not switch it on earlier:
on a CPU, splitting a batch into smaller micro-batches costs less throughput than
recomputing every layer's activations does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge_client.memory import MiB, rss_bytes

log = logging.getLogger("fedsa.device")


@dataclass
class MicroBatchPlanner:
    budget_bytes: int | None = None
    ceiling: int | None = None
    safety: float = 0.9
    probe_size: int = 1
    floor: int | None = None
    per_token: float | None = None
    auto_checkpointing: bool = False  # may switch checkpointing on (training: auto)
    checkpointing: bool = False  # the planner's choice under auto, kept across rounds
    _basis_tokens: int = 0
    _warned: bool = False

    @classmethod
    def for_budget(cls, memory_mb: float | None, micro_batch: int | None = None
                   ) -> MicroBatchPlanner:
        """A planner for a budget in MiB (None: unlimited) and an optional fixed maximum."""
        budget = None if memory_mb is None else int(memory_mb * MiB)
        return cls(budget_bytes=budget, ceiling=micro_batch)

    @property
    def measuring(self) -> bool:
        """Whether the caller should measure peak RSS and report it via ``observe``."""
        return self.budget_bytes is not None

    def size(self, remaining: int, width: int) -> int:
        """Samples for the next micro-batch, ``remaining`` samples left in the step and the
        longest of them ``width`` tokens wide."""
        cap = remaining if self.ceiling is None else max(1, min(remaining, self.ceiling))
        if self.budget_bytes is None:
            return cap
        if self.floor is None:
            self.floor = rss_bytes()
        if self.per_token is None:
            return min(cap, self.probe_size)
        fit = self._fit(width)
        if fit < 1 and not self._warned and not self.wants_checkpointing(width):
            self._warned = True
            log.warning("memory budget %.0f MiB is below what one sample needs (process at "
                        "%.0f MiB before training); training one sample at a time",
                        self.budget_bytes / MiB, self.floor / MiB)
        return max(1, min(cap, fit))

    def _fit(self, width: int) -> int:
        assert self.budget_bytes is not None and self.floor is not None and self.per_token
        headroom = self.budget_bytes * self.safety - self.floor
        return int(headroom // (self.per_token * max(width, 1)))

    def wants_checkpointing(self, width: int) -> bool:
        """Whether activation checkpointing should be switched on before the next micro-batch
        (rows ``width`` tokens wide): allowed, not on yet, and one sample does not fit."""
        if (not self.auto_checkpointing or self.checkpointing or self.budget_bytes is None
                or self.floor is None or self.per_token is None):
            return False
        return self._fit(width) < 1

    def start_checkpointing(self) -> None:
        """Record that checkpointing is on and measure the cost per token afresh."""
        log.info("memory budget %.0f MiB: one sample does not fit with all activations "
                 "kept; training with activation checkpointing", (self.budget_bytes or 0) / MiB)
        self.checkpointing = True
        self.per_token, self._basis_tokens, self._warned = None, 0, False

    def observe(self, samples: int, width: int, peak: int) -> None:
        """Record the peak RSS of a micro-batch of ``samples`` rows padded to ``width``."""
        if self.budget_bytes is None or self.floor is None:
            return
        tokens = samples * max(width, 1)
        estimate = max(peak - self.floor, 1) / tokens
        if tokens >= self._basis_tokens:
            self.per_token, self._basis_tokens = estimate, tokens
        elif peak > self.budget_bytes * self.safety:
            self.per_token = max(self.per_token or 0.0, estimate)

    def out_of_memory(self, size: int) -> int:
        """After an allocation failure at ``size``: the new (halved) cap, or 0 if none is
        left (a single sample did not fit, even with checkpointing where it may be used)."""
        if size <= 1:
            if self.auto_checkpointing and not self.checkpointing:
                self.start_checkpointing()
                return 1
            return 0
        self.ceiling = size // 2
        log.warning("out of memory with micro-batch %d; retrying the step with %d",
                    size, self.ceiling)
        return self.ceiling
