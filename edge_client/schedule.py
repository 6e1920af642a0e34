"""How much local work a round does and at which learning rate (pure, no torch).

* ``local_steps_for``: the round's optimizer steps: ``training.local_steps``, or with
  ``training.local_epochs`` that many passes over the device's training split, so a device
  with more data contributes more work (its update's ``num_samples`` are the samples it
  processed, so FedAvg weighs it accordingly).  Bench code computes the federation's total
  samples processed from the same function.
* ``lr_multiplier``: the factor on the configured learning rates at each step of a round:
  linear warm-up over ``warmup_steps`` steps, then constant or a linear/cosine decay to 0
  at the end of the round's steps.  Warm-up starts at ``1/(warmup+1)``, not 0, so no step
  of a short edge round is spent at learning rate 0.
* ``round_lr_scale``: ``round_lr_decay**(round-1)``, never below ``round_lr_floor``, so
  later rounds take smaller local steps (local models then drift less from the global one
  as it converges) while a long federation still learns.
"""

from __future__ import annotations

import math
from typing import Literal

from fedsa_common.federation.config import TrainingSection

Schedule = Literal["constant", "linear", "cosine"]


def local_steps_for(training: TrainingSection, n_train: int) -> int:
    """Optimizer steps of one round on a device holding ``n_train`` training samples."""
    if training.local_epochs is None:
        return training.local_steps
    if n_train < 1:
        raise ValueError("local_epochs needs at least one training sample")
    return max(1, math.ceil(training.local_epochs * n_train / training.batch_size))


def lr_multiplier(step: int, steps: int, warmup: int = 0, schedule: Schedule = "constant"
                  ) -> float:
    """Factor on the learning rate of the ``step``-th (0-based) of ``steps`` steps."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown lr_schedule {schedule!r}; allowed: constant, linear, cosine")


def round_lr_scale(decay: float, round_: int, floor: float = 0.0) -> float:
    """Factor on the learning rates of round ``round_`` (1-based); a floor above 1 is not
    a floor, so no decay (``decay`` 1) always gives 1."""
    return max(min(floor, 1.0), decay ** max(0, round_ - 1))
