"""The cloud's split: what it holds and shares, importance reports from the regional intake
through a partial into the next round's decision, and the checkpoint that keeps it."""

from __future__ import annotations

import json

import pytest
import torch

from fedsa_common.federation.adaptive_split import ImportanceStats
from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    PartialHeader,
    Topics,
    UpdateHeader,
    encode_message,
)
from hub.aggregation import RunningSum
from hub.aggregator import ImportanceReports
from hub.checkpoint import CloudState, load_checkpoint, save_checkpoint
from hub.cloud import CloudHub, shared_now
from hub.cloud_intake import CloudIntake
from hub.intake import RegionIntake
from hub.process import Event
from hub.split_policy import SplitPolicy

LAYERS = 2
NAMES = sorted(f"bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.weight"
               for i in range(LAYERS) for m in ("query", "value") for ab in "AB")
A = [n for n in NAMES if ".lora_A." in n]
B = [n for n in NAMES if ".lora_B." in n]
ALL = [*NAMES, "classifier.weight", "classifier.bias"]
SHAPE = (2, 3)
def config(split: dict | None = None, **extra) -> FederationConfig:
    # the head kept local (it is shared by default): these tests are about the LoRA split
    fedsa: dict = {"compression": {"enable": False}, "personalization": {"share_head_rounds": 0}}
    if split is not None:
        fedsa["adaptive_split"] = split
    return FederationConfig.model_validate({"federation": {"name": "f"}, "fedsa_lora": fedsa,
                                            **extra})


IMPORTANCE_BASED = {"enable": True, "strategy": "importance_based", "threshold": 0.5}


def test_fixed_split_holds_and_shares_only_the_algorithms_tensors() -> None:
    split = SplitPolicy(config(), ALL)
    assert not split.adaptive and split.held() == A == split.first()


def test_adaptive_split_holds_every_lora_tensor() -> None:
    split = SplitPolicy(config(IMPORTANCE_BASED), ALL)
    assert split.held() == NAMES
    assert split.first() == A  # the algorithm's split until the first decision


def test_layer_wise_split_is_fixed_from_the_rules() -> None:
    rules = {"enable": True, "strategy": "layer_wise",
             "layers": [{"layers": "0", "share": ["lora_A", "lora_B"]}]}
    split = SplitPolicy(config(rules), ALL)
    expected = sorted([*A, *(n for n in B if ".layer.0." in n)])
    assert split.first() == expected
    assert split.next(3, ImportanceStats(), expected, applied=True) == expected
    nothing = {"enable": True, "strategy": "layer_wise",
               "layers": [{"layers": "0-9", "share": []}]}
    with pytest.raises(ValueError, match="shares no tensor"):
        SplitPolicy(config(nothing), ALL).first()


def agreeing_on_b() -> ImportanceStats:
    """Two devices: each puts all of its A importance on a different tensor, while their B
    importance is spread alike: B is consistent, A divergent."""
    stats = ImportanceStats()
    for favourite in (A[0], A[1]):
        stats.add_report({**{n: float(n == favourite) for n in A}, **{n: 1.0 for n in B}})
    return stats


def test_importance_decision_waits_for_warmup_and_an_applied_round() -> None:
    split = SplitPolicy(config({**IMPORTANCE_BASED, "warmup_rounds": 2}), ALL)
    stats = agreeing_on_b()
    assert split.next(1, stats, A, applied=True) == A  # round 2 is still warm-up
    assert split.next(2, stats, A, applied=False) == A  # nothing applied: keep the split
    assert split.next(2, stats, A, applied=True) == B


# regional intake -> partial -------------------------------------------------------------
def region_with_reports(collect: bool) -> list[PartialHeader]:
    cfg = config(IMPORTANCE_BASED)
    shapes = {n: SHAPE for n in A}
    intake = RegionIntake("north", "f")
    header = AnnounceHeader(federation="f", round=1, version=0, status="running",
                            selected={"north": ["d1", "d2"]}, config=cfg.model_dump(mode="json"),
                            config_hash=cfg.digest(), deadline_s=30, issued_at=0.0, shared=A)
    intake.announce(header, shapes, cfg.round_policy, "dense",
                    steps=[ImportanceReports() if collect else None])
    for client, favourite in (("d1", A[0]), ("d2", A[1])):
        enc = get_codec("dense").encode({n: torch.ones(SHAPE) for n in A})
        report = {**{n: float(n == favourite) for n in A}, **{n: 1.0 for n in B}}
        intake.accept(UpdateHeader(federation="f", round=1, client=client, region="north",
                                  base_version=0, codec="dense", codec_meta=enc.meta,
                                  num_samples=5, importance=report), enc.tensors, 10)
    meta, tensors = intake.to_state()  # reports are persisted before updates are acked
    intake = RegionIntake.from_state("north", "f", meta, tensors)
    return [h for h, _ in intake.flush(final=True)]


