"""report.json rows are computed from what the monitor saw on the broker."""

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import AnnounceHeader, Metrics, PartialHeader
from scenarios.monitor import Observations
from scenarios.report import build_report


def ann(rnd, t, status="running"):
    return AnnounceHeader(federation="f", round=rnd, version=rnd - 1, status=status,
                          selected={"a": ["x", "y"], "b": ["z"]},
                          config=FederationConfig().model_dump(mode="json"), config_hash="h",
                          deadline_s=10, issued_at=t, shared=[])


def test_report_rows():
    obs = Observations()
    obs.announces = {1: ann(1, 100.0), 2: ann(2, 110.0)}
    obs.finished = ann(2, 125.0, "finished")
    for rnd, accs in ((1, (0.5, 0.7)), (2, (0.8, 0.9))):
        for client, acc in zip(("x", "y"), accs, strict=True):
            obs.metrics[rnd][client] = Metrics(federation="f", client=client, region="a",
                                               round=rnd, accuracy=acc, n_test=10,
                                               bytes_up=100, bytes_down=1000)
        obs.partials[rnd].append(PartialHeader(federation="f", round=rnd, region="a",
                                               base_version=rnd - 1, count=2, weight=20,
                                               accepted=["x", "y"], rejected={"stale": 1}))
    report = build_report(obs, scenario="s", algorithm="fedsa", wall_s=30.0)
    r1, r2 = report["rounds"]
    assert r1["participants"] == 3 and r1["accepted"] == 2 and r1["rejected"] == 1
    assert abs(r1["accuracy"] - 0.6) < 1e-9 and r1["duration_s"] == 10.0
    assert r2["duration_s"] == 15.0 and r2["bytes_up"] == 200 and r2["bytes_down"] == 2000
    assert report["final"]["rounds_completed"] == 2
    assert abs(report["final"]["accuracy"] - 0.85) < 1e-9
    assert report["final"]["bytes_up_total"] == 400


def test_step_norms_reach_the_report_and_bound_the_expectation():
    from fedsa_common.wire.protocol import RoundSummary
    from scenarios.expect import check_expectations
    from scenarios.grammar import ExpectSection

    obs = Observations()
    obs.announces = {1: ann(1, 100.0), 2: ann(2, 110.0)}
    obs.finished = ann(2, 125.0, "finished")
    for rnd, norm in ((1, 0.04), (2, None)):  # round 2: no step applied
        obs.summaries[rnd] = RoundSummary(federation="f", round=rnd, version=1, mode="sync",
                                          selected=3, applied=[], applied_step=norm is not None,
                                          started_at=0.0, duration_s=1.0, step_norm=norm)
    assert "step_norm" not in obs.summaries[2].model_dump()  # summaries read as before
    report = build_report(obs, scenario="s", algorithm="fedsa", wall_s=30.0)
    assert report["rounds"][0]["step_norm"] == 0.04 and "step_norm" not in report["rounds"][1]
    assert report["final"]["max_step_norm"] == 0.04
    assert check_expectations(report, ExpectSection(max_step_norm=0.05))["ok"]
    failed = check_expectations(report, ExpectSection(max_step_norm=0.01))
    assert failed["failures"] == ["max_step_norm: 0.04 > 0.01"]
