"""The cloud's server optimizer for the shared parameters, pure tensor code.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2: a round's
weighted mean delta (after any central DP noise, so the optimizer is post-processing and
costs no privacy) is a pseudo-gradient, and the server takes a step of its own with it.
Few rounds of few local steps give plain FedAvg very few sequential optimisation steps;
momentum (FedAvgM) and per-coordinate step sizes (FedAdam/FedYogi/FedAdagrad) are the
usual remedy.

``server_change`` returns the step ``new - old`` of the round's tensors and the optimizer's
next state, never the new values: the cloud adds the step to the global
(``hub.aggregation.apply_server_update``) or hands it to the downlink codec
(``hub.downlink.downlink_step``), which then defines the new global as what devices can
reconstruct.  The moments follow the pseudo-gradient either way, not what the codec sent
(the codec's residual keeps the difference and sends it later).

Rules, with d the mean delta, x the global, lr the top-level ``server_lr``:

* ``sgd``: ``x += lr * d`` (FedAvg; lr 1.0 is today's behaviour, bit for bit);
* ``avgm``: ``m = momentum * m + d; x += lr * m`` (FedAvgM, Hsu et al. 2019);
* ``adam`` / ``yogi`` / ``adagrad``: ``m = beta1 * m + (1 - beta1) * d`` and
  ``v = beta2 * v + (1 - beta2) * d**2`` (adam), ``v = v - (1 - beta2) * d**2 *
  sign(v - d**2)`` (yogi), ``v = v + d**2`` (adagrad), then ``x += lr * m / (sqrt(v) +
  tau)``; v starts at ``tau**2`` (the paper's ``v_{-1} >= tau**2``).  With
  ``bias_correction`` m is divided by ``1 - beta1**t`` and adam/yogi's v by
  ``1 - beta2**t`` before the step (off by default, as in the paper).

Under an adaptive split only the round's shared tensors step; every other tensor keeps its
moments (and its step count t) until it is shared again.  The state is kept in the cloud's
checkpoint (hub/checkpoint.py), so a restarted cloud continues with the same moments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsa_common.federation.config import ServerOptimizerSection
from fedsa_common.wire.tensors import Tensors


@dataclass
class ServerOptimizerState:
    """Per-tensor moments and step counts of the cloud's server optimizer.

    ``m``: first moment (avgm's momentum buffer, the adaptive rules' EMA of deltas);
    ``v``: second moment (adaptive rules only); ``steps``: how many server steps each
    tensor took (bias correction).  sgd keeps nothing but the step counts.
    """

    name: str
    m: dict[str, torch.Tensor] = field(default_factory=dict)
    v: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON meta and tensors for the checkpoint (hub/checkpoint.py)."""
        tensors = {f"m/{n}": t for n, t in self.m.items()}
        tensors.update({f"v/{n}": t for n, t in self.v.items()})
        meta = {"name": self.name, "m": sorted(self.m), "v": sorted(self.v),
                "steps": dict(sorted(self.steps.items()))}
        return meta, tensors

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Tensors) -> ServerOptimizerState:
        return cls(name=str(meta["name"]),
                   m={n: tensors[f"m/{n}"] for n in meta.get("m", [])},
                   v={n: tensors[f"v/{n}"] for n in meta.get("v", [])},
                   steps={str(n): int(k) for n, k in meta.get("steps", {}).items()})


def _kept(moment: Mapping[str, torch.Tensor], name: str, like: torch.Tensor, fill: float
          ) -> torch.Tensor:
    """The stored moment of ``name`` when its shape still fits, else a fresh one."""
    t = moment.get(name)
    if t is not None and tuple(t.shape) == tuple(like.shape):
        return t.to(torch.float32)
    return torch.full(like.shape, fill, dtype=torch.float32)


def server_change(mean: Tensors, section: ServerOptimizerSection, lr: float,
                  state: ServerOptimizerState | None
                  ) -> tuple[dict[str, torch.Tensor], ServerOptimizerState]:
    """The server step ``new - old`` for every tensor of ``mean`` (the round's pseudo-
    gradient) and the optimizer's next state; ``state`` is not modified.

    A state made by another rule (the configuration changed under a kept state) is
    dropped: its moments mean something else.
    """
    if state is None or state.name != section.name:
        state = ServerOptimizerState(section.name)
    m, v, steps = dict(state.m), dict(state.v), dict(state.steps)
    change: dict[str, torch.Tensor] = {}
    for name in sorted(mean):
        d = mean[name]
        t = steps.get(name, 0) + 1
        steps[name] = t
        if section.name == "sgd":
            change[name] = lr * d  # exactly apply_server_update's arithmetic
            continue
        d = d.to(torch.float32)
        if section.name == "avgm":
            m[name] = section.momentum * _kept(m, name, d, 0.0) + d
            change[name] = lr * m[name]
            continue
        b1, b2, tau = section.beta1, section.beta2, section.tau
        m[name] = b1 * _kept(m, name, d, 0.0) + (1.0 - b1) * d
        prev, d2 = _kept(v, name, d, tau * tau), d * d
        if section.name == "adam":
            v[name] = b2 * prev + (1.0 - b2) * d2
        elif section.name == "yogi":
            v[name] = prev - (1.0 - b2) * d2 * torch.sign(prev - d2)
        else:  # adagrad
            v[name] = prev + d2
        m_hat, v_hat = m[name], v[name]
        if section.bias_correction:
            m_hat = m_hat / (1.0 - b1 ** t)
            if section.name != "adagrad":
                v_hat = v_hat / (1.0 - b2 ** t)
        change[name] = lr * m_hat / (torch.sqrt(v_hat) + tau)
    return change, ServerOptimizerState(section.name, m, v, steps)
