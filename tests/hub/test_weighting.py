"""Similarity weighting of updates (pure)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hub.weighting import agreement_factor, cosine, reference_direction


def t(*values: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(values[:2]), "b": torch.tensor(values[2:])}


def test_cosine_over_all_tensors() -> None:
    assert cosine(t(1, 0, 0, 0), t(1, 0, 0, 0)) == pytest.approx(1.0)
    assert cosine(t(1, 0, 0, 0), t(0, 0, 1, 0)) == pytest.approx(0.0)
    assert cosine(t(1, 2, 3, 4), t(-1, -2, -3, -4)) == pytest.approx(-1.0)
    assert cosine(t(0, 0, 0, 0), t(1, 0, 0, 0)) is None


def test_factor_follows_agreement() -> None:
    ref = t(1, 1, 1, 1)
    assert agreement_factor(t(2, 2, 2, 2), ref, 0.1) == pytest.approx(1.0)
    assert agreement_factor(t(-2, -2, -2, -2), ref, 0.1) == pytest.approx(0.1)
    assert agreement_factor(t(1, -1, 1, -1), ref, 0.1) == pytest.approx(0.5)
    assert agreement_factor(t(1, 2, 3, 4), None, 0.1) == 1.0


@given(st.lists(st.floats(-10, 10), min_size=4, max_size=4),
       st.lists(st.floats(-10, 10), min_size=4, max_size=4), st.floats(0.01, 1.0))
def test_factor_is_bounded(x: list[float], r: list[float], floor: float) -> None:
    f = agreement_factor(t(*x), t(*r), floor)
    assert floor <= f <= 1.0


def test_floor_must_be_positive() -> None:
    with pytest.raises(ValueError, match="floor"):
        agreement_factor(t(1, 1, 1, 1), t(1, 1, 1, 1), 0.0)


def test_reference_is_last_global_change() -> None:
    prev, cur = t(1, 1, 1, 1), t(2, 0, 1, 3)
    ref = reference_direction(prev, cur)
    assert ref is not None
    assert torch.equal(ref["a"], torch.tensor([1.0, -1.0]))
    assert reference_direction(None, cur) is None
