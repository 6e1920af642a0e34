"""The cloud's downlink deltas (hub/downlink.py, CloudHub.announce): the server step through
the downlink codec, its error feedback, what each announcement carries, and the
checkpointed state a restarted cloud continues from.  Pure: no broker (the hub object is
built but never connected; its publishes are captured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edge_client.downlink import HeldGlobal, from_announcement
from fedsa_common.federation.config import DownlinkSection, FederationConfig, ServerOptimizerSection
from fedsa_common.wire.codec import round_seed
from fedsa_common.wire.downlink import apply_delta
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    GlobalHeader,
    decode_message,
    params_digest,
)
from hub.aggregation import apply_server_update
from hub.checkpoint import CHECKPOINT_JSON, CloudState, load_checkpoint, save_checkpoint
from hub.cloud import CloudHub
from hub.downlink import DownlinkState, carried_residual, downlink_step
from hub.process import Event
from hub.regional import RegionalHub
from hub.server_optimizer import server_change
from hub.similarity import SimilarityWeighting
from tests.support.sessions import RecordingSession

SHAPES = {"l0.lora_A.weight": (4, 16), "l1.lora_A.weight": (4, 16)}
NAMES = sorted(SHAPES)


def values(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * scale for n, s in SHAPES.items()}


def section(**kw) -> DownlinkSection:
    return DownlinkSection.model_validate({"enable": True, **kw})


def test_dense_downlink_is_the_plain_server_step_bit_for_bit() -> None:
    old, mean = values(0), values(1, 0.01)
    change, _ = server_change(mean, ServerOptimizerSection(), 0.7, None)  # the default sgd
    new, state = downlink_step(old, change, section(method="dense"), 5, 1, 0, DownlinkState())
    plain = apply_server_update(old, mean, 0.7)
    assert all(torch.equal(new[n], plain[n]) for n in NAMES)
    assert state.last is not None and state.last.version == 1 and state.last.codec == "dense"
    assert all(float(r.abs().max()) == 0 for r in state.residual.values())


def test_lossy_downlink_defines_the_global_and_feeds_back_the_error() -> None:
    sec = section(method="topk", ratio=0.25, values="int8")
    params, state = values(0), DownlinkState()
    sent = {n: torch.zeros(s) for n, s in SHAPES.items()}
    steps = {n: torch.zeros(s) for n, s in SHAPES.items()}
    for version in range(4):
        mean = values(10 + version, 0.01)
        new, state = downlink_step(params, mean, sec, 5, version + 1, version, state)
        d = state.last
        assert d is not None and d.version == version + 1 and d.round == version + 1
        # the global is exactly what a device holding the old one reconstructs
        again = apply_delta(params, d.codec, d.params, d.meta, d.tensors, d.shapes)
        assert params_digest(again) == params_digest(new)
        assert any(not torch.equal(new[n], params[n] + mean[n]) for n in NAMES)  # lossy
        for n in NAMES:
            sent[n] += new[n] - params[n]
            steps[n] += mean[n]
        params = new
    # what was not sent waits in the residual: sent + residual == sum of the steps
    for n in NAMES:
        torch.testing.assert_close(sent[n] + state.residual[n], steps[n], atol=1e-5, rtol=0)
        assert float(state.residual[n].abs().max()) > 0


def test_randk_downlink_uses_the_rounds_uplink_seed() -> None:
    _, state = downlink_step(values(0), values(1), section(method="randk", ratio=0.5),
                             federation_seed=9, round_=3, version=1, state=DownlinkState())
    assert state.last is not None and state.last.params["seed"] == round_seed(9, 3)


def test_residual_follows_a_changed_shared_set() -> None:
    residual = {"a": torch.ones(2), "b": torch.ones(3)}
    out = carried_residual(residual, {"a": (2,), "c": (4,), "b": (5,)})
    assert torch.equal(out["a"], torch.ones(2))
    assert torch.equal(out["c"], torch.zeros(4)) and torch.equal(out["b"], torch.zeros(5))
    assert set(out) == {"a", "b", "c"}


def test_checkpoint_keeps_the_downlink_state_so_a_restart_continues_exactly(
        tmp_path: Path) -> None:
    sec = section(method="topk", ratio=0.2, values="int4", block_size=8)
    p1, s1 = downlink_step(values(0), values(1, 0.01), sec, 0, 1, 0, DownlinkState())
    save_checkpoint(tmp_path, CloudState(1, 1, p1, "h", downlink=s1))
    back = load_checkpoint(tmp_path)
    assert back is not None and back.downlink is not None and back.downlink.last is not None
    assert back.downlink.last.shapes == s1.last.shapes and back.downlink.last.meta == \
        s1.last.meta and back.downlink.last.params == s1.last.params
    mean = values(2, 0.01)
    live = downlink_step(p1, mean, sec, 0, 2, 1, s1)
    resumed = downlink_step(back.params, mean, sec, 0, 2, 1, back.downlink)
    for n in NAMES:
        assert torch.equal(live[0][n], resumed[0][n])
        assert torch.equal(live[1].residual[n], resumed[1].residual[n])
    # one downlink file per checkpoint; the previous one is gone once replaced
    save_checkpoint(tmp_path, CloudState(2, 2, live[0], "h", downlink=live[1]))
    assert [p.name for p in tmp_path.glob("downlink-*")] == ["downlink-r2.safetensors"]


def test_checkpoint_without_downlink_reads_as_before(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, CloudState(1, 1, values(0), "h"))
    meta = json.loads((tmp_path / CHECKPOINT_JSON).read_text())
    assert set(meta) == {"round", "version", "tensors", "config_hash", "history"}
    assert not list(tmp_path.glob("downlink-*"))
    assert load_checkpoint(tmp_path).downlink is None  # type: ignore[union-attr]


# ------------------------------------------------------------------ CloudHub.announce
def cloud(tmp_path: Path, downlink: dict | None, share_head_rounds: int = 0, **policy
          ) -> tuple[CloudHub, list[tuple[str, bytes]]]:
    raw: dict = {"federation": {"name": "f", "seed": 4},
                 "model": {"path": "tiny-bert", "num_labels": 3},
                 "round_policy": {"deadline_s": 30, **policy}, "fedsa_lora": {}}
    if downlink is not None:
        raw["fedsa_lora"]["compression"] = {"downlink": downlink}
    if share_head_rounds:
        raw["rounds"] = 2
        raw["fedsa_lora"]["personalization"] = {"share_head_rounds": share_head_rounds}
    session = RecordingSession()
    hub = CloudHub("mqtt://127.0.0.1:1", FederationConfig.model_validate(raw), tmp_path,
                   session=session)  # type: ignore[arg-type]
    return hub, session.published


def announced(sent: list[tuple[str, bytes]], hub: CloudHub):
    (gtopic, gpayload), (atopic, apayload) = sent[-2:]
    assert (gtopic, atopic) == (hub.topics.global_params, hub.topics.announce)  # full first
    g, genv = decode_message(GlobalHeader, gpayload, max_bytes=10**8)
    a, aenv = decode_message(AnnounceHeader, apayload, max_bytes=10**8)
    return g, genv, a, aenv, len(apayload), len(gpayload)


def test_announcements_carry_the_delta_once_there_is_one(tmp_path: Path) -> None:
    hub, sent = cloud(tmp_path, {"enable": True, "method": "topk", "ratio": 0.1})
    state = hub.load_state()
    assert state.downlink is not None
    hub.announce(state, "running", {"r": ["d"]})
    g, genv, a, aenv, full_bytes, _ = announced(sent, hub)
    assert not a.is_delta and a.global_digest == g.global_digest == params_digest(genv.tensors)
    held = HeldGlobal(0, a.config_hash, a.global_digest, from_announcement(a, aenv.tensors,
                                                                              None))
    # a round's step, as CloudHub.finish_round takes it
    mean = {n: torch.randn(t.shape) * 0.01 for n, t in genv.tensors.items()}
    new, state.downlink = downlink_step(
        {n: state.params[n] for n in mean}, mean, hub.downlink, 4, 1, 0, state.downlink)
    state.params, state.version, state.round = {**state.params, **new}, 1, 1
    for _ in range(2):  # a round that applies no step re-announces the same delta
        hub.announce(state, "running", {"r": ["d"]})
        g, genv, a, aenv, delta_bytes, _ = announced(sent, hub)
        assert a.delta_from == 0 and a.delta_codec == "topk" and g.version == 1
        assert a.shapes == {n: list(t.shape) for n, t in genv.tensors.items()}
        assert delta_bytes < full_bytes / 2
        got = from_announcement(a, aenv.tensors, held)
        assert got is not None and params_digest(got) == a.global_digest
        assert all(torch.equal(got[n], state.params[n]) for n in got)
    # a restarted cloud announces the same delta from its checkpoint
    save_checkpoint(tmp_path, state)
    again, sent2 = cloud(tmp_path, {"enable": True, "method": "topk", "ratio": 0.1})
    again.announce(again.load_state(), "running", {"r": ["d"]})
    _, _, a2, aenv2, _, _ = announced(sent2, again)
    assert a2.delta_from == 0 and a2.global_digest == a.global_digest
    assert all(torch.equal(aenv2.tensors[n], aenv.tensors[n]) for n in aenv.tensors)
    # a shared set the delta does not cover (adaptive split) gets the full parameters
    state.shared = sorted(state.params)[:1]
    hub.announce(state, "running", {"r": ["d"]})
    _, _, a3, aenv3, _, _ = announced(sent, hub)
    assert not a3.is_delta and sorted(aenv3.tensors) == state.shared


def test_head_sharing_ends_with_a_full_announcement_of_the_smaller_set(tmp_path: Path
                                                                        ) -> None:
    """share_head_rounds 1: round 1 announces A and the head; after its step the set
    shrinks, so round 2's announcement carries full parameters (A only), not the delta."""
    hub, sent = cloud(tmp_path, {"enable": True, "method": "topk", "ratio": 0.1},
                      share_head_rounds=1)
    state = hub.load_state()
    hub.announce(state, "running", {"r": ["d"]})
    _, genv, a, _, _, _ = announced(sent, hub)
    assert any(n.startswith("classifier.") for n in a.shared) and not a.is_delta
    mean = {n: torch.randn(t.shape) * 0.01 for n, t in genv.tensors.items()}
    new, state.downlink = downlink_step(
        {n: state.params[n] for n in mean}, mean, hub.downlink, 4, 1, 0, state.downlink)
    state.params, state.version, state.round = {**state.params, **new}, 1, 1
    assert hub.inflight is not None
    hub.next_split(state, hub.inflight, applied=True)
    hub.announce(state, "running", {"r": ["d"]})
    _, _, a2, aenv2, _, _ = announced(sent, hub)
    assert not a2.is_delta and a2.shared == sorted(aenv2.tensors)
    assert a2.shared and not any(n.startswith("classifier.") for n in a2.shared)
    assert from_announcement(a2, aenv2.tensors, None) is not None


