"""End to end against a real broker process (Mosquitto when installed, else embedded amqtt):
the scenario runner starts 1 cloud hub, 2 regional hubs and 4 devices (tiny random BERT in
4-bit) as OS processes for 5 rounds, while a spy subscribed to ``#`` keeps every payload.
That run is the session's ``live_tiny_run`` (conftest.py), which test_ops_live.py reads
too; the hostile-messages test plays a run of its own."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsa_common.federation.split import role
from fedsa_common.net.transport import MqttSession
from fedsa_common.process.atomic import read_tensors
from fedsa_common.wire.envelope import unpack
from fedsa_common.wire.errors import WireError
from scenarios.config import load_scenario
from scenarios.runner import run_scenario

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(live_tiny_run) -> tuple[dict[str, Any], Any, Path]:
    return live_tiny_run.report, live_tiny_run.spy, live_tiny_run.out


def test_rounds_complete_with_all_updates(federation):
    report, _, _ = federation
    assert report["final"]["rounds_completed"] == 5
    assert len(report["rounds"]) == 5
    assert report["final"]["finished"]
    for row in report["rounds"]:
        assert row["participants"] == 4
        assert row["accepted"] == 4
        assert row["rejected"] == 0
        assert row["bytes_up"] > 0
        assert 0.0 <= row["accuracy"] <= 1.0


# What may travel under the defaults: A and the classification head (share_head_rounds
# unset = all); B never.
SHARED_ROLES = {"lora_A", "head"}


def test_no_b_tensor_ever_leaves_a_device(federation):
    _, spy, _ = federation
    envelopes = spy.envelopes()
    shapes = {env.header["round"]: {n: tuple(t.shape) for n, t in env.tensors.items()}
              for _, env in envelopes
              if env.header["kind"] == "announce" and env.header["status"] == "running"}
    assert {role(n) for s in shapes.values() for n in s} == SHARED_ROLES
    kinds = defaultdict(int)
    distinct = defaultdict(set)  # a legitimate resend travels again under the same id
    for topic, env in envelopes:
        h = env.header
        kinds[h["kind"]] += 1
        if h["kind"] in ("update", "partial"):
            distinct[h["kind"]].add((h.get("client"), h["region"], h["round"], h.get("seq")))
        names = list(env.tensors)
        if env.header["kind"] == "update":  # decodes against the announced shapes
            names = list(spy.decode_update(env, shapes[env.header["round"]]))
        for name in names:
            assert role(name) in SHARED_ROLES, f"{name} seen on {topic}"
    # 6 announcements (5 rounds + finished), 20 device updates, 10 regional partials, each
    # update and partial sent at least once (more when an acknowledgement was late)
    assert kinds["announce"] >= 6
    assert len(distinct["update"]) == 20 and kinds["update"] >= 20
    assert len(distinct["partial"]) == 10 and kinds["partial"] >= 10


def test_global_a_changes_between_rounds(federation):
    _, spy, _ = federation
    announces = {}
    for _, env in spy.envelopes():
        if env.header["kind"] == "announce":
            announces[(env.header["round"], env.header["status"])] = env.tensors
    r1, r2 = announces[(1, "running")], announces[(2, "running")]
    assert set(r1) == set(r2) and r1
    assert {role(n) for n in r1} == SHARED_ROLES
    assert any(not torch.equal(r1[n], r2[n]) for n in r1 if role(n) == "lora_A")


def test_device_b_stays_private_and_differs(federation):
    _, _, out = federation
    states = {p.name: read_tensors(p / "local.safetensors")
              for p in sorted((out / "state" / "devices").iterdir())}
    assert len(states) == 4
    clients = sorted(states)
    b_names = [n for n in states[clients[0]] if role(n) == "lora_B"]
    assert b_names
    for i, a in enumerate(clients):
        assert any(float(states[a][n].abs().sum()) > 0 for n in b_names)  # trained from zero
        for b in clients[i + 1:]:
            assert any(not torch.equal(states[a][n], states[b][n]) for n in b_names)


def test_hostile_messages_are_refused_and_round_still_completes(tmp_path):
    """Garbage, truncated and forged updates on the real topics are counted and logged; the
    federation still finishes with every genuine update."""
    from fedsa_common.net.broker import start_broker
    from fedsa_common.wire.protocol import Topics

    config = load_scenario(TINY)
    with start_broker("auto") as broker:
        attacker = MqttSession(broker.url, client_id="attacker", clean_session=True)
        attacker.connect()
        topics = Topics(config.federation.name)
        stop = threading.Event()

        def attack() -> None:
            n = 0
            while not stop.is_set() and n < 200:
                n += 1
                target = topics.update("north", "north-0")
                attacker.publish_raw(target + "/0", b"FSC\x01garbage" * (n % 7))
                attacker.publish(topics.update("north", "north-1"), b"FSA\x01\x00\x00\x00\x05{}")
                attacker.publish(topics.partial("south"), bytes(range(256)) * 3)
                time.sleep(0.05)

        thread = threading.Thread(target=attack)
        thread.start()
        try:
            report = run_scenario(config, tmp_path, broker.url, echo=lambda _: None)
        finally:
            stop.set()
            thread.join()
            attacker.close()
    assert report["final"]["rounds_completed"] == 2
    assert all(row["accepted"] == 4 for row in report["rounds"])
    logs = (tmp_path / "logs" / "regional-north.log").read_text()
    assert "rejected" in logs


def test_wire_error_is_the_only_failure_of_unpack():
    with pytest.raises(WireError):
        unpack(b"FSA\x01\x00\x00\x00\x05{}", max_bytes=100)
