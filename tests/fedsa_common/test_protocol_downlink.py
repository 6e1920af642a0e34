"""Downlink deltas on the wire: the announcement's optional delta fields (absent: the
header and its bytes are exactly as before them), their consistency rules, the full-global
header and topic, the parameters digest, the shared reconstruction and the configuration
section.  Pure: no broker."""

from __future__ import annotations

import pytest
import torch

from fedsa_common.federation.config import FederationConfig, validate_model
from fedsa_common.wire.codec import get_codec
from fedsa_common.wire.downlink import apply_delta, decode_delta
from fedsa_common.wire.envelope import pack
from fedsa_common.wire.errors import WireError
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    GlobalHeader,
    Topics,
    announced_shapes,
    decode_message,
    encode_message,
    params_digest,
    parse_header,
)

CONFIG = FederationConfig()
BASE = {"proto": 1, "federation": "f", "round": 3, "kind": "announce", "version": 2,
        "status": "running", "selected": {"eu": ["d1"]}, "config": CONFIG.model_dump(mode="json"),
        "config_hash": CONFIG.digest(), "deadline_s": 30.0, "issued_at": 1.5,
        "shared": ["a.lora_A.weight", "b.lora_A.weight"]}
DIGEST = "0123456789abcdef0123456789abcdef"
DELTA = {"global_digest": DIGEST, "delta_from": 1, "delta_codec": "topk",
         "delta_params": {"ratio": 0.5, "values": "int8", "block_size": None, "zstd": False},
         "delta_meta": {}, "shapes": {"a.lora_A.weight": [2, 3], "b.lora_A.weight": [4]}}


def test_announcement_without_delta_fields_is_byte_identical() -> None:
    header = AnnounceHeader.model_validate(BASE)
    assert header.model_dump(mode="json") == BASE  # no new key, not even as null
    tensors = {"a.lora_A.weight": torch.ones(2, 3), "b.lora_A.weight": torch.zeros(4)}
    assert encode_message(header, tensors) == pack(BASE, tensors)
    assert not header.is_delta


def test_delta_fields_round_trip() -> None:
    header = AnnounceHeader.model_validate({**BASE, **DELTA})
    assert header.is_delta and header.model_dump(mode="json") == {**BASE, **DELTA}
    payload = encode_message(header, {"a.lora_A.weight.val": torch.zeros(3, dtype=torch.int8)})
    back, env = decode_message(AnnounceHeader, payload, max_bytes=10**6)
    assert back == header and set(env.tensors) == {"a.lora_A.weight.val"}
    # a full announcement under downlink deltas carries only the digest
    full = AnnounceHeader.model_validate({**BASE, "global_digest": DIGEST})
    assert not full.is_delta and full.model_dump(mode="json") == {**BASE,
                                                                  "global_digest": DIGEST}


@pytest.mark.parametrize("change, words", [
    ({"delta_from": None}, "without delta_from"),
    ({"shapes": None}, "delta_from without shapes"),
    ({"global_digest": None}, "delta_from without global_digest"),
    ({"delta_from": 2}, "not before version"),
    ({"shapes": {"a.lora_A.weight": [2, 3]}}, "exactly the shared"),
    ({"global_digest": "xyz"}, "pattern"),
    ({"shapes": {"a.lora_A.weight": [-1], "b.lora_A.weight": [4]}}, "greater than"),
])
def test_inconsistent_delta_fields_are_bad_headers(change: dict, words: str) -> None:
    with pytest.raises(WireError) as err:
        parse_header(AnnounceHeader, {**BASE, **DELTA, **change})
    assert err.value.reason == "bad_header" and words in err.value.detail


def test_shapes_come_from_the_body_or_the_header_and_are_bounded() -> None:
    full = AnnounceHeader.model_validate(BASE)
    assert announced_shapes(full, {"a": torch.zeros(2, 3)}, 100) == {"a": (2, 3)}
    delta = AnnounceHeader.model_validate({**BASE, **DELTA})
    assert announced_shapes(delta, {}, 10**6) == {"a.lora_A.weight": (2, 3),
                                                  "b.lora_A.weight": (4,)}
    huge = AnnounceHeader.model_validate({**BASE, **DELTA, "shapes": {
        "a.lora_A.weight": [2**31, 2**31], "b.lora_A.weight": [1]}})
    with pytest.raises(WireError) as err:
        announced_shapes(huge, {}, 16_000_000)
    assert err.value.reason == "too_large"


