"""A device round (no broker) under a memory budget leaves an exportable state directory."""

from __future__ import annotations

import time

import torch

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.export import rebuild_adapter
from edge_client.host import ModelHost
from edge_client.snapshot import load_snapshot
from edge_client.worker import read_worker_spec
from fedsa_common.federation.adaptive_split import round_shared
from fedsa_common.federation.config import FederationConfig
from fedsa_common.wire.protocol import AnnounceHeader, decode_message, encode_message
from quant.adapters import adapter_shapes, init_adapter_values

CONFIG = FederationConfig.model_validate({
    "federation": {"name": "eff", "seed": 1},
    "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
    "training": {"local_steps": 2, "batch_size": 8, "autocast": "bf16"},
})


def announcement(status: str, scale: float = 1.0):
    shapes = adapter_shapes(CONFIG.model, 3)
    shared = round_shared(shapes, CONFIG, 1)  # A and, by default, the head
    tensors = {n: t * scale for n, t in
               init_adapter_values({n: shapes[n] for n in shared}, 1).items()}
    header = AnnounceHeader(
        federation="eff", round=1, version=0, status=status, selected={"r": ["dev-a"]},
        config=CONFIG.model_dump(mode="json"), config_hash=CONFIG.digest(), deadline_s=60,
        issued_at=time.time(), shared=shared)
    payload = encode_message(header, tensors)
    return (*decode_message(AnnounceHeader, payload, max_bytes=10**8), len(payload), tensors)


def test_round_under_budget_persists_what_export_needs(tmp_path):
    data = DataSpec(source="20newsgroups", classes=3, max_train=40, max_test=12)
    spec = DeviceSpec(client="dev-a", region="r", federation="eff", data=data,
                      state_dir=tmp_path / "dev-a", memory_mb=64)  # far below the process
    device = Device(spec, "mqtt://127.0.0.1:1", ModelHost())
    header, env, nbytes, sent = announcement("running")
    _, metrics = device.train_round(header, CONFIG, env, nbytes)
    assert metrics.train_loss is not None
    assert device.planner.budget_bytes == 64 * 2**20
    assert device.planner.per_token is not None  # it measured, and trained 1 at a time

    snap = load_snapshot(spec.state_dir)
    assert snap.num_labels == 3 and snap.info["round"] == 1
    assert snap.label_names and len(snap.label_names) == 3
    assert set(snap.global_shared) == set(sent)
    assert all(torch.equal(snap.global_shared[n], sent[n]) for n in sent)
    assert rebuild_adapter(snap).names == sorted({*snap.local, *snap.global_shared})

    final, env, _, final_sent = announcement("finished", scale=2.0)
    device.on_round(final, env, 0)
    assert device.done.is_set()
    kept = load_snapshot(spec.state_dir).global_shared
    assert all(torch.equal(kept[n], final_sent[n]) for n in final_sent)


def test_worker_spec_carries_the_memory_budget(tmp_path):
    path = tmp_path / "worker.json"
    path.write_text('{"broker": "mqtt://x:1", "federation": "f", "devices": ['
                    '{"client": "a", "region": "r", "data": {"source": "20newsgroups"},'
                    ' "state_dir": "/tmp/a", "memory_mb": 300},'
                    '{"client": "b", "region": "r", "data": {"source": "20newsgroups"},'
                    ' "state_dir": "/tmp/b"}]}')
    _, devices, _ = read_worker_spec(path)
    specs = [d.spec for d in devices]
    assert [s.memory_mb for s in specs] == [300, None]
