"""The cloud's server optimizer (hub/server_optimizer.py): each rule against a two-step
example worked by hand from Reddi et al.'s Algorithm 2 (and FedAvgM), sgd against the plain
server step bit for bit, the adaptive split's kept moments, the state through
to_state/from_state and the cloud checkpoint, the configuration, the cloud's server step
with and without downlink deltas (pure: the hub object is built but never connected), and
one real cloud hub process over a real broker."""

from __future__ import annotations

import math
import queue
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from fedsa_common.federation.config import (
    ConfigError,
    FederationConfig,
    ServerOptimizerSection,
    announced_config,
    validate_model,
)
from fedsa_common.net.transport import MqttSession
from fedsa_common.wire.protocol import (
    AnnounceHeader,
    PartialHeader,
    Presence,
    RoundSummary,
    Topics,
    decode_json,
    decode_message,
    encode_json,
    encode_message,
)
from hub.aggregation import RunningSum, apply_server_update
from hub.checkpoint import CHECKPOINT_JSON, CloudState, load_checkpoint, save_checkpoint
from hub.cloud import CloudHub, initial_global
from hub.cloud_intake import CloudIntake
from hub.server_optimizer import ServerOptimizerState, server_change
from tests.support.sessions import RecordingSession

D1, D2 = 0.1, 0.005  # the two rounds' mean deltas of a one-coordinate tensor
TAU = 1e-3


def opt(name: str, **kw) -> ServerOptimizerSection:
    return ServerOptimizerSection.model_validate({"name": name, **kw})


def two_steps(section: ServerOptimizerSection, lr: float) -> tuple[float, float]:
    state = None
    out = []
    for d in (D1, D2):
        change, state = server_change({"a": torch.tensor([d])}, section, lr, state)
        out.append(float(change["a"]))
    return out[0], out[1]


# ------------------------------------------------------------------ rules, by hand
def test_sgd_is_lr_times_the_mean() -> None:
    assert two_steps(opt("sgd"), 0.5) == pytest.approx((0.05, 0.0025), rel=1e-6)


def test_avgm_two_steps() -> None:
    # m1 = 0.1, step 0.5 * 0.1; m2 = 0.9 * 0.1 + 0.005 = 0.095, step 0.5 * 0.095
    assert two_steps(opt("avgm", momentum=0.9), 0.5) == pytest.approx((0.05, 0.0475),
                                                                       rel=1e-6)


# v0 = tau^2 = 1e-6; m1 = 0.1 * 0.1 = 0.01; m2 = 0.9 * 0.01 + 0.1 * 0.005 = 0.0095
M1, M2 = 0.01, 0.0095
ADAPTIVE = {
    # v1 = 0.99e-6 + 0.01 * 0.01; v2 = 0.99 v1 + 0.01 * 2.5e-5
    "adam": (0.99e-6 + 1e-4, 0.99 * (0.99e-6 + 1e-4) + 0.01 * 2.5e-5),
    # v1 = 1e-6 - 0.01 * 0.01 * sign(1e-6 - 0.01) = 1e-6 + 1e-4 = 1.01e-4
    # v2 = v1 - 0.01 * 2.5e-5 * sign(1.01e-4 - 2.5e-5) = 1.01e-4 - 2.5e-7
    "yogi": (1.01e-4, 1.01e-4 - 2.5e-7),
    # v1 = 1e-6 + 0.01; v2 = v1 + 2.5e-5
    "adagrad": (1e-6 + 0.01, 1e-6 + 0.01 + 2.5e-5),
}


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_adaptive_two_steps(name: str) -> None:
    v1, v2 = ADAPTIVE[name]
    lr = 0.05
    want = (lr * M1 / (math.sqrt(v1) + TAU), lr * M2 / (math.sqrt(v2) + TAU))
    kw = {"beta1": 0.9, "tau": TAU} | ({} if name == "adagrad" else {"beta2": 0.99})
    assert two_steps(opt(name, **kw), lr) == pytest.approx(want, rel=1e-5)


def test_adam_with_bias_correction() -> None:
    v1, v2 = ADAPTIVE["adam"]
    lr = 0.05
    want = (lr * (M1 / 0.1) / (math.sqrt(v1 / 0.01) + TAU),
            lr * (M2 / (1 - 0.9**2)) / (math.sqrt(v2 / (1 - 0.99**2)) + TAU))
    assert two_steps(opt("adam", bias_correction=True), lr) == pytest.approx(want, rel=1e-5)
    # corrected, the first step is about lr per coordinate (the sign of the delta)
    assert want[0] == pytest.approx(lr, rel=0.02)


