"""Activation checkpointing: the configuration, the switch on the model, the planner's choice
under a memory budget, and that it changes memory only, never the gradient (4-bit, CPU)."""

from __future__ import annotations

import random

import pytest
import torch
from pydantic import ValidationError

from edge_client.memory import MiB
from edge_client.microbatch import MicroBatchPlanner
from edge_client.training import TokenizedSplit, collate, train_steps
from fedsa_common.federation.config import FederationConfig, format_validation_error
from quant.adapters import AdapterModel, build_adapter_model, set_gradient_checkpointing


@pytest.fixture(scope="module")
def adapter() -> AdapterModel:
    """The tiny BERT on a 4-bit (nf4) base, as a device builds it."""
    spec = FederationConfig.model_validate({"model": {
        "path": "tiny-bert", "precision": "nf4", "max_length": 48, "num_labels": 3}}).model
    return build_adapter_model(spec, 3, seed=0)


def data(n: int = 8, width: int = 40) -> TokenizedSplit:
    rng = random.Random(0)
    rows = [[101, *(rng.randrange(1000, 20000) for _ in range(rng.randrange(5, width))), 102]
            for _ in range(n)]
    return TokenizedSplit(input_ids=rows, labels=[rng.randrange(3) for _ in rows])


def is_on(adapter: AdapterModel) -> bool:
    return adapter.model.get_base_model().is_activation_checkpointing


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("auto", "auto"),
                                            ("true", True), ("off", False)])
def test_config_accepts_true_false_auto(value, expected):
    tr = FederationConfig.model_validate({"training": {"gradient_checkpointing": value}}).training
    assert tr.gradient_checkpointing == expected


def test_config_rejects_other_values_naming_the_field_and_keeps_digests():
    with pytest.raises(ValidationError) as err:
        FederationConfig.model_validate({"training": {"gradient_checkpointing": "sometimes"}})
    assert "training.gradient_checkpointing" in format_validation_error(err.value, FederationConfig)
    # left out of dumps at its default (auto), so existing configurations digest as before
    assert "gradient_checkpointing" not in FederationConfig().model_dump()["training"]
    on = FederationConfig.model_validate({"training": {"gradient_checkpointing": True}})
    assert on.model_dump()["training"]["gradient_checkpointing"] is True
    assert on.digest() != FederationConfig().digest()


def test_the_option_switches_checkpointing_on_the_model(adapter):
    assert not is_on(adapter)
    result = train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-3,
                         gradient_checkpointing=True)
    assert result.checkpointing and is_on(adapter)
    result = train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-3,
                         gradient_checkpointing=False)
    assert not result.checkpointing and not is_on(adapter)
    # without a budget, auto leaves it off
    assert not train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-3).checkpointing


def grads(adapter: AdapterModel, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    set_gradient_checkpointing(adapter.model, checkpointing)
    assert is_on(adapter) is checkpointing
    split = data()
    ids, mask = collate(split.input_ids, 0)
    adapter.model.train()  # dropout on: checkpointing must replay the same masks
    adapter.model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out = adapter.model(input_ids=ids, attention_mask=mask,
                        labels=torch.tensor(split.labels))
    out.loss.backward()
    got = {n: p.grad.detach().clone() for n, p in adapter.trainable().items()}
    adapter.model.zero_grad(set_to_none=True)
    adapter.model.eval()
    return float(out.loss), got


def test_a_step_with_checkpointing_gives_the_same_loss_and_gradients(adapter):
    adapter.enable_all()
    loss_off, off = grads(adapter, False)
    loss_on, on = grads(adapter, True)
    set_gradient_checkpointing(adapter.model, False)
    assert torch.isfinite(torch.tensor(loss_on)) and loss_on == pytest.approx(loss_off, rel=1e-5)
    assert off.keys() == on.keys() and any("lora_A" in n for n in on)
    assert all(bool(off[n].abs().sum() > 0) for n in off)  # every trainable tensor learns
    for name in off:
        torch.testing.assert_close(on[name], off[name], rtol=1e-4, atol=1e-6, msg=name)


def test_planner_wants_checkpointing_only_when_one_sample_does_not_fit():
    p = MicroBatchPlanner(budget_bytes=1000 * MiB, safety=1.0, floor=900 * MiB,
                          per_token=1.0 * MiB, auto_checkpointing=True)
    assert not p.wants_checkpointing(50)  # 50 MiB for one sample: fits in 100
    assert p.wants_checkpointing(200)  # 200 MiB: micro-batching cannot help
    assert not MicroBatchPlanner(budget_bytes=1000 * MiB, safety=1.0, floor=900 * MiB,
                                 per_token=1.0 * MiB).wants_checkpointing(200)  # not allowed
    p.start_checkpointing()
    assert p.checkpointing and p.per_token is None  # measured afresh
    assert not p.wants_checkpointing(200)
    assert p.size(16, 200) == 1  # the probe again


def test_planner_turns_an_out_of_memory_single_sample_into_checkpointing():
    p = MicroBatchPlanner(auto_checkpointing=True)
    assert p.out_of_memory(1) == 1 and p.checkpointing  # retry with checkpointing
    assert p.out_of_memory(1) == 0  # and then it is over
    assert MicroBatchPlanner().out_of_memory(1) == 0


def test_a_budget_that_needs_it_switches_checkpointing_on_in_training(adapter):
    """A budget below the process's own size: no micro-batch fits, so under auto the
    planner switches checkpointing on (and keeps it for the next rounds); off stays off."""
    planner = MicroBatchPlanner.for_budget(1)  # 1 MiB
    result = train_steps(adapter, data(), steps=2, batch_size=4, lr=1e-3, planner=planner)
    assert result.checkpointing and planner.checkpointing
    assert result.micro_batch == 1 and torch.isfinite(torch.tensor(result.loss))
    again = train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-3, planner=planner)
    assert again.checkpointing
    never = train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-3,
                        planner=MicroBatchPlanner.for_budget(1), gradient_checkpointing=False)
    assert not never.checkpointing and not is_on(adapter)
