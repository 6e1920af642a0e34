"""Secure aggregation end to end: a real broker (Mosquitto if installed, else the embedded
one), real cloud and regional hub processes, and five devices running in this process
over one tiny 4-bit BERT. Devices hold signing identities from one provisioning
authority, so the signed protocol with its consistency round runs. One device vanishes
right after it sent its shares; the round still completes with the other four, the
regional partial equals their plain weighted sum, and a spy subscribed to '#' sees no
update on the wire that equals (or encodes) a plain update.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from edge_client.data import DataSpec
from edge_client.device import Device, DeviceSpec
from edge_client.host import ModelHost
from fedsa_common.federation.config import FederationConfig
from fedsa_common.privacy.secagg.config_check import secagg_params
from fedsa_common.privacy.secagg.fixed_point import to_wire
from fedsa_common.privacy.secagg.identity import Authority
from fedsa_common.privacy.secagg.vector import gather, scatter
from fedsa_common.wire.codec import round_codec_params

pytestmark = pytest.mark.integration

FED = "secagg"
N_DEVICES = 5
VANISHER = "d4"
AUTHORITY = Authority.generate()


class RecordingDevice(Device):
    """A real device that also keeps its plain update (for the test's comparison only)."""

    plain: dict[int, tuple[dict[str, torch.Tensor], int]]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plain = {}
        original = self.secagg.masked_update

        def record(update, encoded, delta, residual):
            assert residual is None or update.round > 1
            self.plain[update.round] = ({n: t.clone() for n, t in delta.items()},
                                        update.num_samples)
            return original(update, encoded, delta, residual)

        self.secagg.masked_update = record


class VanishesAfterShares(Device):
    """Leaves abruptly (no goodbye; the broker publishes its will) right after it sent its
    shares and received the others', i.e. after secure-aggregation stage 1."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        original = self.secagg.begin
        self.shared_keys = False

        def begin_then_vanish(header, config, env):
            self.shared_keys = original(header, config, env)
            self.vanish()
            return False

        self.secagg.begin = begin_then_vanish


def test_region_sum_survives_a_dropout_and_no_plain_update_travels(tmp_path, broker, start_hubs,
                                                                   broker_spy):
    config = FederationConfig.model_validate({
        "federation": {"name": FED, "seed": 5},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
        "fedsa_lora": {"compression": {"method": "randk", "ratio": 0.5},
                       "privacy": {"secure_aggregation": {"enable": True}}},
        "rounds": 2,
        "training": {"local_steps": 2, "batch_size": 8, "lr": 0.01},
        "sampling": {"min_clients": N_DEVICES, "wait_for_clients_s": 120},
        "round_policy": {"deadline_s": 90},
    })
    spy = broker_spy(broker.url)
    spy.session.connect()
    procs = start_hubs(broker.url, config)
    host = ModelHost()

    def spec(i: int) -> DeviceSpec:
        data = DataSpec(source="20newsgroups", classes=3, partition="iid",
                        num_clients=N_DEVICES, shard=i, max_train=16, max_test=8)
        return DeviceSpec(client=f"d{i}", region="r1", federation=FED, data=data,
                          state_dir=tmp_path / f"d{i}",
                          secagg_identity=AUTHORITY.issue(FED, "r1", f"d{i}"))

    devices = [RecordingDevice(spec(i), broker.url, host) for i in range(N_DEVICES - 1)]
    vanisher = VanishesAfterShares(spec(N_DEVICES - 1), broker.url, host)
    threads = [threading.Thread(target=d.run, name=d.spec.client)
               for d in [*devices, vanisher]]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        assert not any(t.is_alive() for t in threads), "devices did not finish"
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        for d in [*devices, vanisher]:
            d.done.set()
        time.sleep(0.5)
        spy.session.close()

    assert vanisher.shared_keys  # it did take part in stages 0 and 1
    assert all(d.state.last_round == 2 for d in devices)
    envelopes = spy.envelopes()

    # the region's partial of round 1 is the plain weighted sum of the four survivors
    partials = {env.header["round"]: env for topic, env in envelopes
                if env.header.get("kind") == "partial" and env.header.get("count")}
    assert set(partials) == {1, 2}
    first = partials[1]
    assert first.header["count"] == N_DEVICES - 1
    assert f"{VANISHER}:1" not in first.header["accepted"]
    shapes = {n: tuple(t.shape) for n, t in first.tensors.items()}
    comp = config.fedsa_lora.compression
    params = round_codec_params(comp.codec, comp.codec_params, config.federation.seed, 1)
    fp = secagg_params(config).fixed_point(N_DEVICES)
    expected = {n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()}
    weight = 0
    plain_words = []
    for d in devices:
        delta, samples = d.plain[1]
        values = gather(delta, shapes, comp.codec, params)
        for n, t in scatter(values, shapes, comp.codec, params).items():
            expected[n] += samples * t
        weight += samples
        plain_words.append(to_wire(fp.encode(values, samples)))
    assert first.header["weight"] == weight
    tol = (N_DEVICES - 1) / 2 ** (fp.frac_bits + 1) + 1e-6
    for n in shapes:
        assert float(expected[n].abs().max()) > 100 * tol  # a real signal, not zeros
        assert torch.allclose(first.tensors[n].double(), expected[n], atol=tol, rtol=1e-6)

    # on the wire: only masked vectors, never a plain update or its fixed-point encoding
    updates = [env for _, env in envelopes if env.header.get("kind") == "update"]
    assert len(updates) >= 2 * (N_DEVICES - 1)
    plain_values = [gather(d.plain[r][0], shapes, comp.codec, params).float()
                    for d in devices for r in (1, 2)]
    for env in updates:
        assert env.header["codec"] == "secagg" and env.header["num_samples"] == 1
        assert set(env.tensors) == {"y"} and env.tensors["y"].dtype == torch.int32
        y = env.tensors["y"]
        assert not any(torch.equal(y, w) for w in plain_words)
        assert not any(torch.equal(y[:-1].view(torch.float32), v) for v in plain_values)
    secagg = [env for topic, env in envelopes if "/region/r1/secagg/" in topic]
    assert {env.header["stage"] for env in secagg} >= {
        "advertise", "roster", "share_keys", "share_delivery", "survivors",
        "survivor_signature", "unmask_request", "unmask_response"}
    assert all(env.header["kind"] == "secagg" and set(env.tensors) == {"msg"}
               for env in secagg)
    regional_log = (tmp_path / "regional.log").read_text()
    assert "1 dropped after sharing" in regional_log