def test_server_change_leaves_its_input_state_alone() -> None:
    mean = {"a": torch.tensor([0.1, -0.2])}
    _, s1 = server_change(mean, opt("adam"), 0.1, None)
    before = {k: t.clone() for k, t in s1.m.items()}, {k: t.clone() for k, t in s1.v.items()}
    _, s2 = server_change(mean, opt("adam"), 0.1, s1)
    assert torch.equal(s1.m["a"], before[0]["a"]) and torch.equal(s1.v["a"], before[1]["a"])
    assert s1.steps == {"a": 1} and s2.steps == {"a": 2}


def test_a_tensor_not_shared_this_round_keeps_its_moments() -> None:
    """An adaptive split shares a subset: only those step; the others' m, v and step count
    wait, and their next step continues from them."""
    section = opt("yogi")
    a, b = {"a": torch.tensor([0.1])}, {"b": torch.tensor([-0.3])}
    _, s1 = server_change(a | b, section, 0.1, None)
    change, s2 = server_change(a, section, 0.1, s1)
    assert set(change) == {"a"} and s2.steps == {"a": 2, "b": 1}
    assert torch.equal(s2.m["b"], s1.m["b"]) and torch.equal(s2.v["b"], s1.v["b"])
    later, _ = server_change(b, section, 0.1, s2)
    again, _ = server_change(b, section, 0.1, s1)  # as if round 2 had not happened
    assert torch.equal(later["b"], again["b"])


def test_a_state_of_another_rule_starts_over() -> None:
    _, avgm = server_change({"a": torch.tensor([1.0])}, opt("avgm"), 1.0, None)
    change, state = server_change({"a": torch.tensor([1.0])}, opt("adam"), 0.1, avgm)
    fresh, _ = server_change({"a": torch.tensor([1.0])}, opt("adam"), 0.1, None)
    assert state.name == "adam" and state.steps == {"a": 1}
    assert torch.equal(change["a"], fresh["a"])


# ------------------------------------------------------------------ sgd == today's step
def random_tensors(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"l0.lora_A.weight": torch.randn(4, 16, generator=g) * scale,
            "l1.lora_A.weight": torch.randn(4, 16, generator=g) * scale}


@pytest.mark.parametrize("lr", [1.0, 0.7])
def test_sgd_is_apply_server_update_bit_for_bit(lr: float) -> None:
    old, mean = random_tensors(0), random_tensors(1, 0.01)
    change, _ = server_change(mean, ServerOptimizerSection(), lr, None)
    new, plain = apply_server_update(old, change), apply_server_update(old, mean, lr)
    assert all(torch.equal(new[n], plain[n]) for n in old)


# ------------------------------------------------------------------ persistence
def run(section: ServerOptimizerSection, seeds: range, state: ServerOptimizerState | None
        ) -> tuple[list[dict[str, torch.Tensor]], ServerOptimizerState | None]:
    changes = []
    for seed in seeds:
        change, state = server_change(random_tensors(seed, 0.01), section, 0.05, state)
        changes.append(change)
    return changes, state


@pytest.mark.parametrize("name", ["avgm", "adam", "yogi", "adagrad"])
def test_state_round_trips_and_continues_exactly(name: str) -> None:
    section = opt(name)
    _, state = run(section, range(2), None)
    assert state is not None
    meta, tensors = state.to_state()
    back = ServerOptimizerState.from_state(meta, tensors)
    assert back.steps == state.steps and back.name == name
    live, _ = run(section, range(2, 4), state)
    resumed, _ = run(section, range(2, 4), back)
    assert all(torch.equal(x[n], y[n]) for x, y in zip(live, resumed, strict=True) for n in x)


