"""Head sharing and local epochs end to end: the scenario runner starts a real broker
(Mosquitto when installed, else embedded amqtt), 1 cloud hub, 2 regional hubs and 4 devices
(tiny random BERT in 4-bit) as OS processes for 2 rounds with ``share_head_rounds: 1``
and ``share_b_rounds: 1``, half an epoch of local work (2 steps of 8 of a device's 32
texts, where ``local_steps`` would take 3) and a cosine schedule, while a spy subscribed
to ``#`` keeps every payload.  Round 1 shares FedSA's A, its B and the head; round 2
shares A only, and each device's head and B are its own again."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import pytest
import torch

from edge_client.data import DataSpec, load_device_data
from edge_client.schedule import local_steps_for
from fedsa_common.federation.split import role
from fedsa_common.process.atomic import read_tensors
from fedsa_common.wire.envelope import Envelope
from scenarios.config import load_scenario

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
OVERRIDES = ["rounds=2", "scenario.data.max_train=32",
             "fedsa_lora.personalization.share_head_rounds=1",
             "fedsa_lora.personalization.share_b_rounds=1",
             "training.local_epochs=0.5", "training.lr_schedule=cosine",
             "training.warmup_steps=1", "training.round_lr_decay=0.5"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(tmp_path_factory, broker_spy):
    out = tmp_path_factory.mktemp("levers")
    scenario = load_scenario(TINY, OVERRIDES)
    report, spy = broker_spy.record_run(scenario, out)
    return report, spy, out, scenario


def roles(names) -> set[str]:
    return {role(n) for n in names}


def test_round_one_shares_b_and_the_head_and_round_two_does_not(federation):
    report, spy, _, _ = federation
    assert report["final"]["finished"] and report["final"]["rounds_completed"] == 2
    rows = report["rounds"]
    assert all(row["accepted"] == 4 and row["rejected"] == 0 for row in rows)
    assert roles(rows[0]["shared"]) == {"lora_A", "lora_B", "head"}
    assert roles(rows[0]["next_shared"]) == roles(rows[1]["shared"]) == {"lora_A"}
    announced: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    updates: dict[int, list[Envelope]] = defaultdict(list)
    for _, env in spy.envelopes():
        h = env.header
        if h["kind"] == "announce":
            assert sorted(env.tensors) == sorted(h["shared"])
            announced[(h["round"], h["status"])] = {n: tuple(t.shape)
                                                    for n, t in env.tensors.items()}
        elif h["kind"] == "update":
            updates[h["round"]].append(env)
    assert roles(announced[(1, "running")]) == {"lora_A", "lora_B", "head"}
    assert roles(announced[(2, "running")]) == {"lora_A"}
    assert roles(announced[(2, "finished")]) == {"lora_A"}  # K < rounds: the head is local
    assert sorted(updates) == [1, 2] and all(len(v) == 4 for v in updates.values())
    for rnd, envs in updates.items():  # each update decodes against its round's set only
        for env in envs:
            got = spy.decode_update(env, announced[(rnd, "running")])
            assert roles(got) == ({"lora_A", "lora_B", "head"} if rnd == 1 else {"lora_A"})
            if rnd == 1:
                assert any(role(n) == "head" and bool(t.any()) for n, t in got.items())
                assert any(role(n) == "lora_B" and bool(t.any()) for n, t in got.items())


def test_devices_do_half_an_epoch_of_their_own_data(federation):
    _, spy, out, scenario = federation
    n_train = {}
    for worker in sorted((out / "workers").glob("worker-*.json")):
        for d in json.loads(worker.read_text())["devices"]:
            n_train[d["client"]] = len(load_device_data(DataSpec.model_validate(d["data"])).train)
    batch = scenario.training.batch_size
    expected = {}
    for client, n in n_train.items():
        sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
        steps = local_steps_for(scenario.training, n)
        expected[client] = sum(sizes[i % len(sizes)] for i in range(steps))
    seen = {env.header["client"]: env.header["num_samples"] for _, env in spy.envelopes()
            if env.header["kind"] == "update" and env.header["round"] == 1}
    assert seen == expected
    assert set(seen.values()) != {scenario.training.local_steps * batch}  # epochs decided


def test_each_device_keeps_its_own_head_and_b_after_the_shared_rounds(federation):
    _, _, out, _ = federation
    heads = {}
    for local in sorted((out / "state" / "devices").glob("*/local.safetensors")):
        values = read_tensors(local)
        own = {n: t for n, t in values.items() if role(n) in ("head", "lora_B")}
        assert roles(values) == {"lora_B", "head"}
        heads[local.parent.name] = torch.cat([t.flatten() for _, t in sorted(own.items())])
    assert len(heads) == 4
    for a, b in combinations(heads.values(), 2):
        assert not torch.equal(a, b)
