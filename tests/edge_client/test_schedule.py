"""Local work and learning-rate schedule of a round: the pure functions, the configuration
keys (absent from dumps at their defaults), and train_steps applying the schedule to both
parameter groups on a tiny random BERT."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from pydantic import ValidationError
from torch.optim.optimizer import register_optimizer_step_pre_hook

from edge_client.schedule import local_steps_for, lr_multiplier, round_lr_scale
from fedsa_common.federation.config import FederationConfig, TrainingSection


def test_fixed_steps_unless_epochs_are_set() -> None:
    assert local_steps_for(TrainingSection(local_steps=7), 10_000) == 7
    epochs = TrainingSection(local_steps=7, local_epochs=2.0, batch_size=16)
    assert local_steps_for(epochs, 100) == math.ceil(200 / 16) == 13
    assert local_steps_for(epochs, 1000) == 125  # more data, more work
    assert local_steps_for(TrainingSection(local_epochs=0.01, batch_size=16), 5) == 1
    with pytest.raises(ValueError, match="at least one training sample"):
        local_steps_for(epochs, 0)


def test_constant_schedule_is_one_everywhere() -> None:
    assert [lr_multiplier(s, 5) for s in range(5)] == [1.0] * 5


def test_warmup_rises_linearly_from_above_zero_to_one() -> None:
    assert [lr_multiplier(s, 6, warmup=3) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0,
                                                                  1.0]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_starts_at_one_after_warmup_and_falls_towards_zero(schedule) -> None:
    m = [lr_multiplier(s, 10, warmup=2, schedule=schedule) for s in range(10)]
    assert m[:2] == [1 / 3, 2 / 3]
    assert m[2] == 1.0
    assert all(a > b for a, b in pairwise(m[2:]))  # strictly decreasing
    assert 0.0 < m[-1] < 0.2  # the last step still moves; 0 is reached after it
    assert lr_multiplier(10, 10, warmup=2, schedule=schedule) == pytest.approx(0.0)


def test_linear_and_cosine_midpoints() -> None:
    assert lr_multiplier(2, 4, schedule="linear") == 0.5
    assert lr_multiplier(2, 4, schedule="cosine") == pytest.approx(0.5)
    assert lr_multiplier(1, 4, schedule="cosine") == pytest.approx((1 + math.cos(math.pi / 4))
                                                                   / 2)


def test_round_decay() -> None:
    assert round_lr_scale(0.5, 1) == 1.0
    assert round_lr_scale(0.5, 3) == 0.25
    assert round_lr_scale(1.0, 50) == 1.0


def test_round_decay_floor_keeps_a_long_federation_learning() -> None:
    # 0.9 ** 11 = 0.31: a 12-round federation never reaches the default floor of 0.3
    assert round_lr_scale(0.9, 12, 0.3) == pytest.approx(0.9 ** 11)
    assert round_lr_scale(0.9, 13, 0.3) == 0.3
    assert round_lr_scale(0.9, 50, 0.3) == 0.3
    assert round_lr_scale(0.9, 50) == pytest.approx(0.9 ** 49)
    assert round_lr_scale(1.0, 50, 0.3) == 1.0


@pytest.mark.parametrize(("algorithm", "decay"), [("fedsa", 0.9), ("fedit", 0.9),
                                                  ("ffa", 1.0), ("local", 0.9)])
def test_round_decay_default_depends_on_the_algorithm(algorithm: str, decay: float) -> None:
    config = FederationConfig.model_validate({"fedsa_lora": {"algorithm": algorithm}})
    assert config.round_lr_decay == decay
    assert "round_lr_decay" not in config.model_dump()["training"]
    set_ = FederationConfig.model_validate({"fedsa_lora": {"algorithm": algorithm},
                                            "training": {"round_lr_decay": 1.0}})
    assert set_.round_lr_decay == 1.0
    assert set_.model_dump()["training"]["round_lr_decay"] == 1.0


def test_schedule_keys_stay_out_of_dumps_at_their_defaults() -> None:
    plain = FederationConfig()
    assert set(plain.model_dump()["training"]) == {
        "local_steps", "batch_size", "lr", "head_lr", "weight_decay", "eval_batch_size",
        "autocast"}
    tuned = FederationConfig.model_validate({"training": {
        "local_epochs": 1.5, "warmup_steps": 2, "lr_schedule": "cosine",
        "round_lr_decay": 0.9, "b_lr_ratio": 16}})
    dumped = tuned.model_dump(mode="json")["training"]
    assert dumped["local_epochs"] == 1.5 and dumped["lr_schedule"] == "cosine"
    assert dumped["b_lr_ratio"] == 16
    assert FederationConfig.model_validate(tuned.model_dump(mode="json")) == tuned
    assert tuned.digest() != plain.digest()


@pytest.mark.parametrize("bad", [{"round_lr_decay": 1.5}, {"round_lr_decay": 0},
                                 {"lr_schedule": "step"}, {"warmup_steps": -1},
                                 {"local_epochs": 0}, {"b_lr_ratio": 0},
                                 {"round_lr_floor": 1.5}])
def test_bad_schedule_values_name_their_field(bad) -> None:
    with pytest.raises(ValidationError) as err:
        FederationConfig.model_validate({"training": bad})
    assert next(iter(bad)) in str(err.value)


@pytest.fixture(scope="module")
def tiny():
    from edge_client.data import DataSpec, load_device_data
    from edge_client.host import ModelHost
    from edge_client.training import tokenize

    cfg = FederationConfig.model_validate({"model": {"path": "tiny-bert", "precision": "nf4",
                                                     "max_length": 32, "num_labels": 3}})
    adapter = ModelHost().adapter(cfg)
    data = load_device_data(DataSpec(source="20newsgroups", classes=3, max_train=16,
                                     max_test=4))
    return adapter, tokenize(adapter, data.train.texts, data.train.labels)


def test_train_steps_applies_the_schedule_to_both_groups(tiny) -> None:
    from edge_client.training import train_steps

    adapter, tokens = tiny
    seen: list[list[float]] = []

    def record(optimizer: torch.optim.Optimizer, _args, _kwargs) -> None:
        seen.append([g["lr"] for g in optimizer.param_groups])

    adapter.enable_all()
    handle = register_optimizer_step_pre_hook(record)
    try:
        train_steps(adapter, tokens, steps=5, batch_size=4, lr=0.01, head_lr=0.1, seed=1,
                    warmup_steps=2, lr_schedule="linear")
    finally:
        handle.remove()
    expected = [lr_multiplier(s, 5, 2, "linear") for s in range(5)]
    assert [lora for lora, _ in seen] == pytest.approx([0.01 * m for m in expected])
    assert [head for _, head in seen] == pytest.approx([0.1 * m for m in expected])
    assert len({lora for lora, _ in seen}) == 5  # it really changed every step


def test_b_lr_ratio_gives_every_lora_b_its_own_rate_and_nothing_else(tiny) -> None:
    from edge_client.training import train_steps
    from fedsa_common.federation.split import role

    adapter, tokens = tiny
    rates: dict[str, float] = {}

    def record(optimizer: torch.optim.Optimizer, _args, _kwargs) -> None:
        names = {id(p): n for n, p in adapter.trainable().items()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                rates[names[id(p)]] = group["lr"]

    adapter.enable_all()
    handle = register_optimizer_step_pre_hook(record)
    try:
        train_steps(adapter, tokens, steps=1, batch_size=4, lr=0.01, head_lr=0.1,
                    b_lr_ratio=16, seed=1)
    finally:
        handle.remove()
    expected = {"lora_A": 0.01, "lora_B": 0.16, "head": 0.1}
    assert set(rates) == set(adapter.trainable())
    assert {n: r for n, r in rates.items()} == pytest.approx(
        {n: expected[role(n)] for n in rates})