def test_checkpoint_holds_the_optimizer_state(tmp_path: Path) -> None:
    section = opt("adam", beta2=0.999)
    params = random_tensors(0)
    _, s1 = run(section, range(1), None)
    save_checkpoint(tmp_path, CloudState(1, 1, params, "h", optimizer=s1))
    _, s2 = run(section, range(1, 2), s1)
    save_checkpoint(tmp_path, CloudState(2, 2, params, "h", optimizer=s2))
    # one optimizer file per checkpoint; the previous one is gone once replaced
    assert [p.name for p in tmp_path.glob("optimizer-*")] == ["optimizer-r2.safetensors"]
    back = load_checkpoint(tmp_path)
    assert back is not None and back.optimizer is not None
    assert back.optimizer.steps == s2.steps == {n: 2 for n in params}
    for n in params:
        assert torch.equal(back.optimizer.m[n], s2.m[n])
        assert torch.equal(back.optimizer.v[n], s2.v[n])
    live, _ = run(section, range(2, 3), s2)
    resumed, _ = run(section, range(2, 3), back.optimizer)
    assert all(torch.equal(live[0][n], resumed[0][n]) for n in params)
    # sgd keeps no state: the checkpoint is as before optimizers existed
    save_checkpoint(tmp_path, CloudState(3, 3, params, "h"))
    assert not list(tmp_path.glob("optimizer-*"))
    assert load_checkpoint(tmp_path).optimizer is None  # type: ignore[union-attr]


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(("raw", "field"), [
    ({"server_optimizer": {"name": "nesterov"}}, "server_optimizer.name"),
    ({"server_lr": -0.1}, "server_lr"),
    ({"server_lr": 0}, "server_lr"),
    ({"server_optimizer": {"name": "adam", "beta1": 1.0}}, "server_optimizer.beta1"),
    ({"server_optimizer": {"name": "yogi", "beta2": -0.1}}, "server_optimizer.beta2"),
    ({"server_optimizer": {"name": "adam", "tau": 0}}, "server_optimizer.tau"),
    ({"server_optimizer": {"name": "avgm", "momentum": 1.5}}, "server_optimizer.momentum"),
    ({"server_optimizer": {"name": "adam", "momentum": 0.5}}, "momentum: not used by"),
    ({"server_optimizer": {"name": "adagrad", "beta2": 0.9}}, "beta2: not used by"),
    ({"server_optimizer": {"momentum": 0.5}}, "momentum: not used by server optimizer sgd"),
])
def test_bad_server_optimizer_settings_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        validate_model(FederationConfig, raw)


def test_sgd_digests_as_before_and_others_travel_in_announcements() -> None:
    plain = FederationConfig()
    assert FederationConfig.model_validate(
        {"server_optimizer": {"name": "sgd"}}).digest() == plain.digest()
    assert "server_optimizer" not in plain.model_dump(mode="json")
    config = FederationConfig.model_validate(
        {"server_lr": 0.05, "server_optimizer": {"name": "adam", "beta2": 0.999}})
    dumped = config.model_dump(mode="json")
    assert dumped["server_optimizer"] == {"name": "adam", "beta1": 0.9, "beta2": 0.999,
                                          "tau": 0.001, "bias_correction": False}
    assert config.digest() != plain.digest()
    # what a device or regional hub validates from an announcement
    header = AnnounceHeader(federation="default", round=1, version=0, status="running",
                            selected={}, config=dumped, config_hash=config.digest(),
                            deadline_s=30.0, issued_at=0.0, shared=[])
    assert announced_config(header).digest() == config.digest()
    avgm = FederationConfig.model_validate({"server_optimizer": {"name": "avgm"}})
    assert avgm.model_dump(mode="json")["server_optimizer"] == {"name": "avgm",
                                                                "momentum": 0.9}


# ------------------------------------------------------------------ CloudHub.finish_round
def cloud(tmp_path: Path, **extra) -> tuple[CloudHub, list[tuple[str, bytes]]]:
    raw = {"federation": {"name": "f", "seed": 4},
           "model": {"path": "tiny-bert", "num_labels": 3},
           "round_policy": {"deadline_s": 30}, **extra}
    session = RecordingSession()
    hub = CloudHub("mqtt://127.0.0.1:1", FederationConfig.model_validate(raw), tmp_path,
                   session=session)  # type: ignore[arg-type]
    return hub, session.sent


def close_round(hub: CloudHub, state: CloudState, rnd: int, mean: dict[str, torch.Tensor]
                ) -> None:
    """The round's total as the cloud's partial path builds it, then the server step."""
    total = RunningSum.zeros({n: tuple(t.shape) for n, t in mean.items()})
    total.merge(mean, 1.0, 1)
    hub.finish_round(state, CloudIntake(rnd, b"", {"r": ["d"]}, time.time(), total))


@pytest.mark.parametrize("downlink", [None, {"enable": True, "method": "dense"}])
def test_cloud_steps_through_the_optimizer_and_checkpoints_it(tmp_path: Path, downlink
                                                              ) -> None:
    extra = {"server_lr": 0.05, "server_optimizer": {"name": "adam"}}
    if downlink is not None:
        extra["fedsa_lora"] = {"compression": {"downlink": downlink}}
    hub, _ = cloud(tmp_path, **extra)
    state = hub.load_state()
    start = {n: t.clone() for n, t in state.params.items()}
    assert state.optimizer is not None and state.optimizer.name == "adam"
    want, expect_state = dict(start), None
    for rnd in (1, 2):
        mean = {n: torch.randn(t.shape) * 0.01 for n, t in start.items()}
        close_round(hub, state, rnd, mean)
        change, expect_state = server_change(mean, hub.config.server_optimizer, 0.05,
                                             expect_state)
        want = apply_server_update(want, change)
    assert state.version == 2
    assert all(torch.equal(state.params[n], want[n]) for n in want)
    back = load_checkpoint(tmp_path)
    assert back is not None and back.optimizer is not None
    assert back.optimizer.steps == {n: 2 for n in start}
    assert all(torch.equal(back.optimizer.v[n], expect_state.v[n]) for n in start)
    if downlink is not None:  # the announced delta is the optimizer's change
        assert back.downlink is not None and back.downlink.last is not None
        assert all(torch.equal(back.downlink.last.tensors[n], change[n]) for n in change)


