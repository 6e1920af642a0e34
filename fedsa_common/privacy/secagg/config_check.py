"""Which configurations secure aggregation can run with, and its parameters from the config.

Masked updates can only be summed, coordinate by coordinate, once per region and round:

* the codec must put the same coordinates in the same slots on every device (``randk``
  with the round's shared seed, or ``dense``); top-k chooses per device;
* the hub cannot look inside an update, so nothing may need to: no robust rule (median,
  trimmed mean), no hub-side clipping (``aggregation.clip_norm``), no norm bound
  (``max_update_norm``);
* a region forwards one sum per round, so no asynchronous mode, over-selection or late
  updates folded into later rounds;
* the fixed-point range must leave enough precision even for the largest roster.
"""

from __future__ import annotations

from fedsa_common.config.sections import FederationSections
from fedsa_common.privacy.secagg.fixed_point import FixedPoint
from fedsa_common.privacy.secagg.params import MAX_ROSTER, SecAggParams
from fedsa_common.privacy.secagg.vector import SUPPORTED_CODECS

FIELD = "fedsa_lora.privacy.secure_aggregation"


def enabled(config: FederationSections) -> bool:
    return config.fedsa_lora.privacy.secure_aggregation.enable


def secagg_params(config: FederationSections) -> SecAggParams:
    s = config.fedsa_lora.privacy.secure_aggregation
    return SecAggParams(threshold_fraction=s.threshold_fraction, min_clients=s.min_clients,
                        clip=s.clip, max_weight=s.max_weight,
                        verifiable_shares=s.verifiable_shares)


def secagg_conflicts(config: FederationSections) -> list[str]:
    """Why secure aggregation cannot run with the rest of ``config`` (empty when it can or
    is off); each reason names the fields involved."""
    s = config.fedsa_lora.privacy.secure_aggregation
    if not s.enable:
        return []
    out = []
    comp = config.fedsa_lora.compression
    if comp.codec not in SUPPORTED_CODECS:
        out.append(f"{FIELD}: requires fedsa_lora.compression.method randk or dense (or "
                   f"compression.enable false), not {comp.codec}")
    if config.fedsa_lora.algorithm == "local":
        out.append(f"{FIELD}: fedsa_lora.algorithm local shares nothing to aggregate")
    policy = config.round_policy
    aggregation = getattr(policy, "aggregation", None)
    rule = getattr(aggregation, "rule", "mean")
    if rule != "mean":
        out.append(f"{FIELD}: needs round_policy.aggregation.rule mean, not {rule} (the hub "
                   "cannot see individual updates)")
    if getattr(aggregation, "clip_norm", None) is not None:
        out.append(f"{FIELD}: round_policy.aggregation.clip_norm cannot be applied to masked "
                   "updates; remove it")
    if policy.max_update_norm is not None:
        out.append(f"{FIELD}: round_policy.max_update_norm cannot be checked on masked "
                   "updates; remove it")
    for key, value, ok in (("mode", policy.mode, "sync"), ("late", policy.late, "drop"),
                           ("over_select", policy.over_select, 1.0)):
        if value != ok:
            out.append(f"{FIELD}: needs round_policy.{key} {ok}, not {value}")
    try:
        FixedPoint.for_sum(MAX_ROSTER, s.clip, s.max_weight)
    except ValueError as err:
        out.append(f"{FIELD}.clip/max_weight: {err} (checked for a region of {MAX_ROSTER})")
    return out
