"""``scenarios/expect.py``: each expectation of a scenario's ``expect:`` section holds on a
report that meets it and fails, saying which bound in words, on one that misses it (a check
that could never fail would let every scenario pass)."""

from __future__ import annotations

from typing import Any

import pytest

from scenarios.expect import check_expectations
from scenarios.grammar import ExpectSection

BOUNDS = {"rounds_completed": 3, "min_final_accuracy": 0.6, "no_accepted_update_lost": True,
          "max_wall_s": 100.0, "max_dropped_fraction": 0.25, "max_step_norm": 0.5}


def report(**final: Any) -> dict[str, Any]:
    """A report that meets every bound in BOUNDS; ``final``/``lost``/``dropped`` change it."""
    lost = final.pop("lost", [])
    dropped = final.pop("dropped", {"late": 1})
    return {"final": {"rounds_completed": 3, "accuracy": 0.7, "wall_s": 50.0,
                      "max_step_norm": 0.1, "finished": True, **final},
            "updates": {"acknowledged": 8, "lost": lost, "dropped": dropped}}


def test_a_report_within_every_bound_passes() -> None:
    result = check_expectations(report(), ExpectSection(**BOUNDS))
    assert result == {"ok": True, "failures": [], "checked": BOUNDS}


@pytest.mark.parametrize(("changed", "failure"), [
    ({"rounds_completed": 2}, "rounds_completed: 2 < 3"),
    ({"accuracy": 0.5}, "min_final_accuracy: 0.5 < 0.6"),
    ({"accuracy": None}, "min_final_accuracy: None < 0.6"),
    ({"lost": ["d1:2", "d3:2"]}, "no_accepted_update_lost: 2 acknowledged updates were "
                                 "neither applied nor dropped by rule: d1:2, d3:2"),
    ({"wall_s": 101.0}, "max_wall_s: 101s > 100s"),
    ({"dropped": {"late": 2, "stale": 1}}, "max_dropped_fraction: 0.38 > 0.25"),
    ({"max_step_norm": 0.6}, "max_step_norm: 0.6 > 0.5"),
    ({"max_step_norm": None}, "max_step_norm: None > 0.5"),  # no round applied a step
    ({"finished": False}, "the federation did not finish"),
])
def test_each_expectation_fails_on_a_report_that_misses_it(changed, failure) -> None:
    result = check_expectations(report(**changed), ExpectSection(**BOUNDS))
    assert not result["ok"]
    assert result["failures"] == [failure]


def test_unset_expectations_are_not_checked() -> None:
    """Only ``finished`` is always required: a scenario without bounds passes a report
    that would miss every one of them."""
    bad = report(rounds_completed=0, accuracy=None, lost=["d1:1"], wall_s=1e6,
                 dropped={"late": 8}, max_step_norm=None)
    result = check_expectations(bad, ExpectSection())
    assert result == {"ok": True, "failures": [], "checked": {}}
