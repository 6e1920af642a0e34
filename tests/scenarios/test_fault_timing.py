"""When the scenario runner plays a fault (pure: the injector's ``due`` and the monitor's
record of the cloud's partial acknowledgements, no processes): from the start, from a
round's announcement, or from the cloud's acknowledgement of that round's N-th partial,
which is what aims a cloud kill after it took a partial of the round."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedsa_common.wire.protocol import Ack, encode_json
from scenarios.grammar import Fault
from scenarios.monitor import Monitor
from scenarios.runner import Cluster, FaultInjector


def injector(announced: dict[int, float], acked: dict[tuple[int, int], float]
             ) -> FaultInjector:
    return FaultInjector(Cluster(Path(".")), [], 100.0, announced.get, lambda _m: None,
                         lambda rnd, n: acked.get((rnd, n)))


def fault(**fields) -> Fault:
    return Fault.model_validate({"action": "kill", "target": "cloud", **fields})


def test_a_fault_is_due_from_the_start_the_announcement_or_the_nth_partial():
    faults = injector({2: 130.0}, {(2, 1): 133.5})
    assert faults.due(fault(at_s=5)) == 105.0
    assert faults.due(fault(at_round=2, at_s=1)) == 131.0
    assert faults.due(fault(at_round=2, after_partials=1, at_s=0.5)) == 134.0
    assert faults.due(fault(at_round=2, after_partials=2)) is None  # not yet: waits
    assert faults.due(fault(at_round=3)) is None


def test_after_partials_needs_the_round_it_counts():
    with pytest.raises(ValidationError, match="after_partials counts the partials of at_round"):
        fault(after_partials=1)


def test_the_monitor_times_each_partial_the_cloud_took_once_by_round():
    monitor = Monitor("mqtt://127.0.0.1:1", "f")  # never connected: handlers called directly

    def ack(region: str, pid: str, reason: str | None = None, accepted: bool = True) -> None:
        monitor._ack(f"fedsa/f/ack/cloud/{region}",
                     encode_json(Ack(kind="partial", id=pid, accepted=accepted, reason=reason)))

    ack("north", "north:2:0")
    ack("north", "north:2:0", reason="duplicate")  # a resend: the first time counts
    ack("south", "south:1:0", reason="late")  # acknowledged, not taken
    ack("south", "south:2:0", accepted=False, reason="non_finite")  # refused
    assert monitor.partial_acked(2, 1) is not None
    assert monitor.partial_acked(2, 2) is None and monitor.partial_acked(1, 1) is None
    first = monitor.partial_acked(2, 1)
    ack("south", "south:2:1")
    assert monitor.partial_acked(2, 1) == first
    second = monitor.partial_acked(2, 2)
    assert second is not None and second >= first
    assert monitor.obs.acked == {}  # device acknowledgements are counted apart
