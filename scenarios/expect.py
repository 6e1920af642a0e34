"""The ``expect:`` section of a scenario, checked against its report (pure)."""

from __future__ import annotations

from typing import Any

from scenarios.grammar import ExpectSection


def check_expectations(report: dict[str, Any], expect: ExpectSection) -> dict[str, Any]:
    """Which expectations held; ``failures`` says in words what did not."""
    final = report["final"]
    failures: list[str] = []
    if expect.rounds_completed is not None and final["rounds_completed"] < expect.rounds_completed:
        failures.append(f"rounds_completed: {final['rounds_completed']} < "
                        f"{expect.rounds_completed}")
    if expect.min_final_accuracy is not None:
        acc = final["accuracy"]
        if acc is None or acc < expect.min_final_accuracy:
            failures.append(f"min_final_accuracy: {acc} < {expect.min_final_accuracy}")
    if expect.no_accepted_update_lost and report["updates"]["lost"]:
        lost = report["updates"]["lost"]
        failures.append(f"no_accepted_update_lost: {len(lost)} acknowledged updates were "
                        f"neither applied nor dropped by rule: {', '.join(lost[:5])}")
    if expect.max_wall_s is not None and final["wall_s"] > expect.max_wall_s:
        failures.append(f"max_wall_s: {final['wall_s']:.0f}s > {expect.max_wall_s:.0f}s")
    if expect.max_dropped_fraction is not None:
        acked = max(1, report["updates"]["acknowledged"])
        frac = sum(report["updates"]["dropped"].values()) / acked
        if frac > expect.max_dropped_fraction:
            failures.append(f"max_dropped_fraction: {frac:.2f} > {expect.max_dropped_fraction}")
    if expect.max_step_norm is not None:
        longest = final.get("max_step_norm")
        if longest is None or longest > expect.max_step_norm:
            failures.append(f"max_step_norm: {longest} > {expect.max_step_norm}")
    if not final.get("finished", False):
        failures.append("the federation did not finish")
    return {"ok": not failures, "failures": failures,
            "checked": expect.model_dump(exclude_defaults=True)}
