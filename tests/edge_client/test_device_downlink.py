"""A device under downlink deltas: which global it uses for an announcement (held, delta
applied bit-identically to the cloud's computation, or a full fetch), the held copy that
survives a reboot, and the fallback when a delta is bad.  No broker: the Device object is
built but never connected, and its fetch of the retained full global is replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.downlink import HeldGlobal, check_fetched, from_announcement
from edge_client.host import ModelHost
from edge_client.snapshot import HELD, load_held, save_held
from fedsa_common.federation.config import FederationConfig
from fedsa_common.process.atomic import write_tensors
from fedsa_common.wire.envelope import Envelope
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, GlobalHeader, params_digest
from hub.downlink import DownlinkState, downlink_step

CONFIG = FederationConfig.model_validate({
    "federation": {"name": "f", "seed": 1},
    "fedsa_lora": {"compression": {"downlink": {"enable": True, "method": "topk",
                                                "ratio": 0.25, "values": "int4"}}}})
SHAPES = {"l0.lora_A.weight": (4, 16), "l1.lora_A.weight": (4, 16)}
NAMES = sorted(SHAPES)


def params(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


def chain(n: int) -> tuple[list[dict[str, torch.Tensor]], list]:
    """The cloud's globals v0..vn and the deltas leading to v1..vn (hub/downlink.py)."""
    globals_, deltas, state = [params(0)], [], DownlinkState()
    for v in range(n):
        mean = {k: t * 0.01 for k, t in params(10 + v).items()}
        new, state = downlink_step(globals_[-1], mean, CONFIG.fedsa_lora.compression
                                   .downlink, 1, v + 1, v, state)
        globals_.append(new)
        deltas.append(state.last)
    return globals_, deltas


def header(version: int, digest: str, delta=None, **kw) -> AnnounceHeader:
    fields = dict(federation="f", round=version + 1, version=version, status="running",
                  selected={"r": ["d"]}, config=CONFIG.model_dump(mode="json"),
                  config_hash=CONFIG.digest(), deadline_s=30, issued_at=0.0, shared=NAMES,
                  global_digest=digest)
    if delta is not None:
        fields.update(delta_from=delta.base_version, delta_codec=delta.codec,
                      delta_params=delta.params, delta_meta=delta.meta,
                      shapes={n: list(s) for n, s in delta.shapes.items()})
    return AnnounceHeader(**{**fields, **kw})


def held(version: int, tensors: dict[str, torch.Tensor]) -> HeldGlobal:
    return HeldGlobal(version, CONFIG.digest(), params_digest(tensors), tensors)


def test_a_delta_applied_to_the_previous_version_is_the_clouds_global_bit_for_bit() -> None:
    globals_, deltas = chain(3)
    mine = held(0, globals_[0])
    for v in (1, 2, 3):
        h = header(v, params_digest(globals_[v]), deltas[v - 1])
        got = from_announcement(h, deltas[v - 1].tensors, mine)
        assert got is not None
        assert all(torch.equal(got[n], globals_[v][n]) for n in NAMES)
        mine = held(v, got)
        assert from_announcement(h, deltas[v - 1].tensors, mine) == mine.tensors  # held


def test_what_cannot_be_applied_is_fetched_or_refused() -> None:
    globals_, deltas = chain(2)
    h2 = header(2, params_digest(globals_[2]), deltas[1])
    assert from_announcement(h2, deltas[1].tensors, None) is None  # holds nothing
    assert from_announcement(h2, deltas[1].tensors, held(0, globals_[0])) is None  # too old
    other = HeldGlobal(1, "another-config", params_digest(globals_[1]), globals_[1])
    assert from_announcement(h2, deltas[1].tensors, other) is None
    # the right version number over other values (e.g. a federation restarted afresh)
    wrong = held(1, params(99))
    with pytest.raises(WireError) as err:
        from_announcement(h2, deltas[1].tensors, wrong)
    assert err.value.reason == "wrong_digest"
    broken = {n: t.clone() for n, t in deltas[1].tensors.items()}
    broken.pop(sorted(broken)[0])
    with pytest.raises(WireError):
        from_announcement(h2, broken, held(1, globals_[1]))


def test_full_announcements_are_checked_and_plain_ones_pass_through() -> None:
    g = params(0)
    h = header(0, params_digest(g))
    assert all(torch.equal(from_announcement(h, g, None)[n], g[n]) for n in NAMES)
    with pytest.raises(WireError) as err:
        from_announcement(h, {**g, NAMES[0]: g[NAMES[0]] + 1}, None)
    assert err.value.reason == "wrong_digest"
    plain = AnnounceHeader.model_validate({**h.model_dump(), "global_digest": None})
    assert from_announcement(plain, g, held(5, params(3))) == g  # downlink off: the body


