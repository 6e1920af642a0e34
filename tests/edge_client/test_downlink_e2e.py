"""Downlink deltas end to end: a tiny federation (tiny random BERT in 4-bit) whose
announcements carry the change since the previous version.

Starts a real broker (Mosquitto when installed, else embedded amqtt) and real cloud and
regional hub processes; the three devices run in this process over one shared base, so the
test can stop one after its first round and bring it back after it missed versions, and
start another only once the federation is under way.  A ``scenarios.monitor.Monitor``
records announcements and the devices' metrics as they cross the broker.
"""

from __future__ import annotations

import threading
import time

import pytest

from edge_client.conditions import DeviceConditions
from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from edge_client.simulation import Simulation
from edge_client.snapshot import load_held
from fedsa_common.federation.config import FederationConfig
from fedsa_common.process.atomic import read_json, read_tensors
from fedsa_common.wire.protocol import params_digest
from scenarios.monitor import Monitor

pytestmark = pytest.mark.integration

FED = "downlink"
ROUNDS = 6


class LeavesAfterFirstRound(Device):
    def on_round(self, header, env, bytes_down):
        super().on_round(header, env, bytes_down)
        if self.state.last_round >= 1:
            self.done.set()  # switched off; it misses the next versions



def wait_for(monitor: Monitor, what, timeout: float = 90.0) -> None:
    until = time.time() + timeout
    while time.time() < until:
        with monitor.lock:
            if what(monitor.obs):
                return
        time.sleep(0.05)
    raise AssertionError("the federation did not get there in time")


def latest_version(obs) -> int:
    return max((h.version for h in obs.announces.values()), default=-1)


def test_deltas_cut_bytes_down_and_late_devices_fetch_the_same_global(tmp_path, broker, start_hubs):
    config = FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 2},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
        "fedsa_lora": {"compression": {"downlink": {"enable": True, "method": "topk",
                                                    "ratio": 0.1, "values": "int8"}}},
        "rounds": ROUNDS,
        "training": {"local_steps": 2, "batch_size": 8, "lr": 0.001},
        "sampling": {"min_clients": 2},
        "round_policy": {"deadline_s": 30},
    })
    monitor = Monitor(broker.url, FED)
    monitor.start()
    procs = start_hubs(broker.url, config)
    host = ModelHost()

    def spec(i: int) -> DeviceSpec:
        data = DataSpec(source="20newsgroups", classes=3, partition="iid", num_clients=3,
                        shard=i, max_train=24, max_test=12)
        return DeviceSpec(client=f"d{i}", region="r1", federation=FED, data=data,
                          state_dir=tmp_path / f"d{i}")

    def slow(i: int) -> Simulation:  # rounds of ~1 s
        return Simulation(f"d{i}", DeviceConditions(latency_ms=250))

    def start(device: Device) -> threading.Thread:
        thread = threading.Thread(target=device.run, daemon=True)
        thread.start()
        return thread

    try:
        steady = Device(spec(0), broker.url, host, hooks=slow(0))
        leaver = LeavesAfterFirstRound(spec(1), broker.url, host, hooks=slow(1))
        threads = [start(steady), start(leaver)]
        wait_for(monitor, lambda obs: latest_version(obs) >= 2)
        late = Device(spec(2), broker.url, host, hooks=slow(2))  # its first announcement is a delta
        threads.append(start(late))
        wait_for(monitor, lambda obs: latest_version(obs) >= 3)
        threads[1].join(timeout=30)
        assert leaver.state.last_round == 1
        # trained on version 0; now >= 3 is out
        back = Device(spec(1), broker.url, host, hooks=slow(1))
        assert back.held is not None and back.held.version == 0
        threads.append(start(back))
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive()
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        monitor.stop()

    # every device holds the cloud's final global, bit for bit
    meta = read_json(tmp_path / "cloud" / "checkpoint.json")
    assert meta["round"] == ROUNDS
    final = read_tensors(tmp_path / "cloud" / meta["tensors"])
    finished = monitor.obs.finished
    assert finished is not None and finished.is_delta
    want = params_digest({n: final[n] for n in finished.shared})
    assert finished.global_digest == want
    for i in range(3):
        held = load_held(tmp_path / f"d{i}")
        assert held is not None and held.version == meta["version"] and held.digest == want
    assert steady.downlink["fetched"] == 0 and steady.downlink["bad_delta"] == 0
    assert steady.downlink["delta"] >= ROUNDS  # every later version, and the final one
    assert late.downlink["fetched"] >= 1 and back.downlink["fetched"] >= 1
    assert sum(d.downlink["bad_delta"] for d in (late, back)) == 0

    # bytes down per device-round: the full parameters once, then deltas
    metrics = monitor.obs.metrics
    full = metrics[1]["d0"].bytes_down  # round 1: the full announcement of version 0
    # a device's first report after (re)joining also counts what it fetched
    rejoined = {("d2", min(r for r in metrics if "d2" in metrics[r])),
                ("d1", min((r for r in metrics if r > 1 and "d1" in metrics[r]), default=0))}
    later = [m.bytes_down for r in range(2, ROUNDS + 1) for c, m in metrics[r].items()
             if (c, r) not in rejoined]
    assert later and max(later) < 0.5 * full, (full, later)
    first_late = min(r for r in metrics if "d2" in metrics[r])
    # the late joiner's first report counts the full parameters it fetched
    assert metrics[first_late]["d2"].bytes_down > metrics[first_late]["d0"].bytes_down + \
        0.5 * full
    print(f"bytes down per device-round: round 1 {full}, later {sorted(set(later))}, "
          f"late joiner's first {metrics[first_late]['d2'].bytes_down}")
