"""report.json from a scenario's observations (pure; no I/O)."""

from __future__ import annotations

from statistics import fmean
from typing import Any

from scenarios.monitor import Observations


def round_row(obs: Observations, rnd: int) -> dict[str, Any]:
    """One round as the broker saw it.

    ``accuracy`` is the mean personalized accuracy over reporting devices and
    ``device_accuracy`` the per-device values behind it (the benchmark's worst-10% needs
    them).  ``global_accuracy`` is the mean over devices that reported one (fedit and ffa
    do: the global LoRA with each device's own head, before local training), else None.
    """
    ann = obs.announces[rnd]
    nxt = obs.announces.get(rnd + 1) or obs.finished
    by_client = obs.metrics.get(rnd, {})
    metrics = list(by_client.values())
    global_accs = [m.global_accuracy for m in metrics if m.global_accuracy is not None]
    partials = obs.partials.get(rnd, [])
    return {
        "round": rnd,
        "participants": sum(len(v) for v in ann.selected.values()),
        "accepted": sum(p.count for p in partials),
        "rejected": sum(sum(p.rejected.values()) for p in partials),
        "bytes_up": sum(m.bytes_up for m in metrics),
        "bytes_down": sum(m.bytes_down for m in metrics),
        "accuracy": fmean(m.accuracy for m in metrics) if metrics else None,
        "device_accuracy": {c: by_client[c].accuracy for c in sorted(by_client)},
        "global_accuracy": fmean(global_accs) if global_accs else None,
        "reported": len(metrics),
        "duration_s": (nxt.issued_at - ann.issued_at) if nxt else None,
    }


def completed_rounds(obs: Observations) -> list[int]:
    """Rounds whose successor (or the final announcement) has been seen."""
    return [r for r in sorted(obs.announces) if (r + 1) in obs.announces
            or (obs.finished is not None and obs.finished.round >= r)]


def build_report(obs: Observations, *, scenario: str, algorithm: str, wall_s: float,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = [round_row(obs, r) for r in completed_rounds(obs)]
    last_acc = next((r["accuracy"] for r in reversed(rows) if r["accuracy"] is not None), None)
    report: dict[str, Any] = {
        "scenario": scenario,
        "algorithm": algorithm,
        "rounds": rows,
        "final": {
            "rounds_completed": len(rows),
            "accuracy": last_acc,
            "bytes_up_total": sum(r["bytes_up"] for r in rows),
            "bytes_down_total": sum(r["bytes_down"] for r in rows),
            "wall_s": wall_s,
            "finished": obs.finished is not None,
        },
    }
    if extra:
        report.update(extra)
    return report
