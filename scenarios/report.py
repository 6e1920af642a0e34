"""report.json from a scenario's observations (pure; no I/O)."""

from __future__ import annotations

from collections import Counter
from statistics import fmean
from typing import Any

from scenarios.monitor import Observations


def applied_ids(obs: Observations) -> set[str]:
    return {uid for s in obs.summaries.values() for uid in s.applied}


def dropped_ids(obs: Observations) -> dict[str, str]:
    return {uid: why for s in obs.summaries.values() for uid, why in s.dropped.items()}


def round_row(obs: Observations, rnd: int, applied: set[str] | None = None) -> dict[str, Any]:
    """One round as the broker saw it.

    ``accuracy`` is the mean personalized accuracy over reporting devices and
    ``device_accuracy`` the per-device values behind it (the benchmark's worst-10% needs
    them).  ``global_accuracy`` is the mean over devices that reported one (fedit and ffa
    do: the global LoRA with each device's own head, before local training), else None.
    A causal language model's devices report exact match as accuracy, and the row adds
    their mean held-out ``loss`` and ``perplexity`` (and ``device_loss``).
    """
    ann = obs.announces[rnd]
    nxt = obs.announces.get(rnd + 1) or obs.finished
    by_client = obs.metrics.get(rnd, {})
    metrics = list(by_client.values())
    global_accs = [m.global_accuracy for m in metrics if m.global_accuracy is not None]
    partials = obs.partials.get(rnd, [])
    summary = obs.summaries.get(rnd)
    applied = applied_ids(obs) if applied is None else applied
    wasted = [m.train_s for c, m in by_client.items() if f"{c}:{rnd}" not in applied]
    latest: dict[str, float] = {}
    for r in sorted(k for k in obs.metrics if k <= rnd):
        latest.update({c: m.accuracy for c, m in obs.metrics[r].items()})
    row: dict[str, Any] = {
        "round": rnd,
        "participants": sum(len(v) for v in ann.selected.values()),
        "accepted": (len(summary.applied) if summary is not None
                     else sum(p.count for p in partials)),
        "rejected": (sum(summary.rejected.values()) if summary is not None
                     else sum(sum(p.rejected.values()) for p in partials)),
        "dropped": dict(Counter(summary.dropped.values())) if summary is not None else {},
        "wasted_train_s": sum(wasted),
        "bytes_up": sum(m.bytes_up for m in metrics),
        "bytes_down": sum(m.bytes_down for m in metrics),
        "accuracy": fmean(m.accuracy for m in metrics) if metrics else None,
        # every device's most recent accuracy: the meaningful curve when rounds are
        # asynchronous server steps that only some devices report in
        "accuracy_latest": fmean(latest.values()) if latest else None,
        "device_accuracy": {c: by_client[c].accuracy for c in sorted(by_client)},
        "global_accuracy": fmean(global_accs) if global_accs else None,
        "reported": len(metrics),
        "duration_s": (nxt.issued_at - ann.issued_at) if nxt else None,
    }
    losses = [m.loss for m in metrics if m.loss is not None]
    if losses:  # a causal language model: held-out loss and perplexity (accuracy: exact match)
        row["loss"] = fmean(losses)
        row["perplexity"] = fmean(m.perplexity for m in metrics if m.perplexity is not None)
        row["device_loss"] = {c: by_client[c].loss for c in sorted(by_client)}
    if summary is not None and summary.dp_epsilon is not None:  # differential privacy on
        row["dp_epsilon"] = summary.dp_epsilon
    if ann.dp_clip_norm is not None:  # adaptive clipping: the clip the round announced
        row["dp_clip_norm"] = ann.dp_clip_norm
    if summary is not None and summary.shared is not None:  # adaptive split on
        row["shared"] = summary.shared
        row["next_shared"] = summary.next_shared
    if summary is not None and summary.step_norm is not None:  # a step was applied
        row["step_norm"] = summary.step_norm
    return row


