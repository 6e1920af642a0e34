"""Personalization on a tiny random BERT: the proximal term pulls shared tensors toward the
round's global values, local fine-tuning moves only local tensors."""

from __future__ import annotations

import pytest
import torch

from edge_client.data import DataSpec, load_device_data
from edge_client.host import ModelHost
from edge_client.personalize import finetune_local, proximal_for
from edge_client.training import tokenize, train_steps
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import local_names, shared_names, trainable_names

MODEL = {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3}


def config(**personalization) -> FederationConfig:
    return FederationConfig.model_validate({
        "federation": {"seed": 2}, "model": MODEL,
        "fedsa_lora": {"personalization": personalization},
        "training": {"local_steps": 4, "batch_size": 8, "lr": 0.01}})


@pytest.fixture(scope="module")
def setup():
    host = ModelHost()
    adapter = host.adapter(config())
    data = load_device_data(DataSpec(source="20newsgroups", classes=3, max_train=32,
                                     max_test=8))
    tokens = tokenize(adapter, data.train.texts, data.train.labels)
    return adapter, tokens, adapter.get()


def distance(values: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor]) -> float:
    return sum(float((values[n] - anchors[n]).pow(2).sum()) for n in anchors) ** 0.5


def test_no_proximal_term_at_mu_zero() -> None:
    assert proximal_for(config(), {"a": torch.zeros(1)}) is None
    assert proximal_for(config(proximal_mu=0.5), {}) is None


def test_proximal_term_pulls_shared_tensors_toward_the_global_values(setup) -> None:
    adapter, tokens, start = setup
    shared = shared_names(adapter.names, "fedsa")
    # the round's global values, away from where the device starts
    anchors = {n: start[n] + 0.2 for n in shared}

    def train(mu: float) -> dict[str, torch.Tensor]:
        adapter.set(start)
        adapter.set_trainable(trainable_names(adapter.names, "fedsa"))
        prox = proximal_for(config(proximal_mu=mu), anchors)
        assert (prox is None) == (mu == 0)
        train_steps(adapter, tokens, steps=4, batch_size=8, lr=0.01, seed=7, proximal=prox)
        out = adapter.get()
        adapter.enable_all()
        return out

    free, pulled = train(0.0), train(50.0)
    assert distance(pulled, anchors) < distance(free, anchors) - 1e-3
    assert distance(pulled, anchors) < distance(start, anchors)
    # local tensors have no anchor; both runs still trained them
    b = next(n for n in local_names(adapter.names, "fedsa") if ".lora_B." in n)
    assert not torch.equal(pulled[b], start[b])


def test_fine_tuning_moves_only_local_tensors(setup) -> None:
    adapter, tokens, start = setup
    adapter.set(start)
    names = adapter.names
    local, trainable = local_names(names, "fedsa"), trainable_names(names, "fedsa")
    assert finetune_local(adapter, tokens, config(), local, trainable, seed=3) is None
    result = finetune_local(adapter, tokens, config(finetune_steps=3), local, trainable, seed=3)
    assert result is not None and result.samples == 3 * 8
    after = adapter.get()
    adapter.enable_all()
    for n in shared_names(names, "fedsa"):
        assert torch.equal(after[n], start[n]), n
    assert any(not torch.equal(after[n], start[n]) for n in local)
