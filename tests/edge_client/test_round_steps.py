"""The named steps of a device round (edge_client/round_steps.py) and the hooks a scenario
injects (edge_client/simulation.py): pure, so checked without a model or a broker."""

from __future__ import annotations

import logging

import pytest
import torch

from edge_client.attack import Attack
from edge_client.conditions import DeviceConditions
from edge_client.round_hooks import NO_HOOKS
from edge_client.round_steps import RoundPlan, next_state, shared_delta
from edge_client.simulation import Simulation
from edge_client.state import DeviceState
from edge_client.update_build import Draft, dp_step, hooks_step, round_seed, run_steps
from fedsa_common.federation.config import FederationConfig
from fedsa_common.privacy.dp import DpPlan
from fedsa_common.wire.protocol import AnnounceHeader

CLIP_1 = DpPlan(mode="central", clip_norm=1.0, noise_multiplier=1.0, sample_rate=1.0,
                epsilon=1.0, delta=1e-5, rounds=1, calibrated=False)


def test_the_attack_poisons_the_clipped_update_and_declares_its_count(caplog) -> None:
    """DP first, then the hooks: the attacker scales what an honest device would send."""
    attacker = Simulation("north-1", attack=Attack("scale", 10.0, samples=1000))
    draft = Draft({"a": torch.tensor([3.0, 4.0])}, samples=7)
    with caplog.at_level(logging.INFO, logger="fedsa.device"):
        out = run_steps(draft, [dp_step(CLIP_1), hooks_step(attacker, 3)])
    torch.testing.assert_close(out.delta["a"], torch.tensor([6.0, 8.0]))
    assert (out.samples, out.dp_norm) == (1000, pytest.approx(5.0))
    assert "north-1: round 3 update poisoned (scale x10), declaring 1000 samples" in caplog.text
    torch.testing.assert_close(draft.delta["a"], torch.tensor([3.0, 4.0]))  # input untouched


def test_a_real_device_sends_what_it_trained() -> None:
    draft = Draft({"a": torch.tensor([3.0, 4.0])}, samples=7)
    out = run_steps(draft, [dp_step(None), hooks_step(NO_HOOKS, 1)])
    assert torch.equal(out.delta["a"], draft.delta["a"])
    assert (out.samples, out.dp_norm) == (7, None)
    assert NO_HOOKS.delay("compute", 12.0) == NO_HOOKS.delay("upload", 10**6) == 0.0


def test_simulated_delays_follow_the_drawn_conditions() -> None:
    slow = Simulation("d", DeviceConditions(slowdown=3.0, uplink_kbps=8.0, downlink_kbps=80.0,
                                            latency_ms=100.0))
    assert slow.delay("compute", 2.0) == pytest.approx(4.0)  # 3x as long: 2 s more per 1 s
    assert slow.delay("upload", 1000) == pytest.approx(0.1 + 1.0)
    assert slow.delay("download", 1000) == pytest.approx(0.1 + 0.1)
    assert Simulation("d").delay("download", 10**6) == 0.0


def test_the_delta_is_of_the_shared_tensors_against_the_announced_values() -> None:
    plan = RoundPlan(shared=["a"], local=["b"], trainable=["a", "b"],
                     global_shared={"a": torch.tensor([1.0, 1.0])})
    delta = shared_delta({"a": torch.tensor([1.5, 0.0]), "b": torch.ones(2)}, plan)
    assert list(delta) == ["a"]
    torch.testing.assert_close(delta["a"], torch.tensor([0.5, -1.0]))


def test_round_seeds_differ_per_device_and_round_and_replay_the_same() -> None:
    seeds = {round_seed(7, c, r) for c in ("d1", "d2") for r in (1, 2)}
    assert len(seeds) == 4 and all(0 <= s < 2**31 for s in seeds)
    assert round_seed(7, "d1", 2) == round_seed(7, "d1", 2)


def test_the_next_state_belongs_to_the_round_and_configuration_trained() -> None:
    config = FederationConfig()
    header = AnnounceHeader(federation="f", round=4, version=3, status="running",
                            selected={}, config=config.model_dump(mode="json"),
                            config_hash=config.digest(), deadline_s=30.0, issued_at=0.0,
                            shared=[])
    before = DeviceState(client="d", region="r", federation="f")
    after = next_state(before, header, config, {"b": torch.ones(2)}, {"a": torch.zeros(2)})
    assert (after.last_round, after.base_version) == (4, 3)
    assert (after.config_hash, after.state_hash) == (config.digest(), config.state_digest())
    assert set(after.local) == {"b"} and set(after.residual) == {"a"}
    assert before.last_round == 0 and not before.local  # the old state is left as it was