def completed_rounds(obs: Observations) -> list[int]:
    """Rounds whose successor (or the final announcement) has been seen."""
    return [r for r in sorted(obs.announces) if (r + 1) in obs.announces
            or (obs.finished is not None and obs.finished.round >= r)]


def update_accounting(obs: Observations) -> dict[str, Any]:
    """Every update a regional hub acknowledged must be applied or dropped by a stated rule;
    what is neither is lost.  Updates acknowledged after the cloud's last round had started
    are counted apart: the federation may have ended before they could reach it."""
    applied, dropped = applied_ids(obs), dropped_ids(obs)
    last = obs.summaries[max(obs.summaries)].started_at if obs.summaries else float("inf")
    unaccounted = [uid for uid in obs.acked if uid not in applied and uid not in dropped]
    lost = [u for u in unaccounted if obs.acked[u] < last]
    return {
        "acknowledged": len(obs.acked),
        "applied": len(applied),
        "dropped": dict(Counter(dropped.values())),
        "lost": sorted(lost),
        "unprocessed_at_finish": sorted(set(unaccounted) - set(lost)),
    }


def time_to_target(obs: Observations, rows: list[dict[str, Any]], t0: float,
                   target: float | None, key: str = "accuracy") -> float | None:
    if target is None:
        return None
    for row in rows:
        acc = row[key]
        done = obs.announces.get(row["round"] + 1) or obs.finished
        if acc is not None and acc >= target and done is not None:
            return done.issued_at - t0
    return None


def online_timeline(obs: Observations, t0: float) -> dict[str, list[tuple[float, bool]]]:
    out: dict[str, list[tuple[float, bool]]] = {}
    for t, client, online in sorted(obs.presence):
        events = out.setdefault(client, [])
        if not events or events[-1][1] != online:
            events.append((round(t - t0, 2), online))
    return out


def build_report(obs: Observations, *, scenario: str, algorithm: str, wall_s: float,
                 t0: float = 0.0, target_accuracy: float | None = None, mode: str = "sync",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``final.accuracy`` is the last round's mean personalized accuracy; in asynchronous
    mode, where a server step hears from only a few devices, it is the mean of every
    device's latest accuracy instead (``accuracy_latest``)."""
    applied = applied_ids(obs)
    rows = [round_row(obs, r, applied) for r in completed_rounds(obs)]
    key = "accuracy_latest" if mode == "async" else "accuracy"
    last_acc = next((r[key] for r in reversed(rows) if r[key] is not None), None)
    durations = sorted(r["duration_s"] for r in rows if r["duration_s"] is not None)
    dropped: Counter[str] = Counter()
    for r in rows:
        dropped.update(r["dropped"])
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
            "dropped": dict(dropped),
            "wasted_train_s": sum(r["wasted_train_s"] for r in rows),
            "round_duration_s": {
                "p50": _quantile(durations, 0.5), "p90": _quantile(durations, 0.9),
                "max": durations[-1] if durations else None},
            "time_to_target_s": time_to_target(obs, rows, t0, target_accuracy, key),
            "target_accuracy": target_accuracy,
        },
        "updates": update_accounting(obs),
        "online_timeline": online_timeline(obs, t0),
    }
    spent = [r["dp_epsilon"] for r in rows if "dp_epsilon" in r]
    if spent:
        report["final"]["dp_epsilon"] = spent[-1]
    losses = [r["loss"] for r in rows if "loss" in r]
    if losses:  # a causal language model: the last round's held-out loss and perplexity
        last = next(r for r in reversed(rows) if "loss" in r)
        report["final"]["loss"] = last["loss"]
        report["final"]["perplexity"] = last["perplexity"]
    steps = [r["step_norm"] for r in rows if "step_norm" in r]
    if steps:  # how far the global moved in one round at most (poisoning shows here)
        report["final"]["max_step_norm"] = max(steps)
    if extra:
        report.update(extra)
    return report


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
