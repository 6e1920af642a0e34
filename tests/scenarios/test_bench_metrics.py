"""The benchmark's numbers on hand-made report dicts (pure, no processes)."""

import math

import pytest

from scenarios.bench_metrics import (
    RUN_METRICS,
    accuracy_curve,
    bytes_per_device_round,
    device_standard_error,
    headroom_captured,
    mean_curve,
    mean_std,
    paired_differences,
    reference_metrics,
    run_metrics,
    summarize,
    worst_mean,
)


def row(rnd, device_acc, bytes_up, global_acc=None):
    accs = list(device_acc.values())
    return {"round": rnd, "accuracy": sum(accs) / len(accs) if accs else None,
            "device_accuracy": device_acc, "global_accuracy": global_acc,
            "bytes_up": bytes_up, "reported": len(device_acc)}


def report(rows, wall_s=12.5):
    return {"rounds": rows, "final": {"wall_s": wall_s, "finished": True}}


TEN = {f"d{i}": 0.5 + 0.05 * i for i in range(10)}  # 0.50 .. 0.95


def test_worst_ten_percent_takes_at_least_one_device():
    assert worst_mean([0.9, 0.2, 0.5]) == 0.2
    assert worst_mean(TEN.values()) == pytest.approx(0.5)
    # 11 devices: ceil(1.1) = 2 devices
    assert worst_mean([*TEN.values(), 0.1]) == pytest.approx((0.1 + 0.5) / 2)
    # 30 devices: exactly 3, no float rounding up to 4
    assert worst_mean([float(i) for i in range(30)]) == pytest.approx(1.0)
    assert worst_mean([]) is None


def test_best_is_max_round_final_is_last_round():
    rows = [row(1, {"a": 0.4, "b": 0.6}, 100),
            row(2, {"a": 0.9, "b": 0.7}, 100),
            row(3, {"a": 0.6, "b": 0.6}, 100)]
    m = run_metrics(report(rows))
    assert m["best_accuracy"] == pytest.approx(0.8)
    assert m["final_accuracy"] == pytest.approx(0.6)
    assert m["final_accuracy_se"] == 0.0  # both devices at 0.6 in the last round
    assert m["worst10_accuracy"] == pytest.approx(0.6)
    assert m["global_accuracy"] is None
    assert m["wall_s"] == 12.5


def test_final_skips_rounds_nobody_reported():
    rows = [row(1, {"a": 0.4}, 10), row(2, {}, 0)]
    m = run_metrics(report(rows))
    assert m["final_accuracy"] == pytest.approx(0.4)
    assert m["best_accuracy"] == pytest.approx(0.4)


def test_global_accuracy_is_the_last_rounds():
    rows = [row(1, {"a": 0.4}, 10, global_acc=0.3), row(2, {"a": 0.5}, 10, global_acc=0.45)]
    assert run_metrics(report(rows))["global_accuracy"] == pytest.approx(0.45)


def test_bytes_per_device_round_divides_by_reports():
    # round 1: 3 devices, 300 bytes; round 2: 1 device (others dropped out), 100 bytes
    rows = [row(1, {"a": 0.5, "b": 0.5, "c": 0.5}, 300), row(2, {"a": 0.5}, 100)]
    assert bytes_per_device_round(report(rows)) == pytest.approx(100.0)
    assert bytes_per_device_round(report([])) is None


def test_accuracy_curve_accumulates_bytes_per_device():
    rows = [row(1, {"a": 0.5, "b": 0.7}, 200), row(2, {"a": 0.8, "b": 0.8}, 400)]
    assert accuracy_curve(report(rows)) == [(1, pytest.approx(0.6), 100.0),
                                            (2, pytest.approx(0.8), 300.0)]


def test_sample_std_and_single_seed():
    stats = mean_std([1.0, 2.0, 3.0])
    assert stats["mean"] == 2.0 and stats["n"] == 3
    assert stats["std"] == pytest.approx(1.0)  # sample (n-1); population would be 0.816
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    assert mean_std([None, None]) == {"mean": None, "std": None, "n": 0}
    assert mean_std([1.0, None, math.nan])["n"] == 1