def test_without_downlink_nothing_new_is_published(tmp_path: Path) -> None:
    hub, sent = cloud(tmp_path, None)
    hub.announce(hub.load_state(), "running", {"r": ["d"]})
    assert [t for t, _ in sent] == [hub.topics.announce]
    header, _ = decode_message(AnnounceHeader, sent[0][1], max_bytes=10**8)
    dumped = header.model_dump(mode="json")
    assert not {"global_digest", "delta_from", "shapes"} & set(dumped)
    assert "downlink" not in dumped["config"]["fedsa_lora"]["compression"]


@pytest.mark.parametrize("method", ["dense", "topk_int8", "randk"])
def test_every_codec_round_trips_through_an_announcement(tmp_path: Path, method: str) -> None:
    hub, sent = cloud(tmp_path, {"enable": True, "method": method})
    state = hub.load_state()
    held_tensors = {n: state.params[n].clone() for n in state.params}
    mean = {n: torch.randn(t.shape) * 0.01 for n, t in held_tensors.items()}
    new, state.downlink = downlink_step(held_tensors, mean, hub.downlink, 4, 1, 0,
                                        state.downlink)
    state.params, state.version, state.round = new, 1, 1
    hub.announce(state, "running", {})
    _, _, a, aenv, _, _ = announced(sent, hub)
    held = HeldGlobal(0, a.config_hash, params_digest(held_tensors), held_tensors)
    got = from_announcement(a, aenv.tensors, held)
    assert got is not None and params_digest(got) == params_digest(new) == a.global_digest


