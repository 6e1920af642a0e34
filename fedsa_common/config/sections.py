"""The sections of the federation configuration (every model but ``FederationConfig``).

The config floor's leaf, below ``fedsa_common.federation.config``: the cross-field checks
that ``FederationConfig`` runs (``fedsa_common.privacy.dp``,
``fedsa_common.privacy.secagg.config_check``, ``fedsa_common.config.adaptive``) read these
sections, and they must not import the model that calls them, or the two would import each
other.  They see the whole configuration as :class:`FederationSections`, which
``FederationConfig`` satisfies.  Everything else imports the sections from
``fedsa_common.federation.config``, which re-exports them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from fedsa_common.wire.codec import CODECS, round_codec_params

Algorithm = Literal["fedsa", "fedit", "ffa", "local"]
Precision = Literal["nf4", "fp4", "int8", "fp16", "bf16", "fp32"]
Task = Literal["classification", "causal_lm"]
# LoRA's targets for a classifier when the configuration names none: BERT's attention
# query and value projections (what every configuration dumped before the default moved)
CLASSIFIER_TARGETS = ("query", "value")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FederationSection(Strict):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    seed: int = 0


LoraInit = Literal["a_random", "b_random"]


class LoraSection(Strict):
    """``init``: which LoRA matrix starts random (the other starts at zero, so the adapter
    starts as the identity either way).  ``a_random`` is peft's (Kaiming-uniform A, zero B).
    ``b_random`` starts B random and A at zero: B's starting value comes from the federation
    seed, so it is the same on every device, and the first steps move the shared A instead
    of the device's own B (with B at zero, A has no gradient).  Unset (left out of dumps):
    ``FederationConfig.lora_init``, ``b_random`` under fedsa and ``a_random`` under the
    others.  ``target_modules`` unset: the task's default (``ModelSection``); left out of
    dumps."""

    r: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, min_length=1)
    init: LoraInit | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in ("init", "target_modules"):
            if data.get(key, "") is None:
                del data[key]
        return data


class ModelSection(Strict):
    """The base model and its adapters.  ``task``: ``classification`` (a sequence
    classifier with a head of ``num_labels``; the default, left out of dumps so that
    classifier configurations digest as before it existed) or ``causal_lm`` (a causal
    language model trained on prompt/response pairs, with no head: only LoRA A and B are
    shared or local, per the algorithm).  A classifier's LoRA targets default to BERT's
    ``query``/``value``; a causal model's to its architecture's attention projections, as
    peft maps them (``q_proj``/``v_proj`` for Llama, Qwen, Mistral; ``c_attn`` for GPT-2)."""

    task: Task = "classification"
    path: str = "minilm"
    precision: Precision = "nf4"
    max_length: int = Field(128, ge=8, le=4096)
    num_labels: int | None = Field(None, ge=2)
    lora: LoraSection = LoraSection()

    @field_validator("num_labels")
    @classmethod
    def _labels_only_for_classification(cls, v: int | None, info: ValidationInfo
                                        ) -> int | None:
        if v is not None and info.data.get("task") == "causal_lm":
            raise ValueError("not used with task causal_lm (a causal language model has no "
                             "classification head); leave it out")
        return v

    @model_validator(mode="before")
    @classmethod
    def _classifier_targets(cls, data: Any) -> Any:
        """A classifier's unset LoRA targets are BERT's, set at validation (so that its
        configuration dumps, digests and round-trips as before the default moved)."""
        if not isinstance(data, dict) or data.get("task") == "causal_lm":
            return data
        lora = data.get("lora")
        if lora is None:
            return {**data, "lora": {"target_modules": list(CLASSIFIER_TARGETS)}}
        if isinstance(lora, dict) and lora.get("target_modules") is None:
            return {**data, "lora": {**lora, "target_modules": list(CLASSIFIER_TARGETS)}}
        if isinstance(lora, LoraSection) and lora.target_modules is None:
            return {**data, "lora": lora.model_copy(
                update={"target_modules": list(CLASSIFIER_TARGETS)})}
        return data

    @model_serializer(mode="wrap")
    def _omit_default_task(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("task") == "classification":
            del data["task"]
        return data

    @property
    def causal(self) -> bool:
        return self.task == "causal_lm"

    @property
    def needs_num_labels(self) -> bool:
        """Whether a cloud hub still lacks the label count it sizes the head from."""
        return not self.causal and self.num_labels is None

    @property
    def target_modules(self) -> list[str] | None:
        """LoRA's target modules; None (a causal model's unset targets) leaves them to
        peft's per-architecture attention projections."""
        targets = self.lora.target_modules
        return None if targets is None else list(targets)


