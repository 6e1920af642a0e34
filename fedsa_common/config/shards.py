"""Which configurations a region served by several intake processes cannot run (pure).

Why refused rather than half-supported: each intake process folds the updates of its own
devices into a running sum and the region's leader adds those sums, which equals one
process's sum only for what is a sum.  Secure aggregation unmasks a region's whole cohort
at one hub (its masks cancel only in the sum of every device's update); a robust rule
(median, trimmed mean, ...) needs every update of the cohort at once; asynchronous mode
(FedBuff) forwards updates one by one by base version, which the leader does not do.
Differential privacy (clipping and unit weights, adaptive clipping's counts), similarity
weighting and importance reports act per update or are sums, so they are allowed.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedsa_common.config.sections import RoundPolicySection
from fedsa_common.wire.names import NAME_RE, check_name
from fedsa_common.wire.shards import MAX_INTAKE_SHARDS


def intake_shards_problems(shards: Mapping[str, int]) -> list[str]:
    """Each region name or process count of ``intake_shards`` that is not valid, as
    ``intake_shards...: why`` (the configuration and ``hub provision`` both check these)."""
    problems = []
    for region, k in shards.items():
        try:
            check_name("region", region)
        except ValueError:
            problems.append(f"intake_shards: region {region!r} must match {NAME_RE}")
        if not 1 <= k <= MAX_INTAKE_SHARDS:
            problems.append(f"intake_shards.{region}: {k} not in 1..{MAX_INTAKE_SHARDS}")
    return problems


def intake_conflicts(shards: Mapping[str, int], policy: RoundPolicySection,
                     secure_aggregation: bool) -> list[str]:
    """Each problem as ``intake_shards...: why``; empty when the configuration can run."""
    problems = intake_shards_problems(shards)
    sharded = sorted(r for r, k in shards.items() if k > 1)
    if not sharded:
        return problems
    where = f"intake_shards ({', '.join(sharded)} > 1)"
    if secure_aggregation:
        problems.append(f"{where}: not with fedsa_lora.privacy.secure_aggregation (its masks "
                        "cancel only in the sum of the whole region at one hub)")
    if policy.aggregation.robust:
        problems.append(f"{where}: not with round_policy.aggregation.rule "
                        f"{policy.aggregation.rule} (it needs every update of the region)")
    if policy.mode != "sync":
        problems.append(f"{where}: needs round_policy.mode sync (asynchronous regions are "
                        "not built with several intake processes)")
    return problems
