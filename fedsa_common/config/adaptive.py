"""Which configurations the adaptive split, personalization and similarity weighting can run
with (hooked into ``FederationConfig`` like the DP and secure-aggregation checks).

* An adaptive split (``layer_wise``, ``importance_based``) moves A and B tensors between
  the shared and the local set, so both must be trained by every device: only the
  algorithms that train A and B (``fedsa``, ``fedit``; the algorithm then only sets the
  starting split and the default of uncovered layers).  ``ffa`` freezes A and ``local``
  shares nothing by definition.
* ``importance_based`` changes the shared set between rounds, so an update must be folded
  into the round it was made for: synchronous rounds with late updates dropped.  Its
  per-device importance reports travel in the clear, outside any privacy accounting and
  past the regional hub's masking, so not with differential privacy or secure aggregation.
* ``similarity`` weighting needs the hub to see each update and weigh it by its sample
  count: not with differential privacy (unit weights, clipped sensitivity) nor secure
  aggregation (the hub sees only the masked sum).
* ``proximal_mu`` pulls shared tensors towards the global ones: ``local`` has none.
* ``meta: per_fedavg`` meta-trains the shared tensors for the adaptation a device makes
  before it evaluates (``finetune_steps``): it needs that adaptation and something shared;
  ``meta_inner_lr`` is its inner rate and means nothing without it.
* ``share_head_rounds`` K adds the head to the shared set of rounds 1..K: not with
  ``importance_based`` (whose decisions cover LoRA tensors only), and for K < ``rounds``
  (the set changes at K+1) an update must again be folded into its own round: synchronous
  rounds with late updates dropped.  Downlink deltas announce the full parameters when
  the set changes, secure aggregation and DP work on whatever the round shares.
* ``share_b_rounds`` K adds every LoRA B to rounds 1..K, with the same conditions, and
  only under ``fedsa`` (the other algorithms share B already or share nothing).
* ``personal_head`` corrects a shared head: it needs the head shared in some round
  (``share_head_rounds`` > 0, which ``local`` and ``importance_based`` do not do); where the
  head is the device's own throughout, a second head of the device's own adds nothing.
"""

from __future__ import annotations

from fedsa_common.config.sections import FederationSections, WarmField, warm_rounds_of

SPLIT = "fedsa_lora.adaptive_split"
ADAPTIVE_ALGORITHMS = ("fedsa", "fedit")


def adaptive_conflicts(config: FederationSections) -> list[str]:
    """Why these options cannot run with the rest of ``config`` (empty when they can or are
    off); each reason names the fields involved."""
    out: list[str] = []
    split = config.fedsa_lora.adaptive_split
    algorithm = config.fedsa_lora.algorithm
    policy = config.round_policy
    privacy = config.fedsa_lora.privacy
    dp = privacy.differential_privacy.enable
    secagg = privacy.secure_aggregation.enable
    if split.adaptive and algorithm not in ADAPTIVE_ALGORITHMS:
        out.append(f"{SPLIT}: strategy {split.strategy} needs fedsa_lora.algorithm fedsa or "
                   f"fedit (which train A and B), not {algorithm}")
    if split.importance_based:
        for key, value, ok in (("mode", policy.mode, "sync"), ("late", policy.late, "drop")):
            if value != ok:
                out.append(f"{SPLIT}: importance_based changes the shared set between rounds "
                           f"and needs round_policy.{key} {ok}, not {value}")
        if dp:
            out.append(f"{SPLIT}: importance_based reports are not covered by "
                       "fedsa_lora.privacy.differential_privacy; use fixed or layer_wise")
        if secagg:
            out.append(f"{SPLIT}: importance_based reports would bypass "
                       "fedsa_lora.privacy.secure_aggregation; use fixed or layer_wise")
    if policy.aggregation.weighting == "similarity":
        where = "round_policy.aggregation.weighting: similarity"
        if dp:
            out.append(f"{where} cannot run with fedsa_lora.privacy.differential_privacy "
                       "(unit weights)")
        if secagg:
            out.append(f"{where} cannot run with fedsa_lora.privacy.secure_aggregation (the "
                       "hub sees only the masked sum)")
    if config.fedsa_lora.personalization.proximal_mu > 0 and algorithm == "local":
        out.append("fedsa_lora.personalization.proximal_mu: algorithm local shares nothing "
                   "to stay near")
    personal = config.fedsa_lora.personalization
    out.extend(_meta_conflicts(config))
    if personal.personal_head and warm_rounds_of(config, "share_head_rounds") == 0:
        out.append("fedsa_lora.personalization.personal_head: corrects a shared head, and "
                   f"this configuration never shares it (algorithm {algorithm}, "
                   "share_head_rounds 0): the head is already the device's own")
    out.extend(_warm_sharing_conflicts(config, "share_head_rounds"))
    out.extend(_warm_sharing_conflicts(config, "share_b_rounds"))
    if personal.share_b_rounds != 0 and algorithm != "fedsa":
        out.append(f"fedsa_lora.personalization.share_b_rounds: only fedsa keeps B local "
                   f"(algorithm {algorithm} "
                   f"{'shares nothing' if algorithm == 'local' else 'already shares B'})")
    return out


def _meta_conflicts(config: FederationSections) -> list[str]:
    """Conflicts of Per-FedAvg (``personalization.meta``) and its inner rate."""
    personal = config.fedsa_lora.personalization
    where = "fedsa_lora.personalization"
    if personal.meta == "none":
        return ([f"{where}.meta_inner_lr: only for meta per_fedavg"]
                if personal.meta_inner_lr is not None else [])
    out = []
    if personal.finetune_steps == 0:
        out.append(f"{where}.meta: per_fedavg trains for the adaptation a device makes "
                   f"before it evaluates; set {where}.finetune_steps > 0")
    if config.fedsa_lora.algorithm == "local":
        out.append(f"{where}.meta: algorithm local shares nothing to meta-train")
    return out


def _warm_sharing_conflicts(config: FederationSections,
                            field: WarmField) -> list[str]:
    """Conflicts of sharing extra tensors (head, B) in rounds 1..K."""
    k = warm_rounds_of(config, field)
    if k == 0:
        return []
    where = f"fedsa_lora.personalization.{field}"
    out = []
    if config.fedsa_lora.adaptive_split.importance_based:
        out.append(f"{where}: cannot run with {SPLIT} importance_based (its decisions cover "
                   "LoRA tensors only); use fixed or layer_wise")
    if k < config.rounds:
        policy = config.round_policy
        for key, value, ok in (("mode", policy.mode, "sync"), ("late", policy.late, "drop")):
            if value != ok:
                out.append(f"{where}: {k} < rounds changes the shared set after round {k} "
                           f"and needs round_policy.{key} {ok}, not {value}")
    return out
