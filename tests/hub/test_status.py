"""``hub status``: rendering of retained messages (pure), and the CLI against a real broker."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from hub.cli import app
from hub.status import Snapshot, render

NOW = 1_000_000.0


def announce(status="running", rnd=3, issued_at=NOW - 20, deadline_s=60.0):
    return {"round": rnd, "version": rnd - 1, "status": status, "issued_at": issued_at,
            "deadline_s": deadline_s, "rounds": 10,
            "selected": {"north": ["n-0", "n-1"], "south": ["s-0"]}}


def status(online=True, rnd=2, **extra):
    return {"online": online, "round": rnd, "ts": NOW - 5,
            "counters": {"updates.accepted": 6, "rejected.stale": 1}, **extra}


def snapshot(**kw) -> Snapshot:
    snap = Snapshot("demo", statuses={"cloud/cloud": status(), "regional/north": status(rnd=3),
                                      "regional/south": status(rnd=3)},
                    announce=announce(), presence={"north/n-0": True, "north/n-1": True,
                                                    "south/s-0": False})
    for k, v in kw.items():
        setattr(snap, k, v)
    return snap


def test_healthy_federation():
    text, healthy = render(snapshot(), now=NOW)
    assert healthy
    assert "round 3 of 10 running for 20s (deadline 60s)" in text
    assert "participants: 3 selected (north 2, south 1)" in text
    assert "devices online: 2 of 3 seen" in text
    assert "regional/north" in text and "updates accepted 6, rejected 1" in text
    assert text.splitlines()[-1] == "health: ok"
    assert text.index("cloud/cloud") < text.index("regional/north")


def test_offline_hub_is_degraded():
    snap = snapshot()
    snap.statuses["regional/south"] = {"online": False}
    text, healthy = render(snap, now=NOW)
    assert not healthy
    assert "regional/south" in text and "OFFLINE" in text
    assert "health: DEGRADED: regional/south offline" in text


def test_overdue_round_is_degraded():
    text, healthy = render(snapshot(announce=announce(issued_at=NOW - 500)), now=NOW)
    assert not healthy and "round 3 overdue" in text


def test_finished_federation_is_healthy_even_with_hubs_gone():
    snap = snapshot(announce=announce(status="finished", rnd=10))
    snap.statuses["regional/south"] = {"online": False}
    text, healthy = render(snap, now=NOW)
    assert healthy and "finished after round 10 of 10" in text
    assert text.endswith("health: finished")


def test_cli_rejects_a_bad_federation_name():
    result = CliRunner().invoke(app, ["status", "--broker", "mqtt://127.0.0.1:1",
                                      "--federation", "a/b"])
    assert result.exit_code == 2


@pytest.mark.integration
def test_status_cli_reads_retained_messages(broker):
    from fedsa_common.net.transport import MqttSession
    from fedsa_common.wire.protocol import Topics

    topics = Topics("statusfed")
    with MqttSession(broker.url, client_id="status-test-pub") as pub:
        pub.connect()
        body = {"online": True, "role": "regional", "name": "north", "ts": time.time(),
                "round": 1, "counters": {"updates.accepted": 2}}
        pub.publish_raw(topics.status("regional", "north"), json.dumps(body).encode(),
                        retain=True)
        result = CliRunner().invoke(app, ["status", "--broker", broker.url,
                                          "--federation", "statusfed", "--timeout", "5"])
        assert result.exit_code == 0, result.output
        assert "regional/north" in result.stdout and "updates accepted 2" in result.stdout
        assert "health: ok" in result.stdout
        empty = CliRunner().invoke(app, ["status", "--broker", broker.url,
                                         "--federation", "nobody", "--timeout", "1"])
        assert empty.exit_code == 2
        assert "no retained status for federation 'nobody'" in empty.stderr
        pub.publish_raw(topics.status("regional", "north"), b"", retain=True)


def test_a_region_with_online_devices_and_no_hub_is_degraded():
    snap = snapshot(presence={"north/n-0": True, "west/w-0": True, "west/w-1": True,
                              "east/e-0": False})
    text, healthy = render(snap, now=NOW)
    assert not healthy
    assert ("region west: no regional hub serves it; its 2 online devices (w-0, w-1) cannot "
            "be selected") in text
    assert "region east" not in text  # no online device there: nothing waits on it
    assert "health: DEGRADED: region west has no regional hub" in text
    snap.statuses["regional/west"] = status(finished=True)  # a hub of an earlier run
    assert "region west: no regional hub" in render(snap, now=NOW)[0]


def test_intake_processes_are_listed_under_their_region():
    snap = snapshot(intake={"north": {1: status(rnd=3, name="north.1"),
                                      0: status(rnd=3, name="north.0")},
                            "west": {0: status(rnd=3)}})
    text, healthy = render(snap, now=NOW)
    assert healthy
    lines = text.splitlines()
    north = lines.index(next(x for x in lines if x.startswith("  regional/north ")))
    assert lines[north + 1].startswith("    intake 0 ") and "round 3" in lines[north + 1]
    assert lines[north + 2].startswith("    intake 1 ")
    assert "updates accepted 6, rejected 1" in lines[north + 2]
    assert lines[north + 3].startswith("  regional/south ")
    west = lines.index(next(x for x in lines if x.startswith("  regional/west ")))
    assert lines[west].endswith(" no status retained")
    assert lines[west + 1].startswith("    intake 0 ")


def test_an_offline_intake_process_is_degraded():
    snap = snapshot(intake={"north": {0: status(rnd=3), 1: {"online": False}}})
    text, healthy = render(snap, now=NOW)
    assert not healthy
    assert "    intake 1             OFFLINE" in text
    assert "health: DEGRADED: regional/north intake 1 offline" in text
    finished = snapshot(announce=announce(status="finished", rnd=10),
                        intake={"north": {1: {"online": False}}})
    assert render(finished, now=NOW)[1]
