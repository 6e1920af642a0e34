"""Adaptive split decisions (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsa_common.federation.adaptive_split import (
    ImportanceStats,
    consistency,
    decide_shared,
    importance_based_shared,
    initial_split,
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


# summed reports (what regions forward and the cloud decides on) -------------------------
report_values = st.dictionaries(st.sampled_from(NAMES[:-1]), st.floats(0, 1e3), min_size=1)


@given(st.lists(report_values, min_size=1, max_size=8), st.integers(0, 8))
def test_summed_reports_give_the_same_consistency(reports, cut) -> None:
    """Two regions' sums merged equal one sum of all reports, and its consistency equals
    consistency(reports) on the raw reports."""
    north, south = ImportanceStats(), ImportanceStats()
    for i, r in enumerate(reports):
        (north if i < cut else south).add_report(r)
    north.merge(ImportanceStats.from_json(south.to_json()))
    assert north.reports == len(reports)
    expected = consistency(reports)
    got = north.consistency()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6)


def test_decision_from_sums_follows_agreement_and_keeps_a_split() -> None:
    a0, a1, b0 = NAMES[0], NAMES[2], NAMES[1]
    stats = ImportanceStats()
    for r in ({a0: 1.0, a1: 0.0, b0: 1.0}, {a0: 0.0, a1: 1.0, b0: 2.0}):
        stats.add_report(r)
    # A tensors disagree (each device puts all A importance on a different one); B agrees
    assert decide_shared(stats, [a0, a1, b0], 0.5, current=[a0, a1]) == [b0]
    # nothing consistent enough: keep the current split rather than share nothing
    assert decide_shared(stats, [a0, a1], 0.5, current=[a0, a1]) == [a0, a1]
    one = ImportanceStats()
    one.add_report({a0: 1.0, a1: 1.0})
    assert decide_shared(one, [a0, a1], 0.0, current=[a1]) == [a1]


def test_initial_split_is_the_algorithms_or_the_layer_rules() -> None:
    assert initial_split(NAMES, "fedsa") == sorted(n for n in NAMES if ".lora_A." in n)
    rules = [(0, 1, frozenset({"lora_A", "lora_B"}))]
    fedsa = initial_split(NAMES, "fedsa", rules)
    assert fedsa == sorted(n for n in NAMES if layer_of(n) is not None
                           and (layer_of(n) <= 1 or ".lora_A." in n))
    # layers no rule covers keep the algorithm's roles: fedit's A and B
    assert initial_split(NAMES, "fedit", [(0, 1, frozenset())]) == sorted(
        n for n in NAMES if layer_of(n) is not None and layer_of(n) >= 2)
