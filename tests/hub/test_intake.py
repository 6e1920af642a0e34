"""A regional hub's per-round validation: every refusal has a named reason and loses nothing."""

import pytest
import torch

from fedsa_common.config import FederationConfig, RoundPolicySection
from fedsa_common.errors import WireError
from fedsa_common.protocol import AnnounceHeader, UpdateHeader
from hub.aggregation import fedavg
from hub.intake import RoundIntake
from quant.codec import get_codec

SHAPES = {"x.lora_A.weight": (2, 8)}


def announce(round_=3, version=2, selected=None) -> AnnounceHeader:
    return AnnounceHeader(
        federation="f", round=round_, version=version, status="running",
        selected=selected or {"eu": ["d1", "d2"], "us": ["d3"]},
        config=FederationConfig().model_dump(mode="json"), config_hash="h", deadline_s=30,
        issued_at=0.0, shared=list(SHAPES),
    )


def update(client="d1", round_=3, base_version=2, codec="topk_int8", samples=10, scale=1.0,
           region="eu"):
    delta = {n: torch.full(s, scale) for n, s in SHAPES.items()}
    params = {"ratio": 1.0} if codec == "topk_int8" else {}
    enc = get_codec(codec, **params).encode(delta)
    header = UpdateHeader(federation="f", round=round_, client=client, region=region,
                          base_version=base_version, codec=codec, codec_params=params,
                          codec_meta=enc.meta, num_samples=samples)
    return header, enc.tensors, delta


def intake(**policy) -> RoundIntake:
    return RoundIntake(announce(), "eu", dict(SHAPES), RoundPolicySection(**policy))


def test_accepts_selected_updates_and_forwards_weighted_sum():
    it = intake()
    h1, t1, d1 = update("d1", samples=10, scale=1.0)
    h2, t2, d2 = update("d2", samples=30, scale=3.0)
    it.offer(h1, t1, 100)
    assert not it.complete
    it.offer(h2, t2, 100)
    assert it.complete
    header, sums = it.partial()
    assert header.count == 2 and header.weight == 40 and header.accepted == ["d1", "d2"]
    mean = {n: s / header.weight for n, s in sums.items()}
    torch.testing.assert_close(mean, fedavg([(d1, 10.0), (d2, 30.0)]), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"round_": 2}, "stale"),
        ({"round_": 4}, "future"),
        ({"client": "d3", "region": "eu"}, "not_selected"),
        ({"client": "d9"}, "not_selected"),
        ({"base_version": 1}, "wrong_base_version"),
        ({"region": "us", "client": "d3"}, "wrong_region"),
        ({"scale": float("inf"), "codec": "dense"}, "non_finite"),
        ({"samples": 10**9}, "too_many_samples"),
    ],
)
def test_refusals_are_named(kwargs, reason):
    it = intake()
    if kwargs.get("scale") == float("inf"):
        h, _, _ = update(codec="dense")
        tensors = {n: torch.full(s, float("inf")) for n, s in SHAPES.items()}
    else:
        h, tensors, _ = update(**kwargs)
    with pytest.raises(WireError) as err:
        it.offer(h, tensors, 10)
    assert err.value.reason == reason
    assert it.accepted == []


def test_duplicate_counts_once():
    it = intake()
    h, t, _ = update("d1")
    it.offer(h, t, 10)
    with pytest.raises(WireError, match="duplicate"):
        it.offer(h, t, 10)
    assert it.total.count == 1 and it.duplicates == 1


def test_norm_bound():
    it = intake(max_update_norm=1.0)
    h, t, _ = update(scale=5.0)
    with pytest.raises(WireError) as err:
        it.offer(h, t, 10)
    assert err.value.reason == "norm_bound"


def test_late_after_forward():
    it = intake()
    it.partial()
    h, t, _ = update("d1")
    with pytest.raises(WireError) as err:
        it.offer(h, t, 10)
    assert err.value.reason == "late"


def test_wrong_shape_rejected_by_codec():
    it = intake()
    h, _, _ = update(codec="dense")
    with pytest.raises(WireError):
        it.offer(h, {"x.lora_A.weight": torch.zeros(3, 8)}, 10)
