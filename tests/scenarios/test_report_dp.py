"""report.json carries the epsilon the cloud's round summaries state, and only when the
federation runs with differential privacy."""

from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import AnnounceHeader, RoundSummary
from scenarios.monitor import Observations
from scenarios.report import build_report


def ann(rnd: int, t: float, status: str = "running", clip: float | None = None
        ) -> AnnounceHeader:
    return AnnounceHeader(federation="f", round=rnd, version=rnd - 1, status=status,
                          selected={"a": ["x"]}, config=FederationConfig().model_dump(mode="json"),
                          config_hash="h", deadline_s=10, issued_at=t, shared=[],
                          dp_clip_norm=clip)


def observed(epsilons: list[float | None]) -> Observations:
    obs = Observations()
    for rnd, eps in enumerate(epsilons, start=1):
        obs.announces[rnd] = ann(rnd, 100.0 + rnd)
        dp = {} if eps is None else {"dp_epsilon": eps, "dp_delta": 1e-5}
        obs.summaries[rnd] = RoundSummary(federation="f", round=rnd, version=rnd, mode="sync",
                                          selected=1, applied=[f"x:{rnd}"], applied_step=True,
                                          started_at=100.0 + rnd, duration_s=1.0, **dp)
    obs.finished = ann(len(epsilons), 200.0, "finished")
    return obs


def test_rounds_and_final_carry_epsilon_spent():
    report = build_report(observed([0.8, 1.3, 1.7]), scenario="s", algorithm="fedsa",
                          wall_s=1.0)
    assert [r["dp_epsilon"] for r in report["rounds"]] == [0.8, 1.3, 1.7]
    assert report["final"]["dp_epsilon"] == 1.7


def test_no_epsilon_keys_without_dp():
    report = build_report(observed([None, None]), scenario="s", algorithm="fedsa", wall_s=1.0)
    assert all("dp_epsilon" not in r for r in report["rounds"])
    assert "dp_epsilon" not in report["final"]


def test_rounds_carry_the_announced_clip_with_adaptive_clipping_only():
    obs = observed([0.8, 1.3])
    obs.announces[2] = ann(2, 102.0, clip=0.25)
    rows = build_report(obs, scenario="s", algorithm="fedsa", wall_s=1.0)["rounds"]
    assert "dp_clip_norm" not in rows[0] and rows[1]["dp_clip_norm"] == 0.25
