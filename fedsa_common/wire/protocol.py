"""Wire protocol: topic names and the validated headers of every message kind.

Both hubs and devices import this module, so the topic layout and the header schemas live
in exactly one place.  Headers are parsed with pydantic models that forbid unknown keys;
a header that does not validate becomes a ``WireError("bad_header")`` that the receiver
counts and logs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    model_serializer,
    model_validator,
)

from fedsa_common.wire.envelope import PROTOCOL_VERSION, Envelope, loads_strict, pack, unpack
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.names import NAME_RE, check_name
from fedsa_common.wire.shards import MAX_INTAKE_SHARDS, intake_shard

#: Largest round, version or sequence number a header may carry (2**53 - 1: exact in every
#: JSON parser).  Unbounded integers would make ids such as "region:round:seq" longer than
#: an Ack may carry, and a hub that builds the Ack would fail on it.
MAX_WIRE_INT = 2**53 - 1


class Topics:
    """Topic layout of one federation.

    Chunked logical messages (announcements, updates, partials) travel on ``T/{chunk}``;
    raw JSON messages (presence, metrics, status) on the topic itself.
    """

    def __init__(self, federation: str) -> None:
        self.base = f"fedsa/{check_name('federation', federation)}"

    @property
    def all(self) -> str:
        return f"{self.base}/#"

    @property
    def announce(self) -> str:
        return f"{self.base}/round"

    @property
    def global_params(self) -> str:
        """The full global shared parameters of the current version (chunked, retained), for
        devices that cannot apply an announcement's downlink delta."""
        return f"{self.base}/global"

    def update(self, region: str, client: str, shard: int | None = None) -> str:
        """Where ``client`` publishes its updates; with ``shard`` (a region served by several
        intake processes, ``intake_shards`` > 1) one level deeper, so that each intake
        process subscribes to its own devices only (``fedsa_common.wire.shards``)."""
        if shard is None:
            return f"{self.base}/region/{region}/update/{client}"
        return f"{self.base}/region/{region}/update/{shard}/{client}"

    def update_filter(self, region: str, shard: int | str | None = None) -> str:
        """The updates of ``region`` (of one intake process's ``shard``; "+": any shard)."""
        if shard is None:
            return f"{self.base}/region/{region}/update/+"
        return f"{self.base}/region/{region}/update/{shard}/+"

    def update_any_shard(self, region: str, client: str) -> str:
        """``client``'s update topic under any shard (its broker account's write rule)."""
        return f"{self.base}/region/{region}/update/+/{client}"

    def device_update(self, region: str, client: str, shards: int) -> str:
        """Where a device of a region served by ``shards`` intake processes (the announced
        ``intake_shards``; 1: today's topic) publishes its updates."""
        return self.update(region, client, intake_shard(client, shards) if shards > 1 else None)

    def intake_partial(self, region: str, shard: int | str) -> str:
        """An intake process's running sums, to its region's leader (stays in the site)."""
        return f"{self.base}/region/{region}/intake/partial/{shard}"

    def intake_partial_filter(self, region: str) -> str:
        return f"{self.base}/region/{region}/intake/partial/+"

    def intake_ack(self, region: str, shard: int | str) -> str:
        """The region leader's answer to one of intake process ``shard``'s partials."""
        return f"{self.base}/region/{region}/intake/ack/{shard}"

    def intake_status(self, region: str, shard: int | str) -> str:
        """Intake process ``shard``'s retained status (the leader keeps the region's)."""
        return f"{self.base}/region/{region}/intake/status/{shard}"

    def secagg_up(self, region: str, client: str) -> str:
        """Secure aggregation, device -> regional hub (stage named in the header)."""
        return f"{self.base}/region/{region}/secagg/up/{client}"

    def secagg_up_filter(self, region: str) -> str:
        return f"{self.base}/region/{region}/secagg/up/+"

    def secagg_down(self, region: str, client: str) -> str:
        """Secure aggregation, regional hub -> one device (stage named in the header)."""
        return f"{self.base}/region/{region}/secagg/down/{client}"

    def partial(self, region: str) -> str:
        return f"{self.base}/cloud/partial/{region}"

    @property
    def partial_filter(self) -> str:
        return f"{self.base}/cloud/partial/+"

    def presence(self, region: str, client: str) -> str:
        return f"{self.base}/presence/{region}/{client}"

    @property
    def presence_filter(self) -> str:
        return f"{self.base}/presence/+/+"

    def metrics(self, region: str, client: str) -> str:
        return f"{self.base}/metrics/{region}/{client}"

    @property
    def metrics_filter(self) -> str:
        return f"{self.base}/metrics/+/+"

    def ack(self, region: str, client: str) -> str:
        """A regional hub's answer to one device update (after it was persisted)."""
        return f"{self.base}/ack/{region}/{client}"

    def partial_ack(self, region: str) -> str:
        """The cloud's answer to one regional partial (after it was persisted)."""
        return f"{self.base}/ack/cloud/{region}"

    @property
    def summary(self) -> str:
        return f"{self.base}/summary"

    @property
    def control(self) -> str:
        """Lifecycle commands for the running cloud hub (``hub federation stop|extend``)."""
        return f"{self.base}/control"

    def status(self, role: str, name: str) -> str:
        return f"{self.base}/status/{role}/{name}"

    @property
    def status_filter(self) -> str:
        return f"{self.base}/status/+/+"


