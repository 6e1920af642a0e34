"""A malicious device's poisoned update, and its attack surviving the worker spec file."""

import json

import pytest
import torch

from edge_client.attack import Attack, poison
from edge_client.worker import read_worker_spec


def test_sign_flip_and_scale():
    delta = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}
    flipped = poison(delta, Attack("sign_flip", 10.0))
    scaled = poison(delta, Attack("scale", 3.0))
    torch.testing.assert_close(flipped["a"], torch.tensor([-10.0, 20.0]))
    torch.testing.assert_close(flipped["b"], torch.tensor([-5.0]))
    torch.testing.assert_close(scaled["a"], torch.tensor([3.0, -6.0]))
    torch.testing.assert_close(delta["a"], torch.tensor([1.0, -2.0]))  # input untouched
    assert torch.equal(poison(delta, Attack("scale", 1.0))["a"], delta["a"])


@pytest.mark.parametrize(("kind", "factor", "match"), [
    ("backdoor", 1.0, "unknown attack"), ("scale", 0.0, "positive"),
    ("sign_flip", -2.0, "positive")])
def test_bad_attacks_are_refused(kind, factor, match):
    with pytest.raises(ValueError, match=match):
        Attack(kind, factor)  # type: ignore[arg-type]


def test_attack_travels_in_the_worker_spec(tmp_path):
    data = {"source": "20newsgroups", "classes": 3, "num_clients": 2, "shard": 0}
    spec = {"broker": "mqtt://127.0.0.1:1", "federation": "f", "devices": [
        {"client": "c0", "region": "r", "data": data, "state_dir": str(tmp_path / "c0"),
         "attack": Attack("sign_flip", 5.0).to_json()},
        {"client": "c1", "region": "r", "data": {**data, "shard": 1},
         "state_dir": str(tmp_path / "c1")},
    ]}
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(spec))
    _, devices, _ = read_worker_spec(path)
    specs = [d.hooks for d in devices]  # what the scenario simulates of each device
    assert specs[0].attack == Attack("sign_flip", 5.0)
    assert specs[1].attack is None
