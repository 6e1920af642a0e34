"""Validation and folding of device updates for one round at a regional hub (no I/O).

Every reason an update can be refused has a name, so the hub can count and log it and the
operator can see at a glance whether devices are stale, misconfigured or hostile.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fedsa_common.config import RoundPolicySection
from fedsa_common.errors import WireError
from fedsa_common.protocol import AnnounceHeader, PartialHeader, UpdateHeader
from hub.aggregation import RunningSum, l2_norm
from quant.codec import get_codec


@dataclass
class RoundIntake:
    """The running weighted sum of one region for one round, plus what was refused and why."""

    announce: AnnounceHeader
    region: str
    shapes: dict[str, tuple[int, ...]]
    policy: RoundPolicySection
    total: RunningSum = field(init=False)
    accepted: list[str] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    bytes_in: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        self.total = RunningSum.zeros(self.shapes)

    @property
    def expected(self) -> list[str]:
        return list(self.announce.selected.get(self.region, []))

    @property
    def complete(self) -> bool:
        return len(self.accepted) >= len(self.expected)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def offer(self, header: UpdateHeader, tensors: Mapping[str, torch.Tensor], nbytes: int) -> None:
        """Validate one update and fold it in; raises WireError naming why it was refused.

        A redelivery of an already accepted (client, round) raises ``duplicate`` and is
        counted once, so QoS 1 redelivery is harmless.
        """
        a = self.announce
        if header.federation != a.federation:
            raise WireError("wrong_federation", header.federation)
        if header.region != self.region:
            raise WireError("wrong_region", header.region)
        if header.round < a.round:
            raise WireError("stale", f"round {header.round} < {a.round}")
        if header.round > a.round:
            raise WireError("future", f"round {header.round} > {a.round}")
        if header.client in self.accepted:
            self.duplicates += 1
            raise WireError("duplicate", header.update_id)
        if self.closed:
            raise WireError("late", header.update_id)
        if header.client not in self.expected:
            raise WireError("not_selected", header.client)
        if header.base_version != a.version:
            raise WireError("wrong_base_version", f"{header.base_version} != {a.version}")
        codec_cfg = a.config.get("fedsa_lora", {}).get("compression", {})
        if header.codec not in (codec_cfg.get("method", "dense"), "dense"):
            raise WireError("unexpected_codec", header.codec)
        if header.num_samples > self.policy.max_samples_per_update:
            raise WireError("too_many_samples", str(header.num_samples))
        try:
            codec = get_codec(header.codec, **header.codec_params)
        except ValueError as err:
            raise WireError("bad_codec_params", str(err)) from None
        delta = codec.decode(tensors, header.codec_meta, self.shapes)
        if not all(bool(torch.isfinite(t).all()) for t in delta.values()):
            raise WireError("non_finite", header.update_id)
        norm = l2_norm(delta)
        if not math.isfinite(norm):
            raise WireError("non_finite", header.update_id)
        if self.policy.max_update_norm is not None and norm > self.policy.max_update_norm:
            raise WireError("norm_bound", f"{norm:.3g} > {self.policy.max_update_norm}")
        self.total.add(delta, float(header.num_samples))
        self.accepted.append(header.client)
        self.bytes_in += nbytes

    def partial(self) -> tuple[PartialHeader, dict[str, torch.Tensor]]:
        self.closed = True
        header = PartialHeader(
            federation=self.announce.federation,
            round=self.announce.round,
            region=self.region,
            base_version=self.announce.version,
            count=self.total.count,
            weight=self.total.weight,
            accepted=sorted(self.accepted),
            rejected=dict(self.rejected),
            duplicates=self.duplicates,
            bytes_in=self.bytes_in,
        )
        return header, self.total.as_float32()