def test_sgd_cloud_writes_no_optimizer_state(tmp_path: Path) -> None:
    hub, _ = cloud(tmp_path)
    state = hub.load_state()
    close_round(hub, state, 1, {n: torch.ones(t.shape) for n, t in state.params.items()})
    assert state.optimizer is None
    assert '"optimizer"' not in (tmp_path / CHECKPOINT_JSON).read_text()


# ------------------------------------------------------------------ a real cloud hub
@pytest.mark.integration
def test_cloud_hub_process_runs_adam_rounds_and_checkpoints_the_moments(
        tmp_path: Path, broker) -> None:
    """``hub serve --role cloud`` with server_optimizer adam over a real broker; this test
    plays a region with one device, answering each announcement with a partial, and checks
    the globals the cloud announces and the moments it checkpoints against server_change."""
    rounds, region, client = 3, "south", "d1"
    config = FederationConfig.model_validate({
        "federation": {"name": "srvopt", "seed": 3},
        "model": {"path": "tiny-bert", "num_labels": 3},
        "rounds": rounds, "server_lr": 0.05, "server_optimizer": {"name": "adam"},
        "round_policy": {"deadline_s": 20}, "sampling": {"wait_for_clients_s": 20}})
    topics = Topics(config.federation.name)
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    announces: queue.Queue[bytes] = queue.Queue()
    summaries: list[RoundSummary] = []
    session = MqttSession(broker.url, client_id=f"region-{uuid.uuid4().hex[:6]}",
                          clean_session=True)
    session.subscribe(topics.announce, lambda _t, p: announces.put(p))
    session.subscribe_raw(topics.summary, lambda _t, p: summaries.append(
        decode_json(RoundSummary, p, max_bytes=1_000_000)))
    session.connect()
    # this test is the region's hub: the cloud selects only devices of served regions
    session.publish_raw(topics.status("regional", region), b'{"online": true}', retain=True)
    session.publish_raw(topics.presence(region, client),
                        encode_json(Presence(client=client, region=region, online=True)),
                        retain=True)
    log = (tmp_path / "cloud.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--role", "cloud", "--broker", broker.url,
         "--federation", config.federation.name, "--state-dir", str(tmp_path / "cloud"),
         "--config", str(tmp_path / "fed.yaml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        globals_, means, answered = [], [], set()
        gen = torch.Generator().manual_seed(0)
        while True:
            try:
                payload = announces.get(timeout=30)
            except queue.Empty:
                raise AssertionError((tmp_path / "cloud.log").read_text()) from None
            header, env = decode_message(AnnounceHeader, payload, max_bytes=10**8)
            if header.status == "finished":
                globals_.append(env.tensors)
                break
            if header.round in answered:
                continue  # a re-published copy of an announcement already answered
            answered.add(header.round)
            assert header.selected == {region: [client]}
            globals_.append(env.tensors)
            mean = {n: torch.randn(t.shape, generator=gen) * 0.01
                    for n, t in env.tensors.items()}
            means.append(mean)
            partial = PartialHeader(federation=config.federation.name, round=header.round,
                                    region=region, base_version=header.version, count=1,
                                    weight=1.0, accepted=[f"{client}:{header.round}"])
            session.publish(topics.partial(region), encode_message(partial, mean))
        assert proc.wait(timeout=30) == 0, (tmp_path / "cloud.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
        session.close()
    assert len(means) == rounds and [s.round for s in summaries] == [1, 2, 3]
    assert all(s.applied_step for s in summaries)
    # every announced global is the adam step from the previous one, exactly
    first = initial_global(config)
    assert sorted(globals_[0]) == sorted(means[0])
    assert all(torch.equal(globals_[0][n], first[n]) for n in globals_[0])
    state = None
    for rnd, mean in enumerate(means):
        change, state = server_change(mean, config.server_optimizer, config.server_step, state)
        want = apply_server_update(globals_[rnd], change)
        assert all(torch.equal(globals_[rnd + 1][n], want[n]) for n in want), rnd
    back = load_checkpoint(tmp_path / "cloud")
    assert back is not None and back.round == rounds and back.optimizer is not None
    assert state is not None and back.optimizer.steps == {n: rounds for n in means[0]}
    for n in means[0]:
        assert torch.equal(back.optimizer.m[n], state.m[n])
        assert torch.equal(back.optimizer.v[n], state.v[n])
