"""A personal head end to end: the scenario runner starts a real broker, 1 cloud hub, 2
regional hubs and 4 devices (tiny random BERT in 4-bit) as OS processes for two rounds with
``personalization.personal_head: true``.  Nothing of the personal head crosses the broker
(every frame is recorded), the updates carry FedSA's A and the shared head as without the
option, and each device keeps a trained personal head in its state directory, from which
the peft export folds it into one head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsa_common.federation.split import role
from fedsa_common.process.atomic import read_tensors
from scenarios.config import load_scenario

TINY = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
OVERRIDES = ["rounds=2", "fedsa_lora.personalization.personal_head=true"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(tmp_path_factory, broker_spy):
    out = tmp_path_factory.mktemp("personal-head")
    report, spy = broker_spy.record_run(load_scenario(TINY, OVERRIDES), out)
    return report, spy, out


def test_the_personal_head_stays_on_the_device(federation) -> None:
    report, spy, out = federation
    assert report["final"]["finished"] and report["final"]["rounds_completed"] == 2
    assert all(r["accepted"] == 4 and r["rejected"] == 0 for r in report["rounds"])
    # the configuration names the option; no frame names one of its tensors
    assert not any(b"personal_head." in payload for _, payload in spy.frames)
    assert not any(role(n) == "personal" for _, env in spy.envelopes() for n in env.tensors)
    announce = next(env for _, env in spy.envelopes() if env.header["kind"] == "announce")
    shapes = {n: tuple(t.shape) for n, t in announce.tensors.items()}
    assert {role(n) for n in shapes} == {"lora_A", "head"}
    updates = [env for _, env in spy.envelopes() if env.header["kind"] == "update"]
    assert len(updates) == 8
    for env in updates:
        assert set(spy.decode_update(env, shapes)) == set(shapes)
    states = sorted((out / "state" / "devices").iterdir())
    assert len(states) == 4
    for state in states:
        local = read_tensors(state / "local.safetensors")
        personal = {n: t for n, t in local.items() if role(n) == "personal"}
        assert set(personal) == {"personal_head.weight", "personal_head.bias"}
        assert all(torch.count_nonzero(t) > 0 for t in personal.values())


def test_the_peft_export_folds_it_into_the_head(federation, tmp_path) -> None:
    from edge_client.export import export_peft

    _, _, out = federation
    state = sorted((out / "state" / "devices").iterdir())[0]
    result = export_peft(state, tmp_path / "peft")
    written = read_tensors(result.weights)
    assert not any("personal" in n for n in written)
    assert any("classifier" in n for n in written)
