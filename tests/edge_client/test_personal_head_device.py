"""FedSA-LoRA device rounds with a personal head (no broker, tiny random BERT): the update
carries A and the shared head but never the personal head, which trains from zero, is kept
in the device's local state and goes on from its own value in the next round."""

from __future__ import annotations

import time

import torch

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role
from fedsa_common.wire.protocol import AnnounceHeader, UpdateHeader, decode_message, encode_message
from hub.cloud import initial_global

CONFIG = FederationConfig.model_validate({
    "federation": {"name": "phdev", "seed": 4},
    "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
    "fedsa_lora": {"compression": {"enable": False},
                   "personalization": {"personal_head": True}},
    "training": {"local_steps": 2, "batch_size": 8, "lr": 0.001, "head_lr": 0.01},
})
PERSONAL = ["personal_head.bias", "personal_head.weight"]


def announce(round_: int, tensors: dict[str, torch.Tensor]):
    header = AnnounceHeader(
        federation="phdev", round=round_, version=round_ - 1, status="running",
        selected={"r": ["a"]}, config=CONFIG.model_dump(mode="json"),
        config_hash=CONFIG.digest(), deadline_s=60, issued_at=time.time(),
        shared=sorted(tensors))
    decoded, env = decode_message(AnnounceHeader, encode_message(header, tensors),
                                  max_bytes=10**8)
    return decoded, CONFIG, env, 0


def test_the_personal_head_trains_on_the_device_and_never_leaves_it(tmp_path) -> None:
    data = DataSpec(source="20newsgroups", classes=3, max_train=40, max_test=12, seed=0)
    dev = Device(DeviceSpec(client="a", region="r", federation="phdev", data=data,
                            state_dir=tmp_path / "a"), "mqtt://127.0.0.1:1", ModelHost())
    start = initial_global(CONFIG)
    assert not any(role(n) == "personal" for n in start)  # the cloud knows none
    assert {"classifier.weight", "classifier.bias"} <= set(start)  # the head is shared
    payload, _ = dev.train_round(*announce(1, start))
    _, env = decode_message(UpdateHeader, payload, max_bytes=10**8)
    assert {"classifier.weight", "classifier.bias"} <= set(env.tensors)
    assert not any(role(n) in ("personal", "lora_B") for n in env.tensors)
    first = {n: dev.state.local[n].clone() for n in PERSONAL}
    assert all(torch.count_nonzero(v) > 0 for v in first.values())  # trained from zero

    dev.train_round(*announce(2, start))
    step = 2 * CONFIG.training.head_lr * 1.1  # Adam moves a value at most ~lr a step
    for name in PERSONAL:
        second = dev.state.local[name]
        assert 0 < (second - first[name]).abs().max() <= step  # it trained again ...
        # ... from its own round-1 value: restarted from zero it could not get this far
        assert second.abs().max() > 1.5 * first[name].abs().max()