#: A parameter's wire name (``bert.encoder.layer.0.attention.self.query.lora_A.weight``).
TensorName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.]{1,200}$")]
Importance = Annotated[float, Field(ge=0, allow_inf_nan=False)]
MAX_IMPORTANCE = 512  # tensors per importance report: MiniLM's query/value LoRA has 24


def _omit_none(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Drop optional fields that are absent, so headers read as before they existed."""
    return {k: v for k, v in data.items() if not (k in keys and v is None)}


class Header(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # the longest JSON header ``decode_message`` parses (the envelope's own default): a
    # bound on what hostile input costs before any validation
    MAX_HEADER_BYTES: ClassVar[int] = 65_536
    proto: int = PROTOCOL_VERSION
    federation: str = Field(pattern=NAME_RE)
    round: int = Field(ge=0, le=MAX_WIRE_INT)


#: The header limit of the messages that list device ids (announcements, partials).
ID_LIST_HEADER_BYTES = 4_000_000
#: Tensors an announcement may name shapes for (MiniLM's query/value LoRA has 24).
MAX_SHARED = 4096
Dim = Annotated[int, Field(ge=0, le=2**31)]
Shape = Annotated[list[Dim], Field(max_length=8)]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
_DELTA_FIELDS = ("delta_from", "delta_codec", "delta_params", "delta_meta", "shapes")


class AnnounceHeader(Header):
    """Round announcement, retained, so a late joiner learns the current round at once.

    Its body holds the global shared parameters of ``version``, unless downlink deltas are
    on (``fedsa_lora.compression.downlink``; hub/downlink.py) and ``delta_from`` is set:
    then the body is the change ``delta_from`` -> ``version`` encoded with ``delta_codec``
    (``delta_params``, ``delta_meta``), ``shapes`` gives the shared tensors' shapes (a
    delta's tensors do not), and the full parameters are retained on
    ``Topics.global_params``.  ``global_digest`` (``params_digest`` of the version's global
    shared parameters) lets a device check what it reconstructed, bit for bit.  Every one
    of these fields is absent without downlink deltas, so headers read as before them.
    """

    # lists every selected device's id (~14 bytes each): 64 KB held ~4,000, 10,000 devices
    # a round need ~140 KB; this holds ~250,000
    MAX_HEADER_BYTES: ClassVar[int] = ID_LIST_HEADER_BYTES
    kind: Literal["announce"] = "announce"
    version: int = Field(ge=0)
    status: Literal["running", "finished"]
    selected: dict[str, list[str]]
    config: dict[str, Any]
    config_hash: str
    deadline_s: float = Field(gt=0)
    issued_at: float
    shared: list[str]
    global_digest: Digest | None = None
    delta_from: int | None = Field(None, ge=0, le=MAX_WIRE_INT)
    delta_codec: str | None = Field(None, max_length=32)
    delta_params: dict[str, Any] | None = None
    delta_meta: dict[str, Any] | None = None
    shapes: dict[TensorName, Shape] | None = Field(None, max_length=MAX_SHARED)
    # adaptive clipping of central DP only (fedsa_common/privacy/dp_adaptive.py): the clip norm of
    # this round, which devices and regional hubs clip to instead of the configured one
    dp_clip_norm: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _delta_complete(self) -> AnnounceHeader:
        if self.delta_from is None:
            given = [k for k in _DELTA_FIELDS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} without delta_from")
            return self
        missing = [k for k in ("delta_codec", "delta_params", "delta_meta", "shapes",
                               "global_digest") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"delta_from without {', '.join(missing)}")
        if self.delta_from >= self.version:
            raise ValueError(f"delta_from {self.delta_from} is not before version "
                             f"{self.version}")
        if sorted(self.shapes or {}) != sorted(self.shared):
            raise ValueError("shapes do not name exactly the shared tensors")
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_delta(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without downlink deltas (or adaptive clipping) an announcement reads as before
        the fields."""
        return _omit_none(handler(self), ("global_digest", *_DELTA_FIELDS, "dp_clip_norm"))

    @property
    def is_delta(self) -> bool:
        return self.delta_from is not None


class GlobalHeader(Header):
    """The full global shared parameters of ``version`` (retained on
    ``Topics.global_params``, published before the announcement that needs them); ``round``
    is that announcement's round."""

    kind: Literal["global"] = "global"
    version: int = Field(ge=0, le=MAX_WIRE_INT)
    config_hash: str = Field(max_length=64)
    shared: list[TensorName] = Field(max_length=MAX_SHARED)
    global_digest: Digest


def params_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A 128-bit digest of named float32 tensors (names, shapes and every bit of every
    value): the cloud announces it with downlink deltas, and a device compares it with what
    it reconstructed, so a wrong base or a decoding difference is caught, never trained on."""
    h = hashlib.sha256(b"fedsa-global-v1")
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        h.update(json.dumps([name, list(t.shape)]).encode() + b"\0")
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def announced_shapes(header: AnnounceHeader, tensors: Mapping[str, torch.Tensor],
                     max_bytes: int) -> dict[str, tuple[int, ...]]:
    """The shapes of the round's shared tensors: from the body of a full announcement, from
    ``shapes`` for a delta.  Announced shapes must fit one full-parameter message of
    ``max_bytes`` (float32), so a hostile header cannot make a receiver allocate more than a
    message could carry."""
    if header.shapes is None:
        return {n: tuple(t.shape) for n, t in tensors.items()}
    shapes = {n: tuple(s) for n, s in header.shapes.items()}
    numel = sum(math.prod(s) for s in shapes.values())
    if 4 * numel > max_bytes:
        raise WireError("too_large", f"announced shapes hold {numel} values")
    return shapes


class UpdateHeader(Header):
    """One device's compressed delta of its shared parameters for one round."""

    kind: Literal["update"] = "update"
    client: str = Field(pattern=NAME_RE)
    region: str = Field(pattern=NAME_RE)
    base_version: int = Field(ge=0)
    codec: str
    codec_params: dict[str, Any] = {}
    codec_meta: dict[str, Any] = {}
    num_samples: int = Field(ge=1)
    train_loss: float | None = None
    train_s: float | None = Field(None, ge=0)
    # adaptive split (importance_based only): the device's per-tensor LoRA importance
    importance: dict[TensorName, Importance] | None = Field(None, max_length=MAX_IMPORTANCE)
    # adaptive clipping of central DP only: whether the device's update was within the
    # round's clip norm before it clipped it (its regional hub sees it clipped already)
    dp_unclipped: bool | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_importance(self, handler: SerializerFunctionWrapHandler
                                ) -> dict[str, Any]:
        """Without the adaptive split (or adaptive clipping) an update header reads as
        before the fields."""
        return _omit_none(handler(self), ("importance", "dp_unclipped"))

    @property
    def update_id(self) -> str:
        return f"{self.client}:{self.round}"


class ImportanceSummary(BaseModel):
    """A region's importance reports, summed
    (``fedsa_common.federation.adaptive_split.ImportanceStats``): per tensor (reports naming
    it, sum, sum of squares) of normalized importances in [0, 1], so one row per tensor
    however many devices reported."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reports: int = Field(ge=1, le=MAX_WIRE_INT)
    tensors: dict[TensorName, tuple[int, float, float]] = Field(max_length=MAX_IMPORTANCE)

    @model_validator(mode="after")
    def _rows_possible(self) -> ImportanceSummary:
        for name, (n, s, ss) in self.tensors.items():
            slack = 1e-9 * max(1, n)
            if not (1 <= n <= self.reports and math.isfinite(s) and math.isfinite(ss)
                    and 0 <= s <= n + slack and 0 <= ss <= s + slack):
                raise ValueError(f"importance row of {name} is impossible: {n}, {s}, {ss}")
        return self


class PartialHeader(Header):
    """A regional hub's weighted sum of updates that share one base version.

    A region may send several per round (``seq`` numbers them; ``final`` marks the one that
    closes the region's round); ``accepted`` lists the update ids ("client:round") folded in,
    so the cloud can account for every acknowledged update.
    """

    MAX_HEADER_BYTES: ClassVar[int] = ID_LIST_HEADER_BYTES  # ``accepted``: one id an update
    kind: Literal["partial"] = "partial"
    region: str = Field(pattern=NAME_RE)
    base_version: int = Field(ge=0)
    seq: int = Field(0, ge=0, le=MAX_WIRE_INT)
    final: bool = True
    count: int = Field(ge=0)
    weight: float = Field(ge=0, allow_inf_nan=False)  # "inf" as a string coerces otherwise
    accepted: list[str]
    rejected: dict[str, int] = {}
    duplicates: int = Field(0, ge=0)
    bytes_in: int = Field(0, ge=0)
    importance: ImportanceSummary | None = None  # adaptive split (importance_based) only
    # adaptive clipping of central DP only: how many of the ``count`` updates were within
    # the round's clip norm (the cloud sums and noises it to move the clip)
    dp_unclipped: int | None = Field(None, ge=0, le=MAX_WIRE_INT)
    # a region served by several intake processes: which one sent this partial to the
    # region's leader (absent on what a region sends the cloud, so those read as before)
    worker: int | None = Field(None, ge=0, lt=MAX_INTAKE_SHARDS)

    @property
    def source(self) -> str:
        """Who sent it: the region, or ``region/worker`` for an intake process."""
        return self.region if self.worker is None else f"{self.region}/{self.worker}"

    @property
    def pid(self) -> str:
        """The partial's id, which its acknowledgement names: ``source:round:seq``."""
        return f"{self.source}:{self.round}:{self.seq}"

    @model_validator(mode="after")
    def _unclipped_possible(self) -> PartialHeader:
        if self.dp_unclipped is not None and self.dp_unclipped > self.count:
            raise ValueError(f"dp_unclipped {self.dp_unclipped} > count {self.count}")
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_importance(self, handler: SerializerFunctionWrapHandler
                                ) -> dict[str, Any]:
        return _omit_none(handler(self), ("importance", "dp_unclipped", "worker"))


class Ack(BaseModel):
    """Tells a sender its message was persisted (or refused, with the reason) so it stops
    resending; ``id`` is "client:round" for updates and "region:round:seq" for partials."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["update", "partial", "duplicate"]
    id: str = Field(max_length=200)
    accepted: bool
    reason: str | None = None
    # kind "duplicate": the client id ``id`` runs in two sessions; the one named here (the
    # newer) is told to leave, ``reason`` saying why
    session: str | None = Field(default=None, pattern=NAME_RE)


class RoundSummary(BaseModel):
    """The cloud's account of one finished round: which update ids were applied, which were
    dropped and why.  Published once per round and kept in the checkpoint history."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    federation: str
    round: int = Field(ge=1)
    version: int = Field(ge=0)
    mode: str
    selected: int = Field(ge=0)
    applied: list[str]
    dropped: dict[str, str] = {}
    rejected: dict[str, int] = {}
    duplicates: int = 0
    regions_reported: list[str] = []
    applied_step: bool
    bytes_in: int = 0
    started_at: float
    duration_s: float = Field(ge=0)
    # differential privacy (absent without it): epsilon spent after this round at dp_delta;
    # the round's accounting step (noise multiplier, sampling rate) when it spent budget
    dp_epsilon: float | None = Field(None, ge=0)
    dp_delta: float | None = Field(None, gt=0, lt=1)
    dp_noise_multiplier: float | None = Field(None, gt=0)
    dp_sample_rate: float | None = Field(None, gt=0, le=1)
    # adaptive clipping only: the round's clip norm, the noised fraction of its updates
    # that were within it (a DP release like the step), and the next round's clip norm
    dp_clip_norm: float | None = Field(None, gt=0, allow_inf_nan=False)
    dp_unclipped_fraction: float | None = Field(None, allow_inf_nan=False)
    dp_next_clip_norm: float | None = Field(None, gt=0, allow_inf_nan=False)
    # adaptive split or head sharing (absent without them): the tensors this round shared,
    # and the cloud's decision for the next round
    shared: list[str] | None = None
    next_shared: list[str] | None = None
    # the L2 norm of the round's update (what the server optimizer was given: the weighted
    # mean, DP noise included, or a robust rule's combination); absent when none was applied
    step_norm: float | None = Field(None, ge=0, allow_inf_nan=False)

    @model_serializer(mode="wrap")
    def _omit_absent_dp(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without DP, an adaptive split or an applied step a summary (and the checkpoint
        history) reads as before the fields."""
        optional = ("shared", "next_shared", "step_norm")
        return {k: v for k, v in handler(self).items()
                if not ((k.startswith("dp_") or k in optional) and v is None)}


class Metrics(BaseModel):
    """A device's report after a round: personalized accuracy on its own test split.

    ``global_accuracy`` is only sent by algorithms that share every LoRA parameter the device
    trains (fedit, ffa): the accuracy, on the same test split, of the round's global LoRA
    with the device's own head, measured before local training.  For fedsa and local there
    is no single global model to speak of, so it stays ``None``.

    A causal language model (``model.task: causal_lm``) reports the exact match of its
    greedy answers as ``accuracy`` (and ``global_accuracy``), and its held-out mean loss
    per answer token as ``loss`` with its ``perplexity``; a classifier sends neither key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    federation: str
    client: str = Field(pattern=NAME_RE)
    region: str = Field(pattern=NAME_RE)
    round: int = Field(ge=0)
    accuracy: float = Field(ge=0, le=1)
    n_test: int = Field(ge=0)
    train_loss: float | None = None
    train_s: float = Field(0.0, ge=0)
    bytes_up: int = Field(0, ge=0)
    bytes_down: int = Field(0, ge=0)
    global_accuracy: float | None = Field(None, ge=0, le=1)
    loss: float | None = Field(None, ge=0, allow_inf_nan=False)
    perplexity: float | None = Field(None, ge=1, allow_inf_nan=False)

    @model_serializer(mode="wrap")
    def _omit_absent_scores(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A classifier's report reads as before ``loss``/``perplexity`` existed."""
        return _omit_none(handler(self), ("loss", "perplexity"))


class Control(BaseModel):
    """A lifecycle command to the running cloud hub (raw JSON on ``Topics.control``, QoS 1,
    not retained, so it never reaches a later cloud by surprise).

    ``extend`` sets the federation's total ``rounds`` (absolute, so a redelivered command
    changes nothing twice); ``stop`` finishes it after the round in flight, or with ``now``
    closes that round at once with the updates that arrived, as its deadline would."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["control"] = "control"
    federation: str = Field(pattern=NAME_RE)
    action: Literal["stop", "extend"]
    rounds: int | None = Field(None, ge=1, le=MAX_WIRE_INT)
    now: bool = False
    issued_at: float = 0.0

    @model_validator(mode="after")
    def _rounds_for_extend(self) -> Control:
        if (self.action == "extend") != (self.rounds is not None):
            raise ValueError("extend needs rounds; stop takes none")
        return self


class Presence(BaseModel):
    """A device's retained online/offline state.  ``session`` (random, new for every start
    of a device) and ``since`` (when that start was) let a hub tell a restarted device from
    two devices running with one client id: a restart never brings an earlier session back
    (hub/duplicate_ids.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    client: str = Field(pattern=NAME_RE)
    region: str = Field(pattern=NAME_RE)
    online: bool
    ts: float = 0.0
    session: str | None = Field(default=None, pattern=NAME_RE)
    since: float = 0.0


H = TypeVar("H", bound=BaseModel)


def parse_header(cls: type[H], raw: Mapping[str, Any]) -> H:
    if raw.get("proto") != PROTOCOL_VERSION:
        raise WireError("version", f"protocol {raw.get('proto')!r}, expected {PROTOCOL_VERSION}")
    try:
        return cls.model_validate(dict(raw))
    except ValidationError as err:
        # bounded: the error repeats the offending input, which a hostile header makes huge
        raise WireError("bad_header", str(err.errors(include_url=False)[0])[:300]) from None


def encode_message(header: BaseModel, tensors: Mapping[str, torch.Tensor]) -> bytes:
    return pack(header.model_dump(mode="json"), tensors)


def decode_message(cls: type[H], data: bytes, *, max_bytes: int) -> tuple[H, Envelope]:
    env = unpack(data, max_bytes=max_bytes,
                 max_header_bytes=getattr(cls, "MAX_HEADER_BYTES", Header.MAX_HEADER_BYTES))
    return parse_header(cls, env.header), env


def encode_json(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def decode_json(cls: type[H], data: bytes, max_bytes: int = 65_536) -> H:
    if len(data) > max_bytes:
        raise WireError("too_large", f"{len(data)} bytes")
    try:
        return cls.model_validate(loads_strict(data))
    except (ValueError, RecursionError, ValidationError) as err:  # deep nesting: RecursionError
        raise WireError("bad_header", str(err)[:200]) from None
