"""Per-FedAvg end to end: the scenario runner starts a real broker, 1 cloud hub, 2 regional
hubs and 4 devices (tiny random BERT in 4-bit) as OS processes for one round with
``personalization.meta: per_fedavg``; every device takes its two batches a local step
(its update's sample count says so) and the hub accepts the updates, which carry FedSA's
A only, as without the option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_client.data import DataSpec, load_device_data
from edge_client.schedule import local_steps_for
from fedsa_common.federation.split import role
from scenarios.config import load_scenario

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
OVERRIDES = ["rounds=1", "fedsa_lora.personalization.meta=per_fedavg",
             "fedsa_lora.personalization.finetune_steps=1",
             "fedsa_lora.personalization.meta_inner_lr=0.05"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(tmp_path_factory, broker_spy):
    out = tmp_path_factory.mktemp("meta")
    scenario = load_scenario(TINY, OVERRIDES)
    report, spy = broker_spy.record_run(scenario, out)
    return report, spy, out, scenario


def test_devices_take_two_batches_a_step_and_send_shared_a_only(federation):
    report, spy, out, scenario = federation
    assert report["final"]["finished"] and report["final"]["rounds_completed"] == 1
    assert report["rounds"][0]["accepted"] == 4 and report["rounds"][0]["rejected"] == 0
    batch = scenario.training.batch_size
    expected = {}
    for worker in sorted((out / "workers").glob("worker-*.json")):
        for d in json.loads(worker.read_text())["devices"]:
            n = len(load_device_data(DataSpec.model_validate(d["data"])).train)
            sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
            batches = 2 * local_steps_for(scenario.training, n)  # inner + outer
            expected[d["client"]] = sum(sizes[i % len(sizes)] for i in range(batches))
    updates = [env for _, env in spy.envelopes() if env.header["kind"] == "update"]
    announce = next(env for _, env in spy.envelopes() if env.header["kind"] == "announce")
    assert announce.header["config"]["fedsa_lora"]["personalization"]["meta"] == "per_fedavg"
    assert {env.header["client"]: env.header["num_samples"] for env in updates} == expected
    shapes = {n: tuple(t.shape) for n, t in announce.tensors.items()}
    assert {role(n) for n in shapes} == {"lora_A", "head"}  # fedsa's A, the averaged head
    for env in updates:
        assert set(spy.decode_update(env, shapes)) == set(shapes)