def test_summarize_skips_failed_runs_and_keeps_nulls_null():
    good = run_metrics(report([row(1, {"a": 0.6}, 10)]))
    better = run_metrics(report([row(1, {"a": 0.8}, 30)]))
    runs = [{"algorithm": "fedsa", "seed": 0, "metrics": good},
            {"algorithm": "fedsa", "seed": 1, "metrics": better},
            {"algorithm": "fedit", "seed": 0, "error": "boom"}]
    summary = summarize(runs, ["fedsa", "fedit"])
    assert summary["fedsa"]["final_accuracy"]["mean"] == pytest.approx(0.7)
    assert summary["fedsa"]["final_accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
    assert summary["fedsa"]["bytes_up_per_device_round"]["mean"] == pytest.approx(20.0)
    assert summary["fedsa"]["global_accuracy"] == {"mean": None, "std": None, "n": 0}
    assert summary["fedit"]["final_accuracy"]["n"] == 0


def test_mean_curve_over_seeds():
    curves = [[(1, 0.5, 10.0), (2, 0.7, 20.0)], [(1, 0.7, 30.0)]]
    (r1, m1, s1, b1), (r2, m2, s2, b2) = mean_curve(curves)
    assert (r1, r2) == (1, 2)
    assert m1 == pytest.approx(0.6) and s1 == pytest.approx(math.sqrt(0.02))
    assert b1 == pytest.approx(20.0)
    assert m2 == pytest.approx(0.7) and s2 == 0.0 and b2 == 20.0


def test_from_observed_metrics_to_bench_numbers():
    """report.round_row carries per-device and global accuracy through to the bench."""
    from fedsa_common.federation.config import FederationConfig
    from fedsa_common.wire.protocol import AnnounceHeader, Metrics
    from scenarios.monitor import Observations
    from scenarios.report import build_report

    def ann(rnd, t, status="running"):
        return AnnounceHeader(federation="f", round=rnd, version=rnd - 1, status=status,
                              selected={"a": ["x", "y"]},
                              config=FederationConfig().model_dump(mode="json"),
                              config_hash="h", deadline_s=10, issued_at=t, shared=[])

    obs = Observations()
    obs.announces = {1: ann(1, 100.0)}
    obs.finished = ann(1, 110.0, "finished")
    obs.metrics[1]["x"] = Metrics(federation="f", client="x", region="a", round=1,
                                  accuracy=0.4, n_test=5, bytes_up=50, global_accuracy=0.2)
    obs.metrics[1]["y"] = Metrics(federation="f", client="y", region="a", round=1,
                                  accuracy=0.8, n_test=5, bytes_up=150)
    rep = build_report(obs, scenario="s", algorithm="fedit", wall_s=3.0)
    (r1,) = rep["rounds"]
    assert r1["device_accuracy"] == {"x": 0.4, "y": 0.8}
    assert r1["global_accuracy"] == pytest.approx(0.2)  # mean over devices that reported it
    m = run_metrics(rep)
    assert m["worst10_accuracy"] == pytest.approx(0.4)
    assert m["bytes_up_per_device_round"] == pytest.approx(100.0)


def test_paired_differences_subtract_the_baseline_of_the_same_seed():
    def entry(label, seed, final, worst=0.5):
        return {"algorithm": "fedsa", "label": label, "seed": seed,
                "metrics": {"final_accuracy": final, "worst10_accuracy": worst}}

    runs = [entry("fedsa", 0, 0.70), entry("fedsa", 1, 0.80), entry("fedsa", 2, 0.60),
            entry("fedsa ft", 0, 0.72, 0.6), entry("fedsa ft", 1, 0.86, 0.5),
            {"algorithm": "fedsa", "label": "fedsa ft", "seed": 2, "error": "boom"},
            entry("fedsa ft", 3, 0.99)]  # a seed the baseline did not run
    (got,) = paired_differences(runs, {"fedsa ft": "fedsa"}).values()
    assert got["baseline"] == "fedsa" and got["seeds"] == [0, 1]
    assert got["final_accuracy"]["mean"] == pytest.approx(0.04)
    assert got["final_accuracy"]["std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert got["worst10_accuracy"]["mean"] == pytest.approx(0.05)
    assert got["final_accuracy"]["n"] == 2


def test_paired_differences_group_plain_runs_by_algorithm():
    runs = [{"algorithm": "fedsa", "seed": 0, "metrics": {"final_accuracy": 0.5,
                                                         "worst10_accuracy": None}},
            {"algorithm": "fedsa", "label": "fedsa x", "seed": 0,
             "metrics": {"final_accuracy": 0.4, "worst10_accuracy": 0.3}}]
    got = paired_differences(runs, {"fedsa x": "fedsa"})["fedsa x"]
    assert got["final_accuracy"]["mean"] == pytest.approx(-0.1)
    assert got["worst10_accuracy"] == {"mean": None, "std": None, "n": 0}


def test_standard_error_over_devices_uses_the_sample_std():
    # values 0.5, 0.7, 0.9: sample std 0.2, three devices
    assert device_standard_error([0.5, 0.7, 0.9]) == pytest.approx(0.2 / math.sqrt(3))
    assert device_standard_error(TEN.values()) == pytest.approx(
        mean_std(TEN.values())["std"] / math.sqrt(10))
    assert device_standard_error([0.7]) is None and device_standard_error([]) is None
    # 0.5 and 0.7: sample std sqrt(0.02), two devices (the NaN is no device)
    assert device_standard_error([0.5, math.nan, 0.7]) == pytest.approx(0.1)


def test_run_metrics_se_is_the_last_rounds():
    rows = [row(1, {"a": 0.0, "b": 1.0}, 10), row(2, {"a": 0.4, "b": 0.6}, 10)]
    assert run_metrics(report(rows))["final_accuracy_se"] == pytest.approx(
        math.sqrt(0.02) / math.sqrt(2))


def test_headroom_captured():
    assert headroom_captured(0.70, 0.60, 0.80) == pytest.approx(0.5)
    assert headroom_captured(0.80, 0.60, 0.80) == pytest.approx(1.0)
    assert headroom_captured(0.55, 0.60, 0.80) == pytest.approx(-0.25)  # worse than alone
    assert headroom_captured(0.90, 0.60, 0.80) == pytest.approx(1.5)  # beyond pooling
    assert headroom_captured(0.70, 0.60, 0.60) is None  # no headroom to capture
    assert headroom_captured(0.70, 0.60, 0.50) is None
    assert headroom_captured(None, 0.60, 0.80) is None


def test_reference_metrics_fill_the_run_columns():
    m = reference_metrics({"a": 0.4, "b": 0.8}, [(1, 0.5), (2, 0.7), (3, 0.6)], wall_s=4.0)
    assert set(m) == set(RUN_METRICS)
    assert m["final_accuracy"] == pytest.approx(0.6)
    assert m["best_accuracy"] == pytest.approx(0.7)
    assert m["worst10_accuracy"] == pytest.approx(0.4)
    assert m["final_accuracy_se"] == pytest.approx(device_standard_error([0.4, 0.8]))
    assert m["global_accuracy"] is None and m["bytes_up_per_device_round"] is None
    assert m["wall_s"] == 4.0
    flat = reference_metrics({"a": 0.5})  # majority: no curve
    assert flat["best_accuracy"] == flat["final_accuracy"] == 0.5


def test_rounds_to_fraction_is_the_first_round_near_the_final() -> None:
    from scenarios.bench_metrics import rounds_to_fraction

    assert rounds_to_fraction([(1, 0.5), (2, 0.7), (3, 0.66), (4, 0.72)]) == 2  # 0.684
    assert rounds_to_fraction([(1, 0.5), (2, 0.6), (3, 0.8)]) == 3
    assert rounds_to_fraction([(1, 0.9)]) == 1
    assert rounds_to_fraction([]) is None