def test_region_forwards_one_summed_row_per_tensor() -> None:
    [header] = region_with_reports(collect=True)
    assert header.importance is not None and header.importance.reports == 2
    assert set(header.importance.tensors) == set(NAMES)
    got = ImportanceStats.from_json(header.importance.model_dump()).consistency()
    assert got == pytest.approx(agreeing_on_b().consistency())


def test_region_drops_reports_nobody_asked_for() -> None:
    [header] = region_with_reports(collect=False)
    assert header.importance is None


# cloud ----------------------------------------------------------------------------------
def cloud_in_round_1(tmp_path) -> tuple[CloudHub, CloudState]:
    cfg = config(IMPORTANCE_BASED)
    cloud = CloudHub("mqtt://127.0.0.1:1", cfg, tmp_path)  # never connected
    params = {n: torch.zeros(SHAPE) for n in NAMES}
    state = CloudState(0, 0, params, cfg.digest(), shared=list(A))
    cloud.inflight = CloudIntake(1, b"", {"north": ["d1", "d2"]}, 0.0,
                                 RunningSum.zeros({n: SHAPE for n in shared_now(state)}))
    return cloud, state


def partial_event(header: PartialHeader, names: list[str]) -> Event:
    payload = encode_message(header, {n: torch.ones(SHAPE) for n in names})
    return Event("partial", Topics("f").partial(header.region), payload, 0.0)


def test_reports_in_partials_decide_the_next_announcements_split(tmp_path) -> None:
    cloud, state = cloud_in_round_1(tmp_path)
    [header] = region_with_reports(collect=True)
    cloud.on_partial(partial_event(header, A), state)
    fl = cloud.inflight
    assert fl is not None and fl.importance.reports == 2
    fields = cloud.next_split(state, fl, applied=True)
    assert fields == {"shared": A, "next_shared": B}
    assert shared_now(state) == B  # what the next announcement carries


def test_more_reports_than_updates_is_refused(tmp_path) -> None:
    cloud, state = cloud_in_round_1(tmp_path)
    [header] = region_with_reports(collect=True)
    forged = header.model_copy(update={"count": 1, "accepted": header.accepted[:1],
                                       "weight": 5.0})
    with pytest.raises(WireError) as err:
        cloud.on_partial(partial_event(forged, A), state)
    assert err.value.reason == "bad_header"
    assert cloud.inflight is not None and cloud.inflight.importance.reports == 0


def test_a_late_partial_with_last_rounds_split_is_dropped_not_rejected(tmp_path) -> None:
    cloud, state = cloud_in_round_1(tmp_path)
    state.round, state.version, state.shared = 1, 1, list(B)
    cloud.inflight = CloudIntake(2, b"", {"north": ["d1"]}, 0.0,
                                 RunningSum.zeros({n: SHAPE for n in B}))
    late = PartialHeader(federation="f", round=1, region="north", base_version=0, count=1,
                         weight=5.0, accepted=["d1:1"])
    cloud.on_partial(partial_event(late, A), state)
    assert cloud.inflight.dropped == {"d1:1": "late"}


def test_checkpoint_keeps_the_split_and_every_global_value(tmp_path) -> None:
    params = {n: torch.full(SHAPE, float(i)) for i, n in enumerate(NAMES)}
    save_checkpoint(tmp_path, CloudState(3, 2, params, "h", shared=list(B)))
    back = load_checkpoint(tmp_path)
    assert back is not None and back.shared == B and set(back.params) == set(NAMES)
    assert all(torch.equal(back.params[n], params[n]) for n in NAMES)
    save_checkpoint(tmp_path / "fixed", CloudState(3, 2, {n: params[n] for n in A}, "h"))
    meta = json.loads((tmp_path / "fixed" / "checkpoint.json").read_text())
    assert "shared" not in meta  # a fixed split's checkpoint reads as before
    assert load_checkpoint(tmp_path / "fixed").shared is None


# head sharing (personalization.share_head_rounds) -----------------------------------------
HEAD = ["classifier.bias", "classifier.weight"]


