"""The light device's pure parts (edge_client/light.py), without a broker: its updates are
what a regional hub accepts, the same on replay, and an announcement is decoded once per
process however many devices receive it."""

from __future__ import annotations

import time

import pytest
import torch

from edge_client.light import SYNTHESISED, Announcements, light_specs, synthetic_delta
from edge_client.round_hooks import NO_HOOKS
from edge_client.update_build import Draft, prepare_update
from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    UpdateHeader,
    decode_message,
    encode_message,
)
from hub.intake import RegionIntake

SHAPES = {"l0.q.lora_A": (4, 16), "l0.v.lora_A": (4, 16)}


def config() -> FederationConfig:
    return FederationConfig.model_validate({
        "federation": {"name": "lite", "seed": 3},
        "model": {"path": "tiny-bert", "num_labels": 2},
        "fedsa_lora": {"compression": {"method": "topk", "ratio": 0.25}},
    })


def announcement(cfg: FederationConfig, clients: list[str], round_: int = 1) -> bytes:
    header = AnnounceHeader(
        federation="lite", round=round_, version=round_ - 1, status="running",
        selected={"north": clients}, config=cfg.model_dump(mode="json"),
        config_hash=cfg.digest(), deadline_s=60,
        issued_at=time.time(), shared=sorted(SHAPES))
    return encode_message(header, {n: torch.zeros(s) for n, s in SHAPES.items()})


def test_a_light_update_is_accepted_by_the_regional_intake_and_decodes_to_its_delta():
    cfg = config()
    clients = [s.client for s in light_specs("lite", {"north": 3})]
    rnd = Announcements().read(announcement(cfg, clients))
    intake = RegionIntake("north", "lite")
    intake.announce(rnd.header, rnd.shapes, cfg.round_policy,
                    cfg.fedsa_lora.compression.codec)
    for i, client in enumerate(clients):
        delta = synthetic_delta(rnd.shapes, seed=i, scale=1e-3)
        prepared = prepare_update(Draft(delta, 10), rnd.header, cfg, federation="lite",
                                  client=client, region="north", residual=None,
                                  result=SYNTHESISED, hooks=NO_HOOKS)
        payload = encode_message(prepared.header, prepared.encoded.tensors)
        header, env = decode_message(UpdateHeader, payload, max_bytes=10_000_000)
        assert header.update_id == f"{client}:1" and header.num_samples == 10
        assert header.train_loss is None
        assert intake.accept(header, env.tensors, len(payload)) == f"{client}:1"
        codec = get_codec(header.codec, **header.codec_params)
        decoded = codec.decode(env.tensors, header.codec_meta, rnd.shapes)
        for n, t in delta.items():  # top-k: the kept quarter is the delta's largest values
            kept = decoded[n] != 0
            assert int(kept.sum()) == t.numel() // 4
            torch.testing.assert_close(decoded[n][kept], t[kept], atol=1e-5, rtol=0.02)
    assert intake.complete


def test_synthetic_deltas_replay_per_seed_and_differ_between_seeds():
    a, b = synthetic_delta(SHAPES, 7, 1e-3), synthetic_delta(SHAPES, 7, 1e-3)
    c = synthetic_delta(SHAPES, 8, 1e-3)
    assert all(torch.equal(a[n], b[n]) for n in SHAPES)
    assert not torch.equal(a["l0.q.lora_A"], c["l0.q.lora_A"])
    assert {n: tuple(t.shape) for n, t in a.items()} == SHAPES
    assert 0.5e-3 < float(a["l0.q.lora_A"].std()) < 2e-3


def test_an_announcement_is_decoded_once_however_many_devices_receive_it():
    cfg = config()
    cache = Announcements()
    payload = announcement(cfg, ["a"])
    rounds = [cache.read(bytes(payload)) for _ in range(50)]  # each session's own copy
    assert cache.decoded == 1 and all(r is rounds[0] for r in rounds)
    cache.read(announcement(cfg, ["a"], round_=2))
    assert cache.decoded == 2


def test_a_bad_announcement_is_refused_for_every_device_alike():
    cache = Announcements()
    errors = []
    for _ in range(3):
        with pytest.raises(WireError) as err:
            cache.read(b"not an envelope")
        errors.append(err.value)
    assert cache.decoded == 1
    # each device gets its own error: one re-raised object would chain every device's
    # traceback, and the payload in each frame, onto it
    assert len({id(e) for e in errors}) == 3 and len({str(e) for e in errors}) == 1


def test_client_ids_carry_the_prefix_and_region():
    specs = light_specs("lite", {"north": 2, "south": 1}, prefix="p1-", samples=5)
    assert [(s.region, s.client, s.samples) for s in specs] == [
        ("north", "p1-north-0000", 5), ("north", "p1-north-0001", 5),
        ("south", "p1-south-0000", 5)]


def test_a_load_past_the_sessions_one_process_holds_is_refused_naming_the_option():
    import resource

    from edge_client.api import load_devices
    from fedsa_common.wire.errors import OptionError

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on file descriptors here")
    per_region = hard // 2 + 1  # one descriptor a session: two regions of these cannot fit
    with pytest.raises(OptionError, match="run several processes") as err:
        load_devices("lite", ["north", "south"], per_region)
    assert err.value.option == "--devices"
    assert f"{2 * per_region} light devices" in str(err.value)
    with pytest.raises(OptionError) as err:
        load_devices("lite", ["north", "north"], 1)
    assert err.value.option == "--region"
    with pytest.raises(OptionError) as err:
        load_devices("lite", ["north"], 1, client_prefix="bad prefix ")
    assert err.value.option == "--client-prefix"
