"""A device restarted mid-federation resumes with the same local B from its state directory.

Starts a real broker and real cloud and regional hub processes; the two devices run in this
process (over one tiny 4-bit base) so the test can stop one after its first round and start
a fresh Device object on the same state directory.
"""

from __future__ import annotations

import threading

import pytest
import torch

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from edge_client.state import StateDir
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import role
from fedsa_common.process.atomic import read_tensors

pytestmark = pytest.mark.integration


class StopsAfterFirstRound(Device):
    def on_round(self, header, env, bytes_down):
        super().on_round(header, env, bytes_down)
        if self.state.last_round >= 1:
            self.done.set()  # leaves like a device that is switched off



def test_restarted_device_keeps_its_local_b(tmp_path, broker, start_hubs):
    config = FederationConfig.model_validate({
        "federation": {"name": "resume", "seed": 3},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
        "rounds": 3,
        "training": {"local_steps": 2, "batch_size": 8, "lr": 0.001},
        "sampling": {"min_clients": 2},
        "round_policy": {"deadline_s": 30},
    })
    procs = start_hubs(broker.url, config)
    host = ModelHost()

    def spec(i: int) -> DeviceSpec:
        data = DataSpec(source="20newsgroups", classes=3, partition="iid", num_clients=2,
                        shard=i, max_train=24, max_test=12)
        return DeviceSpec(client=f"d{i}", region="r1", federation="resume", data=data,
                          state_dir=tmp_path / f"d{i}")

    steady = Device(spec(0), broker.url, host)
    steady_thread = threading.Thread(target=steady.run)
    steady_thread.start()
    first = StopsAfterFirstRound(spec(1), broker.url, host)
    first.run()
    assert first.state.last_round == 1
    saved = read_tensors(tmp_path / "d1" / "local.safetensors")
    b_names = [n for n in saved if role(n) == "lora_B"]
    assert b_names and any(float(saved[n].abs().sum()) > 0 for n in b_names)

    again = Device(spec(1), broker.url, host)
    for n in saved:  # loaded from disk, not re-initialised
        assert torch.equal(again.state.local[n], saved[n])
    assert again.state.last_round == 1
    again.run()
    steady_thread.join(timeout=120)
    assert not steady_thread.is_alive()
    assert again.state.last_round == 3
    for p in procs:
        assert p.wait(timeout=60) == 0
    final = read_tensors(tmp_path / "d1" / "local.safetensors")
    assert any(not torch.equal(final[n], saved[n]) for n in b_names)  # kept training from it


def test_state_dir_refuses_another_device(tmp_path):
    store = StateDir(tmp_path, "a", "r", "f")
    store.save(store.load())
    with pytest.raises(ValueError, match="own --state-dir"):
        StateDir(tmp_path, "b", "r", "f")
