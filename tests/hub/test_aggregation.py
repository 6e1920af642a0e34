"""Hierarchical (regional partial sums, combined at the cloud) equals flat weighted FedAvg."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.aggregation import RunningSum, apply_server_update, fedavg

SHAPES = {"a": (4, 6), "b": (3,)}


def random_delta(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_hierarchical_equals_flat(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    regions = [
        [(random_delta(g), float(torch.randint(1, 500, (1,), generator=g))) for _ in range(n)]
        for n in sizes
    ]
    cloud = RunningSum.zeros(SHAPES)
    for updates in regions:
        regional = RunningSum.zeros(SHAPES)
        for delta, w in updates:
            regional.add(delta, w)
        # the partial travels as float32, as on the wire
        cloud.merge(regional.as_float32(), regional.weight, regional.count)
    flat = fedavg([u for updates in regions for u in updates])
    hier = cloud.mean()
    assert cloud.count == sum(sizes)
    for n in SHAPES:
        torch.testing.assert_close(hier[n], flat[n], rtol=1e-5, atol=1e-6)


def test_weights_matter():
    one = {"a": torch.ones(4, 6), "b": torch.ones(3)}
    zero = {"a": torch.zeros(4, 6), "b": torch.zeros(3)}
    mean = fedavg([(one, 3.0), (zero, 1.0)])
    torch.testing.assert_close(mean["a"], torch.full((4, 6), 0.75))


def test_server_update_applies_mean_delta():
    g = {"a": torch.ones(2)}
    out = apply_server_update(g, {"a": torch.tensor([1.0, -1.0])}, server_lr=0.5)
    torch.testing.assert_close(out["a"], torch.tensor([1.5, 0.5]))


def test_rejects_bad_weight_and_names():
    s = RunningSum.zeros(SHAPES)
    import pytest

    with pytest.raises(ValueError):
        s.add(random_delta(torch.Generator().manual_seed(0)), 0.0)
    with pytest.raises(ValueError):
        s.add({"a": torch.zeros(4, 6)}, 1.0)
