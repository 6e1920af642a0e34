"""Adaptive split decisions (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsa_common.adaptive_split import (
    consistency,
    importance_based_shared,
    layer_of,
    layer_wise_shared,
    normalize_importance,
)

NAMES = [f"bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.weight"
         for i in range(4) for m in ("query", "value") for ab in ("A", "B")]
NAMES.append("classifier.weight")


def test_layer_of() -> None:
    assert layer_of(NAMES[0]) == 0
    assert layer_of("bert.encoder.layer.11.attention.self.query.lora_B.weight") == 11
    assert layer_of("classifier.weight") is None


def test_layer_wise_lower_layers_share_both_upper_share_a() -> None:
    rules = [(0, 1, frozenset({"lora_A", "lora_B"})), (2, 3, frozenset({"lora_A"}))]
    shared = layer_wise_shared(NAMES, rules)
    assert "classifier.weight" not in shared
    for n in NAMES[:-1]:
        layer = layer_of(n)
        expected = layer <= 1 or ".lora_A." in n
        assert (n in shared) == expected, n


def test_layer_wise_uncovered_layers_use_default() -> None:
    shared = layer_wise_shared(NAMES, [(0, 0, frozenset())])
    assert not [n for n in shared if layer_of(n) == 0]
    assert all(".lora_A." in n for n in shared)
    assert len(shared) == 6  # A of query and value in layers 1..3


def test_normalize_is_per_role_and_scale_free() -> None:
    a, b = NAMES[0], NAMES[1]
    assert normalize_importance({a: 2.0, b: 5.0}) == {a: 1.0, b: 1.0}
    x = normalize_importance({NAMES[0]: 1.0, NAMES[2]: 3.0})
    y = normalize_importance({NAMES[0]: 10.0, NAMES[2]: 30.0})
    assert x == pytest.approx(y) and x[NAMES[0]] == pytest.approx(0.25)


def test_normalize_ignores_non_finite() -> None:
    x = normalize_importance({NAMES[0]: float("nan"), NAMES[2]: 2.0})
    assert x == {NAMES[0]: 0.0, NAMES[2]: 1.0}


@given(st.lists(st.floats(0.01, 100), min_size=2, max_size=8))
def test_identical_relative_importance_is_fully_consistent(scales: list[float]) -> None:
    base = {n: float(i + 1) for i, n in enumerate(NAMES[:-1])}
    reports = [{n: v * s for n, v in base.items()} for s in scales]
    assert all(c == pytest.approx(1.0) for c in consistency(reports).values())


def test_divergent_tensor_is_kept_local() -> None:
    a0, a1 = NAMES[0], NAMES[2]  # two A tensors
    agree = [{a0: 1.0, a1: 1.0}, {a0: 1.1, a1: 0.9}, {a0: 0.95, a1: 1.05}]
    shared = importance_based_shared(agree, [a0, a1], 0.5, current=[])
    assert shared == sorted([a0, a1])
    disagree = [{a0: 1.0, a1: 0.0}, {a0: 0.0, a1: 1.0}, {a0: 1.0, a1: 0.0}]
    assert importance_based_shared(disagree, [a0, a1], 0.5, current=[]) == []


def test_one_report_keeps_current_split() -> None:
    assert importance_based_shared([{NAMES[0]: 1.0}], NAMES, 0.5, current=[NAMES[2]]) == [
        NAMES[2]]


def test_head_is_never_a_candidate() -> None:
    reports = [{n: 1.0 for n in NAMES}, {n: 1.0 for n in NAMES}]
    shared = importance_based_shared(reports, NAMES, 0.0, current=[])
    assert "classifier.weight" not in shared and len(shared) == len(NAMES) - 1