def head_config(k: int = 1, rounds: int = 3) -> FederationConfig:
    return FederationConfig.model_validate(
        {"federation": {"name": "f"}, "rounds": rounds,
         "fedsa_lora": {"compression": {"enable": False},
                        "personalization": {"share_head_rounds": k}}})


def test_head_sharing_holds_the_head_and_shares_it_until_round_k() -> None:
    split = SplitPolicy(head_config(k=2), ALL)
    assert split.per_round and not split.adaptive
    assert split.held() == sorted([*A, *HEAD])
    assert split.first() == sorted([*A, *HEAD])
    assert split.next(1, ImportanceStats(), split.first(), applied=True) == sorted([*A, *HEAD])
    assert split.next(2, ImportanceStats(), split.first(), applied=True) == A
    assert split.next(2, ImportanceStats(), split.first(), applied=False) == A  # by round
    assert not SplitPolicy(config(), ALL).per_round


def test_the_cloud_starts_every_device_from_the_same_seeded_head() -> None:
    from hub.cloud import initial_global
    from quant.adapters import init_adapter_values

    cfg = FederationConfig.model_validate({
        "model": {"path": "tiny-bert", "num_labels": 3}, "federation": {"seed": 5},
        "fedsa_lora": {"personalization": {"share_head_rounds": 1}}})
    params = initial_global(cfg)
    head = [n for n in params if ".lora_" not in n]
    assert head and {n.split(".")[0] for n in head} == {"classifier"}
    again = init_adapter_values({n: tuple(params[n].shape) for n in head}, 5)
    assert all(torch.equal(params[n], again[n]) for n in head)


@pytest.mark.parametrize(("finished", "shares_head"), [(0, True), (1, True), (2, False),
                                                       (3, False)])
def test_a_restarted_cloud_announces_the_set_of_the_round_it_resumes(
        tmp_path, finished, shares_head) -> None:
    cfg = head_config(k=2, rounds=3)
    params = {n: torch.zeros(SHAPE) for n in [*A, *HEAD]}
    # whatever the checkpoint says, the round decides (a split that does not depend on
    # the devices' reports)
    save_checkpoint(tmp_path, CloudState(finished, finished, params, cfg.digest(),
                                         shared=list(A) if shares_head else [*A, *HEAD]))
    state = CloudHub("mqtt://127.0.0.1:1", cfg, tmp_path).load_state()
    assert shared_now(state) == (sorted([*A, *HEAD]) if shares_head else A)


def test_the_summary_names_the_rounds_set_and_the_next(tmp_path) -> None:
    cfg = head_config(k=1, rounds=3)
    cloud = CloudHub("mqtt://127.0.0.1:1", cfg, tmp_path)
    state = CloudState(1, 1, {n: torch.zeros(SHAPE) for n in [*A, *HEAD]}, cfg.digest(),
                       shared=sorted([*A, *HEAD]))
    fl = CloudIntake(1, b"", {"north": ["d1"]}, 0.0,
                     RunningSum.zeros({n: SHAPE for n in shared_now(state)}))
    assert cloud.next_split(state, fl, applied=True) == {"shared": sorted([*A, *HEAD]),
                                                          "next_shared": A}
    assert shared_now(state) == A


def test_regional_intake_checks_head_tensors_like_lora_ones() -> None:
    cfg = head_config(k=1)
    names = sorted([*A, *HEAD])
    intake = RegionIntake("north", "f")
    header = AnnounceHeader(federation="f", round=1, version=0, status="running",
                            selected={"north": ["d1", "d2", "d3"]},
                            config=cfg.model_dump(mode="json"), config_hash=cfg.digest(),
                            deadline_s=30, issued_at=0.0, shared=names)
    intake.announce(header, {n: SHAPE for n in names}, cfg.round_policy, "dense")

    def accept(client: str, tensors: dict[str, torch.Tensor]) -> str:
        enc = get_codec("dense").encode(tensors)
        return intake.accept(UpdateHeader(federation="f", round=1, client=client,
                                         region="north", base_version=0, codec="dense",
                                         codec_meta=enc.meta, num_samples=5), enc.tensors, 10)

    assert accept("d1", {n: torch.ones(SHAPE) for n in names}) == "d1:1"
    with pytest.raises(WireError):  # the head is missing
        accept("d2", {n: torch.ones(SHAPE) for n in A})
    with pytest.raises(WireError):  # a head tensor of the wrong shape
        accept("d3", {**{n: torch.ones(SHAPE) for n in A},
                     **{n: torch.ones(3, 3) for n in HEAD}})
