"""A device round (no broker, tiny random BERT) under an announced adaptive split: the
update carries exactly the announced tensors, the local state holds the rest, moved tensors
start where edge_client/split_state.py says, and fine-tuning leaves the update alone."""

from __future__ import annotations

import time

import pytest
import torch

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role
from fedsa_common.process.atomic import read_tensors
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader, decode_message, encode_message
from quant.adapters import adapter_shapes, init_adapter_values

BASE = {
    "federation": {"name": "split", "seed": 1},
    "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
    "fedsa_lora": {"compression": {"enable": False},  # dense: the update is exact
                   "adaptive_split": {"enable": True, "strategy": "importance_based"}},
    "training": {"local_steps": 2, "batch_size": 8, "lr": 0.001},
}
CONFIG = FederationConfig.model_validate(BASE)
SHAPES = adapter_shapes(CONFIG.model, 3)
INIT = init_adapter_values(SHAPES, 1, CONFIG.lora_init)
LORA = sorted(n for n in SHAPES if role(n) != "head")
A0, B0 = (f"bert.encoder.layer.0.attention.self.query.lora_{x}.weight" for x in "AB")
A1, B1 = (f"bert.encoder.layer.1.attention.self.value.lora_{x}.weight" for x in "AB")
DATA = DataSpec(source="20newsgroups", classes=3, max_train=40, max_test=12)
MOVE = 0.05  # far more than 2 Adam steps at lr 1e-3 move any value


def announce(config: FederationConfig, rnd: int, tensors: dict[str, torch.Tensor]):
    header = AnnounceHeader(
        federation="split", round=rnd, version=rnd - 1, status="running",
        selected={"r": ["dev"]}, config=config.model_dump(mode="json"),
        config_hash=config.digest(), deadline_s=60, issued_at=time.time(),
        shared=sorted(tensors))
    payload = encode_message(header, tensors)
    decoded, env = decode_message(AnnounceHeader, payload, max_bytes=10**8)
    return decoded, config, env, len(payload)  # Device.train_round's arguments


def sent(payload: bytes) -> tuple[UpdateHeader, dict[str, torch.Tensor]]:
    header, env = decode_message(UpdateHeader, payload, max_bytes=10**8)
    return header, dict(env.tensors)


@pytest.fixture(scope="module")
def host() -> ModelHost:
    return ModelHost()


def device(host: ModelHost, path) -> Device:
    spec = DeviceSpec(client="dev", region="r", federation="split", data=DATA, state_dir=path)
    return Device(spec, "mqtt://127.0.0.1:1", host)


def test_update_follows_the_announced_split_and_moved_tensors_keep_values(host, tmp_path):
    dev = device(host, tmp_path / "dev")
    # round 1: the cloud shares A0 and (unusually) B1, with B1's global at 3
    round1 = {A0: INIT[A0], B1: torch.full(SHAPES[B1], 3.0)}
    payload, _ = dev.train_round(*announce(CONFIG, 1, round1))
    header, delta = sent(payload)
    assert set(delta) == {A0, B1}  # exactly the announced tensors leave the device
    assert set(dev.state.local) == set(SHAPES) - {A0, B1}  # the rest stays, head included
    assert set(read_tensors(tmp_path / "dev" / "local.safetensors")) == set(dev.state.local)
    assert header.importance is not None and set(header.importance) == set(LORA)

    # round 2: B0 (local so far) and A1 become shared, A0 and B1 become local
    dev.state.local[B0] = torch.full(SHAPES[B0], 5.0)  # the device's own personalized B0
    round2 = {B0: torch.zeros(SHAPES[B0]), A1: INIT[A1] + 1.0}
    _, delta = sent(dev.train_round(*announce(CONFIG, 2, round2))[0])
    assert set(delta) == {A1, B0}
    # the delta is trained - announced, and training started from the device's own values
    assert torch.allclose(delta[B0], torch.full(SHAPES[B0], 5.0), atol=MOVE)
    assert torch.allclose(delta[A1], torch.full(SHAPES[A1], -1.0), atol=MOVE)
    # tensors that became local kept the last global value the device loaded (round 1's)
    assert set(dev.state.local) == set(SHAPES) - {A1, B0}
    assert torch.allclose(dev.state.local[B1], torch.full(SHAPES[B1], 3.0), atol=MOVE)
    assert torch.allclose(dev.state.local[A0], INIT[A0], atol=MOVE)


def test_fine_tuning_changes_local_tensors_but_not_the_update(host, tmp_path):
    tuned_config = FederationConfig.model_validate(
        {**BASE, "fedsa_lora": {**BASE["fedsa_lora"],
                                "personalization": {"finetune_steps": 3}}})
    tensors = {n: INIT[n] for n in (A0, A1)}
    plain, tuned = device(host, tmp_path / "plain"), device(host, tmp_path / "tuned")
    _, plain_delta = sent(plain.train_round(*announce(CONFIG, 1, tensors))[0])
    _, tuned_delta = sent(tuned.train_round(*announce(tuned_config, 1, tensors))[0])
    assert set(plain_delta) == set(tuned_delta) == {A0, A1}
    for n in plain_delta:  # the update is computed before fine-tuning
        assert torch.allclose(plain_delta[n], tuned_delta[n], atol=1e-6)
    changed = [n for n in plain.state.local
               if not torch.allclose(plain.state.local[n], tuned.state.local[n])]
    assert B0 in changed and "classifier.weight" in changed


def test_head_and_b_that_become_local_after_rounds_sharing_everything_keep_the_global(
        host, tmp_path):
    # round 1 shares A, B and the head (nothing is local), round 2 shares A only: the head
    # and B must start from round 1's global, not from their initial values (a device whose
    # local state was empty used to reset them: random head, zero B)
    config = FederationConfig.model_validate(
        {**BASE, "fedsa_lora": {"compression": {"enable": False},
                                "personalization": {"share_head_rounds": 1,
                                                    "share_b_rounds": 1}},
         "rounds": 2})
    dev = device(host, tmp_path / "dev")
    round1 = {n: (INIT[n] if role(n) == "lora_A" else torch.full(SHAPES[n], 0.3))
              for n in SHAPES}
    _, delta = sent(dev.train_round(*announce(config, 1, round1))[0])
    assert set(delta) == set(SHAPES) and dev.state.local == {}
    round2 = {n: INIT[n] for n in LORA if role(n) == "lora_A"}
    _, delta = sent(dev.train_round(*announce(config, 2, round2))[0])
    assert set(delta) == set(round2)
    assert set(dev.state.local) == set(SHAPES) - set(round2)
    for name, value in dev.state.local.items():
        assert torch.allclose(value, torch.full(SHAPES[name], 0.3), atol=MOVE), name