_TUNABLE_CODECS = ("topk", "randk")
_OPTION_DEFAULTS: dict[str, Any] = {"values": None, "block_size": None, "zstd": False}


class CodecSection(Strict):
    """A delta codec and its options: what ``CompressionSection`` (device uplink) and
    ``DownlinkSection`` (cloud downlink) share, so both name codecs and options alike.

    ``method``: ``topk`` (largest magnitudes per tensor, one flat index as delta-varint or
    bitmap; the default, with ratio 0.05 and int8 values: the point of the measured
    bytes/accuracy frontier that stays within a point of uncompressed updates, see
    docs/benchmarks.md), ``topk_int8`` (the original codec, default until 2026-12),
    ``randk`` (positions from a seed shared by the round, so no indices travel) or
    ``dense`` (lossless fp32).  ``values`` (fp32, fp16, int8, int4; default int8),
    ``block_size`` (one scale per block of that many sent values instead of one per tensor;
    int8/int4) and ``zstd`` (compress the whole body) apply to ``topk`` and ``randk`` only.
    ``enable: false`` means dense fp32.
    """

    enable: bool = True
    method: str = "topk"
    ratio: float = Field(0.05, gt=0.0, le=1.0)
    values: Literal["fp32", "fp16", "int8", "int4"] | None = None
    block_size: int | None = Field(None, ge=1, le=1_048_576)
    zstd: bool = False

    @field_validator("method")
    @classmethod
    def _known_codec(cls, v: str) -> str:
        if v not in CODECS:
            raise ValueError(f"unknown codec {v!r}; allowed: {', '.join(CODECS)}")
        return v

    @model_validator(mode="after")
    def _options_fit_method(self) -> CodecSection:
        if self.method not in _TUNABLE_CODECS:
            given = [k for k, default in _OPTION_DEFAULTS.items() if getattr(self, k) != default]
            if given:
                raise ValueError(f"{', '.join(given)}: only for method topk or randk, "
                                 f"not {self.method}")
        if self.block_size is not None and self.value_format not in ("int8", "int4"):
            raise ValueError(f"block_size: only for int8/int4 values, not {self.value_format}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_options(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave options at their defaults out of dumps, so a configuration that does not
        use them dumps (and digests) exactly as before they existed: checkpoints still
        resume and finished bench runs are still reused."""
        data = handler(self)
        for key, default in _OPTION_DEFAULTS.items():
            if key in data and data[key] == default:
                del data[key]
        return self._trim_dump(data)

    def _trim_dump(self, data: dict[str, Any]) -> dict[str, Any]:
        """What a subclass leaves out of its dump beyond the unset options."""
        return data

    @property
    def value_format(self) -> str:
        return self.values or "int8"

    @property
    def codec(self) -> str:
        return self.method if self.enable else "dense"

    @property
    def codec_params(self) -> dict[str, Any]:
        """The codec's parameters without the per-round seed (see ``round_codec_params``)."""
        if self.codec == "dense":
            return {}
        if self.codec == "topk_int8":
            return {"ratio": self.ratio}
        return {"ratio": self.ratio, "values": self.value_format,
                "block_size": self.block_size, "zstd": self.zstd}

    def round_codec_params(self, federation_seed: int, round_: int) -> dict[str, Any]:
        """What a device sends in round ``round_`` and the hub expects: ``codec_params``
        plus, for randk, the round's shared seed."""
        return round_codec_params(self.codec, self.codec_params, federation_seed, round_)


class DownlinkSection(CodecSection):
    """Downlink deltas (``fedsa_lora.compression.downlink``; hub/downlink.py): the cloud
    sends, with the announcement of version v, the change v-1 -> v through this codec
    (error feedback on the cloud) instead of the full global shared parameters, which it
    publishes retained on ``Topics.global_params`` for devices that cannot apply the delta.

    Off by default.  Enabled, the global *is* what devices can reconstruct:
    ``old + decode(encode(server step))`` in float32.  ``enable`` switches the deltas on;
    the codec options are the uplink's (``method`` etc., default ``topk`` ratio 0.05 int8;
    ``dense`` sends the exact step).  Dumped only when enabled, so configurations without it
    digest as before.
    """

    enable: bool = False

    def _trim_dump(self, data: dict[str, Any]) -> dict[str, Any]:
        return data if self.enable else {}

    @property
    def codec(self) -> str:
        return self.method


class CompressionSection(CodecSection):
    """How devices compress their A-deltas; announced by the cloud, enforced by regional hubs
    (codec options: ``CodecSection``).  ``downlink``: how the cloud sends the global change
    to devices (``DownlinkSection``; off by default)."""

    downlink: DownlinkSection = DownlinkSection()

    def _trim_dump(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("downlink") == {}:
            del data["downlink"]
        return data


class LayerRule(Strict):
    """``layers`` (one index ``"3"`` or an inclusive range ``"0-2"``) share the LoRA roles in
    ``share`` (``[]``: those layers keep A and B local)."""

    layers: str = Field(pattern=r"^\d{1,4}(-\d{1,4})?$")
    share: list[Literal["lora_A", "lora_B"]] = Field(max_length=2)

    @field_validator("layers", mode="before")
    @classmethod
    def _int_is_one_layer(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v

    @model_validator(mode="after")
    def _ordered_unique(self) -> LayerRule:
        first, last = self.bounds
        if first > last:
            raise ValueError(f"layers: {self.layers!r} runs backwards")
        if len(set(self.share)) != len(self.share):
            raise ValueError("share: a role is listed twice")
        return self

    @property
    def bounds(self) -> tuple[int, int]:
        first, _, last = self.layers.partition("-")
        return int(first), int(last or first)


class AdaptiveSplitSection(Strict):
    """Which LoRA tensors are shared, when not the algorithm's fixed split (see
    fedsa_common/federation/adaptive_split.py; checks against the rest in
    fedsa_common/config/adaptive.py).

    ``layer_wise``: ``layers`` rules (first match wins; uncovered layers keep the algorithm's
    split).  ``importance_based``: the first ``warmup_rounds`` rounds use the algorithm's
    split, every later round shares the tensors whose importance the previous round's devices
    agreed on (consistency >= ``threshold``).  Dumped only when enabled, so a configuration
    without it digests as before.
    """

    enable: bool = False
    strategy: Literal["fixed", "importance_based", "layer_wise"] = "fixed"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    layers: list[LayerRule] = Field(default_factory=list, max_length=64)
    warmup_rounds: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _layers_fit_strategy(self) -> AdaptiveSplitSection:
        if self.strategy == "layer_wise" and self.enable and not self.layers:
            raise ValueError("layers: strategy layer_wise needs at least one rule, e.g. "
                             "[{layers: '0-2', share: [lora_A, lora_B]}]")
        if self.layers and self.strategy != "layer_wise":
            raise ValueError(f"layers: only for strategy layer_wise, not {self.strategy}")
        return self

    @model_serializer(mode="wrap")
    def _dump_only_enabled(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return handler(self) if self.enable else {}

    @property
    def adaptive(self) -> bool:
        """Whether the split differs from the algorithm's fixed one."""
        return self.enable and self.strategy != "fixed"

    @property
    def importance_based(self) -> bool:
        return self.enable and self.strategy == "importance_based"

    def rules(self) -> list[tuple[int, int, frozenset[str]]]:
        return [(*r.bounds, frozenset(r.share)) for r in self.layers]


# rounds 1..K of a warm-start sharing, or every round whatever ``rounds`` becomes
WarmRounds = Annotated[int, Field(ge=0, le=1_000_000)] | Literal["all"]


DEFAULT_META_INNER_LR = 0.1  # Per-FedAvg's α when meta_inner_lr is unset (docs/personalization.md)


class PersonalizationSection(Strict):
    """Optional personalization of local training (edge_client/personalize.py).

    ``proximal_mu``: FedProx's pull ``mu * (w - global)`` on the shared tensors' gradients,
    keeping a device near the round's global values.  ``finetune_steps``: after the round's
    update is computed, that many more steps on the device's local tensors only, before it
    evaluates; it adapts the head too while the head is shared.  ``share_head_rounds``
    (K): rounds 1..K share the classification head like the algorithm's shared tensors
    (a common warm start, FedBABU/FedRep style, for devices with too little data to learn
    a head alone); from round K+1 on it is local again, starting from the global head the
    device last loaded.  K >= ``rounds``, or ``all`` (which follows ``rounds`` when a
    federation is extended), shares it in every round; unset, it is ``all`` for the
    algorithms that share something (measured: docs/benchmarks.md, "Choosing the
    defaults") and 0 for ``local`` and ``importance_based`` splits.  ``share_b_rounds``
    (K, fedsa only) does the same for every LoRA B: rounds 1..K average B like FedIT (a
    device with a few dozen texts cannot learn B alone, and FedSA's A is only as good as
    the B it is paired with), then B is the device's own again, starting from the last
    global B.  B then leaves the device in rounds 1..K.  ``meta: per_fedavg``: each local
    step is a first-order Per-FedAvg step (edge_client/meta.py): an inner step at rate
    ``meta_inner_lr`` (α, default ``DEFAULT_META_INNER_LR``) on one batch, then the
    gradient on a second batch at the adapted point, so the shared tensors learn a start
    that adapts well in the ``finetune_steps`` (required > 0) the device takes before it
    evaluates.  ``personal_head`` (classifiers): a second, personal classification head
    beside the head, initialised at zero, whose logits are added to the head's and which
    never leaves the device (FedRoD's generic plus personalized head, Chen & Chao, ICLR
    2022).  The shared model trains on the shared logits' loss alone, as without it, and
    the personal head on the sum's loss with the shared logits held fixed, so it learns
    what the shared head leaves wrong on this device's data (quant/personal_head.py;
    measured: docs/benchmarks.md, "A personal head").  Left out of dumps when unset, 0,
    ``none`` or false.
    """

    proximal_mu: float = Field(0.0, ge=0.0, le=1e6, allow_inf_nan=False)
    finetune_steps: int = Field(0, ge=0, le=10_000)
    # None (unset): ``all`` for every algorithm that shares something, 0 for ``local`` and
    # under ``importance_based`` (``resolved_head_rounds``)
    share_head_rounds: WarmRounds | None = None
    share_b_rounds: WarmRounds = 0
    meta: Literal["none", "per_fedavg"] = "none"
    personal_head: bool = False
    # None (unset): DEFAULT_META_INNER_LR under per_fedavg (``inner_lr``); refused otherwise
    meta_inner_lr: float | None = Field(None, gt=0.0, le=100.0, allow_inf_nan=False)

    @property
    def inner_lr(self) -> float:
        """Per-FedAvg's inner rate α in force."""
        return (self.meta_inner_lr if self.meta_inner_lr is not None
                else DEFAULT_META_INNER_LR)

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump what was set: an unset head sharing stays unset (its meaning depends on the
        algorithm), as does an unset inner rate; ``meta`` only when not ``none``; the
        other fields only when not 0."""
        data = handler(self)
        return {k: v for k, v in data.items()
                if (v is not None if k in ("share_head_rounds", "meta_inner_lr")
                    else v != "none" if k == "meta" else v != 0)}


WarmField = Literal["share_head_rounds", "share_b_rounds"]


def warm_rounds_of(config: FederationSections, field: WarmField) -> int:
    """K of ``fedsa_lora.personalization.FIELD`` in rounds: ``all`` is ``rounds``; an unset
    head sharing is ``all`` unless the algorithm is ``local`` (it shares nothing) or the
    split is ``importance_based`` (its decisions cover LoRA tensors only)."""
    value = getattr(config.fedsa_lora.personalization, field)
    if value is None:
        fedsa = config.fedsa_lora
        value = ("all" if fedsa.algorithm != "local"
                 and not fedsa.adaptive_split.importance_based else 0)
    return config.rounds if value == "all" else value


class AdaptiveClippingSection(Strict):
    """Quantile-based adaptive clipping of central DP (Andrew et al., NeurIPS 2021;
    fedsa_common/privacy/dp_adaptive.py).  ``clip_norm`` is the first round's clip; after each
    round the clip moves geometrically (``clip_lr``) towards the norm under which a
    ``target_quantile`` fraction of updates fall, estimated from the count of unclipped
    updates noised with std ``clipped_count_stddev`` (default: 0.05 times the updates a
    round expects, ``sampling.clients_per_round``).  That count costs privacy too; the
    updates' noise multiplier is raised so the two together spend what ``noise_multiplier``
    (or ``epsilon``) says.  Dumped only when enabled, so a configuration without it digests
    as before."""

    enable: bool = False
    target_quantile: float = Field(0.5, gt=0, lt=1)
    clip_lr: float = Field(0.2, gt=0, le=10, allow_inf_nan=False)
    clipped_count_stddev: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_serializer(mode="wrap")
    def _dump_only_enabled(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return handler(self) if self.enable else {}


class DifferentialPrivacySection(Strict):
    """Device-level differential privacy of the shared-parameter updates
    (fedsa_common/privacy/dp.py).

    Every device clips its delta to ``clip_norm``; Gaussian noise of std
    ``noise_multiplier * clip_norm`` goes once onto the round's sum at the cloud
    (``central``) or onto each update on its device (``local``).  Without
    ``noise_multiplier`` it is calibrated so that ``rounds`` rounds spend ``epsilon`` at
    ``delta``.  Setting ``population`` (devices sampled from; central mode) opts into
    amplification by sampling at rate ``clients_per_round / population``; without it every
    device is assumed to take part in every round.  ``clip_norm`` 1.0 is about
    ``lr * local_steps * sqrt(#shared params)`` for the default training and MiniLM LoRA,
    the most Adam-like steps can move an update.  Dumped only when enabled, so a
    configuration without DP digests as before.
    """

    enable: bool = False
    mode: Literal["central", "local"] = "central"
    epsilon: float = Field(8.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    clip_norm: float = Field(1.0, gt=0)
    noise_multiplier: float | None = Field(None, gt=0)
    population: int | None = Field(None, ge=1)
    adaptive_clipping: AdaptiveClippingSection = AdaptiveClippingSection()

    @model_serializer(mode="wrap")
    def _dump_only_enabled(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Nothing when off; adaptive clipping only when on (so configurations from before
        it keep their digest)."""
        if not self.enable:
            return {}
        data = handler(self)
        if data.get("adaptive_clipping") == {}:
            del data["adaptive_clipping"]
        return data


class SecureAggregationSection(Strict):
    """Secure aggregation at the regional hub (fedsa_common/privacy/secagg): the hub learns only the
    sum of its region's updates.  ``threshold_fraction`` of a region's roster must stay to
    the end (default 2/3: up to a third may drop out); ``clip`` bounds every sent value and
    ``max_weight`` every device's weight (its sample count) in the fixed-point encoding.
    ``verifiable_shares`` (default true): Feldman verifiable secret sharing, so a dealer
    whose shares lie on no one polynomial is caught at the share check; it applies to
    rosters of up to ``secagg.params.VSS_MAX_ROSTER`` (300) devices, larger ones run
    without it (logged and counted by the hub; docs/security.md).
    Needs compression randk or dense; checked in fedsa_common/privacy/secagg/config_check.py.
    Dumped only when enabled, and ``verifiable_shares`` only when false, so a configuration
    without them digests as before.
    """

    enable: bool = False
    threshold_fraction: float = Field(2 / 3, gt=0.5, le=1.0)
    min_clients: int = Field(4, ge=4)  # secagg.params.MIN_ROSTER: why 4
    clip: float = Field(1.0, gt=0)
    max_weight: int = Field(4096, ge=1)
    verifiable_shares: bool = True

    @model_serializer(mode="wrap")
    def _dump_only_enabled(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        if not self.enable:
            return {}
        data = handler(self)
        if data.get("verifiable_shares") is True:
            del data["verifiable_shares"]
        return data


class PrivacySection(Strict):
    differential_privacy: DifferentialPrivacySection = DifferentialPrivacySection()
    secure_aggregation: SecureAggregationSection = SecureAggregationSection()

    @model_serializer(mode="wrap")
    def _omit_disabled(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Sub-sections that dump nothing (disabled) are left out altogether."""
        return {k: v for k, v in handler(self).items() if v != {}}


class FedsaLoraSection(Strict):
    algorithm: Algorithm = "fedsa"
    compression: CompressionSection = CompressionSection()
    # dumped only when enabled / not at the defaults (devices must then receive them), so
    # a configuration without them keeps its digest, checkpoints and bench reuse
    adaptive_split: AdaptiveSplitSection = AdaptiveSplitSection()
    personalization: PersonalizationSection = PersonalizationSection()
    # dumped only when something in it is enabled (devices must then receive it)
    privacy: PrivacySection = PrivacySection()

    @model_serializer(mode="wrap")
    def _omit_empty_privacy(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in ("adaptive_split", "personalization", "privacy"):
            if data.get(key) == {}:
                del data[key]
        return data


_SCHEDULE_DEFAULTS: dict[str, Any] = {"local_epochs": None, "warmup_steps": 0,
                                       "lr_schedule": "constant", "round_lr_decay": None,
                                       "round_lr_floor": 0.3, "b_lr_ratio": 1.0,
                                       "gradient_checkpointing": "auto"}


class TrainingSection(Strict):
    """A device's local training in one round (edge_client/training.py, schedule.py).

    ``local_steps`` optimizer steps of ``batch_size`` samples, unless ``local_epochs`` is
    set: then ``max(1, ceil(local_epochs * n_train / batch_size))`` steps, so a device with
    more data does more work (``local_steps`` is then ignored).  The learning rate of both
    parameter groups (``lr`` for LoRA, ``head_lr`` for the head) rises linearly over
    ``warmup_steps`` steps, then stays (``lr_schedule: constant``) or decays to 0 by the
    round's last step (``linear``, ``cosine``); round r starts from ``round_lr_decay**(r-1)``
    times the configured rates, never less than ``round_lr_floor`` times them (so a long or
    extended federation keeps learning).  ``round_lr_decay`` unset is 0.9 under fedsa, fedit
    and local and 1.0 under ffa (``FederationConfig.round_lr_decay``).  ``b_lr_ratio`` (LoRA+,
    Hayou et al., ICML 2024): the LoRA B matrices learn at ``b_lr_ratio * lr``.  Under
    FedSA-LoRA B is learned by each device alone from its own few steps; a larger rate for
    B than for A is what LoRA+ shows makes low-rank adaptation learn efficiently (16 is
    its suggested ratio), though on devices with a few dozen texts neither a larger nor a
    smaller ratio helped (docs/benchmarks.md).  ``gradient_checkpointing``: see its
    comment.  The schedule keys, ``b_lr_ratio`` and ``gradient_checkpointing`` are left
    out of dumps at their defaults, so configurations without them digest as before.
    """

    local_steps: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0)
    head_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_batch_size: int = Field(64, ge=1)
    # Forward-pass compute precision on devices: fp32, or bf16 autocast where the CPU has
    # bf16 instructions (elsewhere devices warn and stay in fp32).
    autocast: Literal["none", "bf16"] = "none"
    local_epochs: float | None = Field(None, gt=0, le=1000, allow_inf_nan=False)
    warmup_steps: int = Field(0, ge=0, le=100_000)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    # None (unset): 0.9 under fedsa, fedit and local, 1.0 under ffa
    # (FederationConfig.round_lr_decay)
    round_lr_decay: float | None = Field(None, gt=0.0, le=1.0)
    round_lr_floor: float = Field(0.3, ge=0.0, le=1.0)
    b_lr_ratio: float = Field(1.0, gt=0.0, le=1000.0, allow_inf_nan=False)
    # Activation checkpointing (edge_client/training.py): true keeps only each layer's input
    # for backward and recomputes the rest, false never; auto lets a device with a memory
    # budget switch it on when one sample does not fit without it (edge_client/microbatch.py)
    gradient_checkpointing: bool | Literal["auto"] = "auto"

    @model_serializer(mode="wrap")
    def _omit_default_schedule(self, handler: SerializerFunctionWrapHandler
                               ) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items()
                if k not in _SCHEDULE_DEFAULTS or v != _SCHEDULE_DEFAULTS[k]}


class SamplingSection(Strict):
    clients_per_round: int | None = Field(None, ge=1)
    min_clients: int = Field(1, ge=1)
    wait_for_clients_s: float = Field(600.0, gt=0)


# round_policy.max_update_value's default: five orders of magnitude above an honest LoRA
# delta's coordinates, and small enough that no sum of updates reaches float32's limit
MAX_UPDATE_VALUE = 1e4

_AGGREGATION_DEFAULTS: dict[str, Any] = {"rule": "mean", "trim_fraction": 0.2,
                                         "clip_norm": None, "weighting": "samples",
                                         "similarity_floor": 0.1}


class AggregationSection(Strict):
    """How a regional hub combines its devices' updates (see ``hub/robust.py``).

    ``mean``: the sample-weighted running sum (FedAvg).  ``median`` / ``trimmed_mean``: the
    region keeps every update of the round and forwards their coordinate-wise median or
    trimmed mean (unweighted), robust to a minority of malicious devices *per region*.
    ``clip_norm`` scales every update down to that L2 norm before any rule.
    ``weighting`` (rule mean): ``samples`` weighs an update by its sample count;
    ``similarity`` also by its agreement with the last global change, a factor in
    [``similarity_floor``, 1] (hub/weighting.py), so no device counts for more than its
    samples and a dissenting one for at least ``similarity_floor`` of them.
    """

    rule: Literal["mean", "median", "trimmed_mean"] = "mean"
    trim_fraction: float = Field(0.2, ge=0.0, lt=0.5)  # dropped at each end, per coordinate
    clip_norm: float | None = Field(None, gt=0)
    weighting: Literal["samples", "similarity"] = "samples"
    similarity_floor: float = Field(0.1, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _trim_only_for_trimmed_mean(self) -> AggregationSection:
        if "trim_fraction" in self.model_fields_set and self.rule != "trimmed_mean":
            raise ValueError(f"trim_fraction: only for rule trimmed_mean, not {self.rule}")
        return self

    @model_validator(mode="after")
    def _similarity_only_for_mean(self) -> AggregationSection:
        if "similarity_floor" in self.model_fields_set and self.weighting != "similarity":
            raise ValueError("similarity_floor: only for weighting similarity")
        if self.weighting == "similarity" and self.rule != "mean":
            raise ValueError(f"weighting: similarity weighs the mean; rule {self.rule} is "
                             "unweighted")
        return self

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump only what differs from the defaults (see CompressionSection)."""
        data = handler(self)
        return {k: v for k, v in data.items()
                if k not in _AGGREGATION_DEFAULTS or v != _AGGREGATION_DEFAULTS[k]}

    @property
    def robust(self) -> bool:
        """Whether the region keeps individual updates for a robust rule."""
        return self.rule != "mean"


class RoundPolicySection(Strict):
    """How a round opens and closes, and what happens to updates that miss it.

    ``sync``: a round closes when every selected device reported (or, with over-selection,
    when ``clients_per_round`` updates arrived) or at the deadline.  ``async`` (FedBuff):
    the cloud applies a server step whenever ``buffer_size`` updates are buffered, weighting
    an update ``tau`` versions old by 1/sqrt(1+tau) and discarding those older than
    ``max_staleness``.  ``late: stale_weight`` applies that same weighting to a synchronous
    round's late updates instead of dropping them.

    ``max_update_value`` bounds every decoded value of an update (a regional hub refuses a
    larger one, reason ``value_bound``).  On by default, unlike ``max_update_norm``, because
    a value near float32's limit (3.4e38) is no honest LoRA delta (a coordinate moves by
    about ``lr`` per local step) and, weighted by its sample count, would overflow the
    region's float32 partial to inf, which the cloud refuses: one device would void its
    region's round.  Dumped only when changed, so digests stay as they were.
    """

    mode: Literal["sync", "async"] = "sync"
    deadline_s: float = Field(300.0, gt=0)
    min_quorum: int = Field(1, ge=1)
    over_select: float = Field(1.0, ge=1.0, le=10.0)
    late: Literal["drop", "stale_weight"] = "drop"
    max_staleness: int = Field(4, ge=0)
    buffer_size: int = Field(4, ge=1)
    resend_s: float = Field(5.0, gt=0)
    max_update_norm: float | None = Field(None, gt=0)
    max_samples_per_update: int = Field(1_000_000, ge=1)
    max_update_value: float = Field(MAX_UPDATE_VALUE, gt=0, le=1e30)
    aggregation: AggregationSection = AggregationSection()

    @model_validator(mode="after")
    def _robust_needs_whole_rounds(self) -> RoundPolicySection:
        """A robust rule needs a region's whole cohort at once; modes that forward updates
        one by one (async, over-selection, late updates) would bypass it."""
        if self.aggregation.robust:
            bad = [f"{k} {v}" for k, v, ok in (("mode", self.mode, "sync"),
                                               ("over_select", self.over_select, 1.0),
                                               ("late", self.late, "drop")) if v != ok]
            if bad:
                raise ValueError(f"aggregation.rule: {self.aggregation.rule} needs mode sync, "
                                 f"over_select 1 and late drop, not {', '.join(bad)}")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_aggregation(self, handler: SerializerFunctionWrapHandler
                                  ) -> dict[str, Any]:
        """Leave ``aggregation`` and ``max_update_value`` out at their defaults so digests
        stay as they were."""
        data = handler(self)
        if data.get("aggregation") == {}:
            del data["aggregation"]
        if data.get("max_update_value") == MAX_UPDATE_VALUE:
            del data["max_update_value"]
        return data


ServerOptimizerName = Literal["sgd", "avgm", "adam", "yogi", "adagrad"]
# the options each server optimizer reads; setting another one is an error (a typo'd or
# misplaced option would otherwise silently do nothing), and dumps carry only these
_SERVER_OPTIMIZER_OPTIONS: dict[str, tuple[str, ...]] = {
    "sgd": (), "avgm": ("momentum",),
    "adam": ("beta1", "beta2", "tau", "bias_correction"),
    "yogi": ("beta1", "beta2", "tau", "bias_correction"),
    "adagrad": ("beta1", "tau", "bias_correction"),
}


class ServerOptimizerSection(Strict):
    """How the cloud turns a round's mean delta of the shared tensors into the new global
    (hub/server_optimizer.py; Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

    The round's (DP-noised) mean delta is the pseudo-gradient; the step size is the
    top-level ``server_lr``.  ``sgd`` (default): ``x += server_lr * delta``, the plain
    FedAvg step.  ``avgm`` (FedAvgM): ``m = momentum * m + delta; x += server_lr * m``.
    ``adam`` / ``yogi`` / ``adagrad``: ``m = beta1 * m + (1 - beta1) * delta``, ``v`` per
    rule (``v`` starts at ``tau**2``), ``x += server_lr * m / (sqrt(v) + tau)``;
    ``bias_correction`` divides m (and Adam/Yogi's v) by ``1 - beta**t`` (off, as in the
    paper).  Typical ``server_lr``: 1.0 for sgd/avgm (avgm with momentum 0.9 moves up to
    ~10x a round's delta), 1e-2..1e-1 for the adaptive rules, whose steps are about
    ``server_lr`` per coordinate while LoRA A entries are ~0.05.  Only the options the
    chosen rule reads may be set; dumped (and digested) only when not sgd, so
    configurations without it digest as before.
    """

    name: ServerOptimizerName = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.99, ge=0.0, lt=1.0)
    tau: float = Field(1e-3, gt=0.0, le=1.0)
    bias_correction: bool = False

    @model_validator(mode="after")
    def _options_fit_name(self) -> ServerOptimizerSection:
        used = _SERVER_OPTIMIZER_OPTIONS[self.name]
        stray = sorted(k for k in self.model_fields_set - {"name"} if k not in used)
        if stray:
            raise ValueError(f"{', '.join(stray)}: not used by server optimizer {self.name}"
                             f" (it reads {', '.join(used) or 'only server_lr'})")
        return self

    @model_serializer(mode="wrap")
    def _dump_only_used(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if self.name == "sgd":
            return {}
        return {k: v for k, v in data.items()
                if k == "name" or k in _SERVER_OPTIMIZER_OPTIONS[self.name]}

    @property
    def adaptive(self) -> bool:
        """Whether the rule keeps a second moment (adam, yogi, adagrad)."""
        return self.name in ("adam", "yogi", "adagrad")


class TransportSection(Strict):
    payload_limit: int = Field(1_000_000, ge=4096)
    max_message_bytes: int = Field(16_000_000, ge=4096)


class FederationSections(Protocol):
    """What the checks and plans below ``FederationConfig`` read of a configuration.

    Structural, so that ``fedsa_common.privacy.dp`` and the other checks ``FederationConfig`` runs
    can name the type of what they are given without importing it."""

    @property
    def rounds(self) -> int: ...

    @property
    def fedsa_lora(self) -> FedsaLoraSection: ...

    @property
    def sampling(self) -> SamplingSection: ...

    @property
    def round_policy(self) -> RoundPolicySection: ...
