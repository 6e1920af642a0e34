"""A regional hub accepts exactly the codec the round announced, with the announced
parameters (randk: the round's seed), or dense; anything else is refused by name."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedsa_common.federation.config import FederationConfig, RoundPolicySection
from fedsa_common.wire.codec import get_codec, round_codec_params, round_seed
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader
from hub.codec_check import check_declared
from hub.intake import RegionIntake

SHAPES = {"x.lora_A.weight": (4, 16), "y.lora_A.weight": (4, 16)}
RANDK = {"method": "randk", "ratio": 0.25, "values": "int4", "block_size": 8, "zstd": True}


def announce(compression: dict[str, Any], round_: int = 3, seed: int = 11) -> AnnounceHeader:
    config = FederationConfig.model_validate(
        {"federation": {"seed": seed}, "fedsa_lora": {"compression": compression}})
    return AnnounceHeader(
        federation="f", round=round_, version=2, status="running", selected={"eu": ["d1"]},
        config=config.model_dump(mode="json"), config_hash="h", deadline_s=30,
        issued_at=0.0, shared=list(SHAPES))


def intake(header: AnnounceHeader) -> RegionIntake:
    it = RegionIntake("eu", "f")
    comp = FederationConfig.model_validate(header.config).fedsa_lora.compression
    it.announce(header, dict(SHAPES), RoundPolicySection(), comp.codec)
    return it


def update(codec: str, params: dict[str, Any], round_: int = 3
           ) -> tuple[UpdateHeader, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    enc = get_codec(codec, **params).encode(delta)
    header = UpdateHeader(federation="f", round=round_, client="d1", region="eu",
                          base_version=2, codec=codec, codec_params=params,
                          codec_meta=enc.meta, num_samples=5)
    return header, enc.tensors, delta


def device_params(compression: dict[str, Any], seed: int = 11, round_: int = 3
                  ) -> tuple[str, dict[str, Any]]:
    """What edge_client.device sends for this configuration and round."""
    config = FederationConfig.model_validate(
        {"federation": {"seed": seed}, "fedsa_lora": {"compression": compression}})
    comp = config.fedsa_lora.compression
    return comp.codec, comp.round_codec_params(config.federation.seed, round_)


@pytest.mark.parametrize("compression", [
    RANDK,
    {"method": "topk", "ratio": 0.1, "values": "fp16"},
    {"method": "topk_int8", "ratio": 0.2},
    {"method": "dense"},
    {"enable": False},
])
def test_device_params_are_accepted(compression: dict[str, Any]) -> None:
    it = intake(announce(compression))
    codec, params = device_params(compression)
    header, tensors, _ = update(codec, params)
    assert it.accept(header, tensors, 100) == "d1:3"


def test_dense_always_accepted() -> None:
    it = intake(announce(RANDK))
    header, tensors, delta = update("dense", {})
    it.accept(header, tensors, 100)
    (partial, sums), = it.flush(final=True)
    assert partial.count == 1
    for name, d in delta.items():
        torch.testing.assert_close(sums[name] / partial.weight, d)


def test_randk_wrong_seed_refused() -> None:
    it = intake(announce(RANDK))
    _, params = device_params(RANDK)
    for seed in (round_seed(11, 2), round_seed(12, 3), params["seed"] + 1):
        header, tensors, _ = update("randk", {**params, "seed": seed})
        with pytest.raises(WireError) as err:
            it.accept(header, tensors, 100)
        assert err.value.reason == "wrong_seed"
    no_seed = {k: v for k, v in params.items() if k != "seed"}
    header, tensors, _ = update("topk", no_seed)
    with pytest.raises(WireError) as err:
        it.accept(header, tensors, 100)
    assert err.value.reason == "unexpected_codec"
    assert it.accepted_ids == set()


@pytest.mark.parametrize(("codec", "params", "reason"), [
    ("topk", {"ratio": 0.25, "values": "int4", "block_size": 8, "zstd": True},
     "unexpected_codec"),
    ("topk_int8", {"ratio": 0.25}, "unexpected_codec"),
    ("randk", {"ratio": 0.5}, "bad_codec_params"),
    ("randk", {"ratio": 1.0, "values": "int4", "block_size": 8, "zstd": True}, "bad_codec_params"),
    ("randk", {"ratio": 0.25, "values": "int8", "block_size": 8, "zstd": True},
     "bad_codec_params"),
    ("randk", {"ratio": 0.25, "values": "int4", "block_size": 8, "zstd": False},
     "bad_codec_params"),
    ("randk", {"ratio": 0.25, "values": "int4", "block_size": 8, "zstd": 1},
     "bad_codec_params"),
    ("dense", {"ratio": 0.25}, "bad_codec_params"),
    ("gzip", {}, "unexpected_codec"),
])
def test_other_codecs_or_params_refused(codec: str, params: dict[str, Any], reason: str) -> None:
    _, announced = device_params(RANDK)
    params = round_codec_params(codec, params, 11, 3) if codec == "randk" else params
    header = UpdateHeader(federation="f", round=3, client="d1", region="eu", base_version=2,
                          codec=codec, codec_params=params, num_samples=5)
    with pytest.raises(WireError) as err:
        check_declared(header, "randk", announced)
    assert err.value.reason == reason


def test_hub_decodes_with_announced_params_not_declared() -> None:
    """A body encoded differently from what the round announced does not decode."""
    it = intake(announce({"method": "topk", "ratio": 0.25}))
    _, params = device_params({"method": "topk", "ratio": 0.25})
    header, _, _ = update("topk", params)
    _, other_body, _ = update("topk", {**params, "values": "fp32"})
    with pytest.raises(WireError) as err:
        it.accept(header, other_body, 100)
    assert err.value.reason == "missing_tensor"  # fp32 values, no int8 scale


def test_codec_params_survive_persistence() -> None:
    it = intake(announce(RANDK))
    meta, tensors = it.to_state()
    restored = RegionIntake.from_state("eu", "f", meta, tensors)
    assert restored.rounds[3].codec_params == it.rounds[3].codec_params
    _, params = device_params(RANDK)
    header, body, _ = update("randk", params)
    assert restored.accept(header, body, 100) == "d1:3"
