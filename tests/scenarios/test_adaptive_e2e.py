"""Importance-based adaptive split end to end: the scenario runner starts a real broker
(Mosquitto when installed, else embedded amqtt), 1 cloud hub, 2 regional hubs and 4 devices
(tiny random BERT in 4-bit) as OS processes for 3 rounds, while a spy subscribed to ``#``
keeps every payload.  Round 1 shares FedSA's A (warm-up); with threshold 0 every LoRA
tensor the devices reported is consistent enough, so the cloud decides to share A and B
from round 2 on, and announcements, updates and the report must follow that decision."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from fedsa_common.federation.split import role
from fedsa_common.process.atomic import read_json
from fedsa_common.wire.envelope import Envelope
from scenarios.config import load_scenario

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
OVERRIDES = ["rounds=3", "fedsa_lora.adaptive_split={enable: true, "
             "strategy: importance_based, threshold: 0.0}"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(tmp_path_factory, broker_spy):
    out = tmp_path_factory.mktemp("adaptive")
    report, spy = broker_spy.record_run(load_scenario(TINY, OVERRIDES), out)
    return report, spy, out


def test_run_completes_and_the_report_shows_each_decision(federation):
    report, _, _ = federation
    assert report["final"]["finished"] and report["final"]["rounds_completed"] == 3
    rows = report["rounds"]
    assert all(row["accepted"] == 4 for row in rows)
    assert {role(n) for n in rows[0]["shared"]} == {"lora_A"}  # warm-up: FedSA's split
    assert {role(n) for n in rows[0]["next_shared"]} == {"lora_A", "lora_B"}
    for before, after in pairwise(rows):
        assert after["shared"] == before["next_shared"]


def test_announcements_and_updates_carry_the_decided_set(federation):
    report, spy, _ = federation
    decided = {row["round"]: sorted(row["shared"]) for row in report["rounds"]}
    announced: dict[int, dict[str, tuple[int, ...]]] = {}
    updates: dict[int, list[Envelope]] = defaultdict(list)
    lora = set(decided[1]) | {n.replace("lora_A", "lora_B") for n in decided[1]}
    for _, env in spy.envelopes():
        header = env.header
        if header["kind"] == "announce" and header["status"] == "running":
            assert sorted(env.tensors) == sorted(header["shared"])  # only the shared values
            announced[header["round"]] = {n: tuple(t.shape) for n, t in env.tensors.items()}
        elif header["kind"] == "update":
            updates[header["round"]].append(env)
            assert set(header["importance"]) == lora  # every trained LoRA tensor
    assert {r: sorted(s) for r, s in announced.items()} == decided
    assert any(role(n) == "lora_B" for n in announced[2])
    assert sorted(updates) == [1, 2, 3]
    for rnd, envs in updates.items():  # updates carry the round's shared set, no more:
        for env in envs:
            assert set(spy.decode_update(env, announced[rnd])) == set(decided[rnd])


def test_checkpoint_resumes_the_split_and_keeps_every_global(federation):
    report, _, out = federation
    meta = read_json(out / "state" / "cloud" / "checkpoint.json")
    assert meta["shared"] == report["rounds"][-1]["next_shared"]
    assert meta["history"][-1]["next_shared"] == meta["shared"]
