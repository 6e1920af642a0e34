"""A FedSA-LoRA device round under ``model.lora.init: b_random`` (no broker, tiny random
BERT): the device's own B starts from the seeded value the federation shares, not zero, and
the shared A, announced at zero, is trained from the first round."""

from __future__ import annotations

import time

import pytest
import torch

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader, decode_message, encode_message
from hub.cloud import initial_global
from quant.adapters import adapter_shapes, init_adapter_values

CONFIG = FederationConfig.model_validate({
    "federation": {"name": "binit", "seed": 4},
    "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3,
              "lora": {"init": "b_random"}},
    "fedsa_lora": {"compression": {"enable": False}},  # dense: the update is exact
    "training": {"local_steps": 2, "batch_size": 8, "lr": 0.001},
})
SHAPES = adapter_shapes(CONFIG.model, 3)
SEEDED = init_adapter_values(SHAPES, 4, "b_random")
MOVE = 0.05  # far more than 2 Adam steps at lr 1e-3 move any value


def announce(tensors: dict[str, torch.Tensor]):
    header = AnnounceHeader(
        federation="binit", round=1, version=0, status="running",
        selected={"r": ["a", "b"]}, config=CONFIG.model_dump(mode="json"),
        config_hash=CONFIG.digest(), deadline_s=60, issued_at=time.time(),
        shared=sorted(tensors))
    decoded, env = decode_message(AnnounceHeader, encode_message(header, tensors),
                                  max_bytes=10**8)
    return decoded, CONFIG, env, 0


@pytest.fixture(scope="module")
def host() -> ModelHost:
    return ModelHost()


@pytest.mark.parametrize("client, classes", [("a", 3), ("b", 3)])
def test_b_starts_seeded_on_every_device_and_the_zero_a_learns(host, tmp_path, client,
                                                                classes):
    data = DataSpec(source="20newsgroups", classes=classes, max_train=40, max_test=12,
                    seed=0 if client == "a" else 1)
    dev = Device(DeviceSpec(client=client, region="r", federation="binit", data=data,
                            state_dir=tmp_path / client), "mqtt://127.0.0.1:1", host)
    start = initial_global(CONFIG)
    assert all(torch.count_nonzero(start[n]) == 0 for n in start if role(n) == "lora_A")
    payload, _ = dev.train_round(*announce(start))
    _, env = decode_message(UpdateHeader, payload, max_bytes=10**8)
    a_deltas = {n: t for n, t in env.tensors.items() if role(n) == "lora_A"}
    assert a_deltas and all(t.abs().sum() > 0 for t in a_deltas.values())
    b_names = [n for n in SHAPES if role(n) == "lora_B"]
    assert b_names and not set(b_names) & set(env.tensors)  # B never leaves
    for name in b_names:
        own = dev.state.local[name]
        assert torch.count_nonzero(SEEDED[name]) > 0
        assert (own - SEEDED[name]).abs().max() < MOVE  # trained from the seeded start