def test_global_header_and_topic() -> None:
    assert Topics("f").global_params == "fedsa/f/global"
    g = GlobalHeader(federation="f", round=3, version=2, config_hash="h",
                     shared=["a.lora_A.weight"], global_digest=DIGEST)
    back, _ = decode_message(GlobalHeader, encode_message(g, {}), max_bytes=10**6)
    assert back == g and back.kind == "global"
    with pytest.raises(WireError):  # an announcement is not a full global, and back
        parse_header(GlobalHeader, BASE)


def test_params_digest_sees_every_bit_name_and_shape() -> None:
    t = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(4)}
    d = params_digest(t)
    assert len(d) == 32 and d == params_digest(dict(reversed(list(t.items()))))
    assert d == params_digest({n: v.clone() for n, v in t.items()})
    flipped = t["a"].clone()
    flipped.view(torch.int32)[0, 1] ^= 1  # one bit of one value
    assert params_digest({**t, "a": flipped}) != d
    assert params_digest({**t, "b": -t["b"]}) != d  # -0.0 is not 0.0
    assert params_digest({**t, "a": t["a"].reshape(3, 2)}) != d
    assert params_digest({"c": t["a"], "b": t["b"]}) != d


def test_apply_delta_is_base_plus_decoded_and_refuses_a_wrong_base() -> None:
    base = {"a": torch.randn(2, 8)}
    codec = get_codec("topk", ratio=0.5, values="int8", block_size=None, zstd=False)
    enc = codec.encode({"a": torch.randn(2, 8)})
    params = {"ratio": 0.5, "values": "int8", "block_size": None, "zstd": False}
    decoded = decode_delta("topk", params, enc.meta, enc.tensors, {"a": (2, 8)})
    out = apply_delta(base, "topk", params, enc.meta, enc.tensors, {"a": (2, 8)})
    assert torch.equal(out["a"], base["a"] + decoded["a"])
    cases = [({"a": torch.zeros(3, 8)}, "topk", params, "shape_mismatch"),
             ({}, "topk", params, "shape_mismatch"),
             (base, "topk", {**params, "ratio": 2.0}, "bad_codec_params"),
             (base, "topk", {**params, "nonsense": 1}, "bad_codec_params"),
             (base, "zip", params, "unknown_codec")]
    for held, name, p, reason in cases:
        with pytest.raises(WireError) as err:
            apply_delta(held, name, p, enc.meta, enc.tensors, {"a": (2, 8)})
        assert err.value.reason == reason


def test_downlink_section_is_off_by_default_and_out_of_the_digest() -> None:
    plain = FederationConfig()
    off = FederationConfig.model_validate(
        {"fedsa_lora": {"compression": {"downlink": {"enable": False, "method": "topk"}}}})
    assert not plain.fedsa_lora.compression.downlink.enable
    assert off.digest() == plain.digest()
    assert "downlink" not in plain.model_dump(mode="json")["fedsa_lora"]["compression"]
    on = FederationConfig.model_validate(
        {"fedsa_lora": {"compression": {"downlink": {"enable": True, "method": "randk",
                                                     "ratio": 0.2, "values": "int4"}}}})
    assert on.digest() != plain.digest()
    assert on.model_dump(mode="json")["fedsa_lora"]["compression"]["downlink"] == {
        "enable": True, "method": "randk", "ratio": 0.2, "values": "int4"}
    assert FederationConfig.model_validate(on.model_dump(mode="json")) == on
    down = on.fedsa_lora.compression.downlink
    assert down.codec == "randk" and down.round_codec_params(0, 1)["seed"] > 0


@pytest.mark.parametrize("downlink, words", [
    ({"enable": True, "method": "dense", "values": "int8"}, "only for method topk or randk"),
    ({"enable": True, "method": "lz4"}, "unknown codec"),
    ({"enable": True, "ratio": 0}, "greater than 0"),
    ({"enable": True, "bogus": 1}, "bogus: unknown key; allowed: enable, method"),
])
def test_bad_downlink_settings_name_the_field(downlink: dict, words: str) -> None:
    with pytest.raises(ValueError) as err:
        validate_model(FederationConfig, {"fedsa_lora": {"compression": {"downlink": downlink}}})
    assert "fedsa_lora.compression.downlink" in str(err.value) and words in str(err.value)