# ------------------------------------------------------------------ regional hub
def test_regional_hub_takes_shapes_and_the_reference_from_a_delta_announcement(
        tmp_path: Path) -> None:
    """The announcement's body is the encoded change: the intake's shapes come from the
    header, and similarity weighting's reference direction is the decoded change."""
    hub, sent = cloud(tmp_path / "cloud", {"enable": True, "method": "topk", "ratio": 0.2},
                      aggregation={"weighting": "similarity"})
    state = hub.load_state()
    mean = {n: torch.randn(t.shape) * 0.01 for n, t in state.params.items()}
    new, state.downlink = downlink_step(state.params, mean, hub.downlink, 4, 1, 0,
                                        state.downlink)
    state.params, state.version, state.round = new, 1, 1
    hub.announce(state, "running", {"r1": ["d"]})
    assert announced(sent, hub)[2].is_delta

    regional = RegionalHub("mqtt://127.0.0.1:1", "f", "r1", tmp_path / "regional")
    regional.on_announce(Event("announce", hub.topics.announce, sent[-1][1], 0.0))
    assert regional.intake.shapes == {n: tuple(t.shape) for n, t in new.items()}
    sim = regional.intake.step(SimilarityWeighting)
    assert sim is not None and sim.version == 1 and sim.reference is not None
    old = hub.load_state().params  # no checkpoint written: the initial global
    for n in new:  # the reference is the change itself, decoded from the announcement
        torch.testing.assert_close(sim.reference[n], new[n] - old[n], atol=1e-6, rtol=0)