def test_a_fetched_global_is_checked_against_its_header_and_the_announcement() -> None:
    globals_, deltas = chain(1)
    h = header(1, params_digest(globals_[1]), deltas[0])

    def fetched(version: int, tensors, **kw) -> GlobalHeader:
        return GlobalHeader(**{**dict(federation="f", round=2, version=version,
                                      config_hash=CONFIG.digest(), shared=NAMES,
                                      global_digest=params_digest(tensors)), **kw})

    ok = check_fetched(h, fetched(1, globals_[1]), globals_[1])
    assert ok.version == 1 and ok.digest == h.global_digest
    newer = check_fetched(h, fetched(2, params(5)), params(5))  # the announcement was stale
    assert newer.version == 2
    for g, tensors, reason in [
        (fetched(1, params(5)), params(5), "wrong_digest"),  # not the announced version 1
        (fetched(1, globals_[1]), params(5), "wrong_digest"),  # not its own digest
        (fetched(1, globals_[1], config_hash="x"), globals_[1], "wrong_federation"),
        (fetched(1, globals_[1]), {NAMES[0]: globals_[1][NAMES[0]]}, "bad_header"),
    ]:
        with pytest.raises(WireError) as err:
            check_fetched(h, g, tensors)
        assert err.value.reason == reason


def test_held_global_survives_a_reboot_and_a_torn_write_is_dropped(tmp_path: Path) -> None:
    mine = held(4, params(0))
    save_held(tmp_path, mine)
    back = load_held(tmp_path)
    assert back is not None and (back.version, back.digest) == (4, mine.digest)
    assert all(torch.equal(back.tensors[n], mine.tensors[n]) for n in NAMES)
    save_held(tmp_path, held(5, params(1)))
    assert load_held(tmp_path).version == 5  # type: ignore[union-attr]
    write_tensors(tmp_path / HELD, params(2))  # tensors replaced, JSON still names v5
    assert load_held(tmp_path) is None
    assert load_held(tmp_path / "nothing") is None


# ------------------------------------------------------------------ Device.sync_global
class OfflineDevice(Device):
    """A device whose fetch of the retained full global is served from ``full``."""

    def __init__(self, state_dir: Path, full: dict[int, dict[str, torch.Tensor]]) -> None:
        spec = DeviceSpec(client="d", region="r", federation="f",
                          data=DataSpec(source="20newsgroups"), state_dir=state_dir)
        super().__init__(spec, "mqtt://127.0.0.1:1", ModelHost())
        self.full, self.fetches = full, 0

    def fetch_global(self, header: AnnounceHeader):
        self.fetches += 1
        if header.version not in self.full:
            return None, 0
        return held(header.version, self.full[header.version]), 1000


def test_device_applies_deltas_fetches_when_it_must_and_resumes_after_a_reboot(
        tmp_path: Path) -> None:
    globals_, deltas = chain(4)
    full = dict(enumerate(globals_))
    announce = [(header(0, params_digest(globals_[0])), globals_[0])] + [
        (header(v, params_digest(globals_[v]), deltas[v - 1]), deltas[v - 1].tensors)
        for v in range(1, 5)]
    dev = OfflineDevice(tmp_path, full)
    # joins late: the first announcement it sees is the delta 1 -> 2
    got, fetched = dev.sync_global(announce[2][0], Envelope({}, announce[2][1]))
    assert fetched == 1000 and dev.fetches == 1 and dev.down_unreported == 1000
    assert params_digest(got) == announce[2][0].global_digest
    got, fetched = dev.sync_global(announce[3][0], Envelope({}, announce[3][1]))
    assert fetched == 0 and dev.fetches == 1 and params_digest(got) == params_digest(
        globals_[3])
    got[NAMES[0]] += 1  # training may do what it likes with its copy
    assert dev.held is not None and dev.held.digest == params_digest(globals_[3])
    # a reboot: the held version comes back from the state directory
    again = OfflineDevice(tmp_path, full)
    assert again.held is not None and again.held.version == 3
    got, _ = again.sync_global(announce[4][0], Envelope({}, announce[4][1]))
    assert again.fetches == 0 and params_digest(got) == params_digest(globals_[4])
    assert dict(again.downlink) == {"delta": 1}


def test_a_bad_delta_is_counted_and_replaced_by_the_full_parameters(tmp_path: Path) -> None:
    globals_, deltas = chain(2)
    dev = OfflineDevice(tmp_path, dict(enumerate(globals_)))
    dev.hold(held(1, globals_[1]))
    h = header(2, params_digest(globals_[2]), deltas[1])
    garbled = {n: torch.zeros_like(t) for n, t in deltas[1].tensors.items()}
    got, fetched = dev.sync_global(h, Envelope({}, garbled))
    assert fetched == 1000 and dev.downlink["bad_delta"] == 1 and dev.downlink["fetched"] == 1
    assert params_digest(got) == params_digest(globals_[2])
    # nothing arrives in time: no global for this round, counted
    h3 = header(3, "f" * 32, deltas[1], delta_from=1)
    got, _ = dev.sync_global(h3, Envelope({}, deltas[1].tensors))
    assert got is None and dev.downlink["fetch_failed"] == 1
