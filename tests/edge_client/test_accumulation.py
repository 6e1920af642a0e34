"""Gradient accumulation equals the full-batch update, and out-of-memory errors shrink the
micro-batch instead of failing the round (tiny fp32 BERT, dropout off)."""

from __future__ import annotations

import random

import pytest
import torch

from edge_client.microbatch import MicroBatchPlanner
from edge_client.training import (
    TokenizedSplit,
    accumulate,
    cpu_has_bf16,
    evaluate,
    train_steps,
)
from fedsa_common.federation.config import ModelSection
from quant.adapters import AdapterModel, build_adapter_model

OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes."


def tiny_adapter() -> AdapterModel:
    spec = ModelSection(path="tiny-bert", precision="fp32", max_length=48, num_labels=3,
                        lora={"dropout": 0.0})
    adapter = build_adapter_model(spec, 3, seed=0)
    for module in adapter.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    g = torch.Generator().manual_seed(1)
    adapter.set({n: torch.randn(p.shape, generator=g) * 0.1  # B != 0: A gets gradients
                 for n, p in adapter.params.items() if ".lora_B." in n})
    return adapter


def data(n: int = 40, seed: int = 0) -> TokenizedSplit:
    rng = random.Random(seed)
    rows = [[101, *(rng.randrange(1000, 5000) for _ in range(rng.randrange(3, 40))), 102]
            for _ in range(n)]
    return TokenizedSplit(input_ids=rows, labels=[rng.randrange(3) for _ in range(n)])


@pytest.fixture(scope="module")
def adapter() -> AdapterModel:
    return tiny_adapter()


def grads(adapter: AdapterModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in adapter.trainable().items()}


def test_four_micro_batches_of_four_equal_one_batch_of_sixteen(adapter):
    split = data(16)
    adapter.model.train()
    runs = {}
    for micro in (None, 4):
        adapter.model.zero_grad(set_to_none=True)
        total, largest = accumulate(adapter, split.input_ids, split.labels, pad_id=0,
                                    planner=MicroBatchPlanner(ceiling=micro))
        runs[micro] = (total, largest, grads(adapter))
    adapter.model.zero_grad(set_to_none=True)
    (full_loss, full_size, full), (acc_loss, acc_size, acc) = runs[None], runs[4]
    assert (full_size, acc_size) == (16, 4)
    assert acc_loss == pytest.approx(full_loss, rel=1e-5)
    assert set(acc) == set(full)
    assert any(g.abs().sum() > 0 for n, g in full.items() if ".lora_A." in n)
    for name in full:
        torch.testing.assert_close(acc[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_train_steps_with_micro_batches_matches_full_batches(adapter):
    start = adapter.get()
    results = {}
    for micro in (None, 4, 3):
        adapter.set(start)
        r = train_steps(adapter, data(), steps=3, batch_size=16, lr=1e-2, seed=5,
                        micro_batch=micro)
        results[micro] = (r, adapter.get())
    adapter.set(start)
    ref_result, ref = results[None]
    assert ref_result.micro_batch == 16
    for micro in (4, 3):
        result, params = results[micro]
        assert result.micro_batch == micro
        assert result.samples == ref_result.samples
        assert result.loss == pytest.approx(ref_result.loss, rel=1e-4)
        for name in ref:
            torch.testing.assert_close(params[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)


class FailsAbove(torch.nn.Module):
    """The wrapped model, except that batches larger than ``limit`` run out of memory."""

    def __init__(self, model: torch.nn.Module, limit: int, error: type[BaseException]) -> None:
        super().__init__()
        self.inner = model
        self.limit = limit
        self.error = error
        self.sizes: list[int] = []

    def get_base_model(self) -> torch.nn.Module:
        """The wrapped peft model's base (training switches activation checkpointing there)."""
        return self.inner.get_base_model()

    def forward(self, input_ids, **kwargs):
        self.sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise self.error(OOM)
        return self.inner(input_ids=input_ids, **kwargs)


@pytest.mark.parametrize("error", [RuntimeError, MemoryError, torch.OutOfMemoryError])
def test_out_of_memory_halves_the_micro_batch_and_the_round_completes(adapter, error):
    start = adapter.get()
    reference = train_steps(adapter, data(), steps=3, batch_size=16, lr=1e-2, seed=2)
    expected = adapter.get()
    adapter.set(start)
    model = adapter.model
    adapter.model = FailsAbove(model, limit=5, error=error)
    planner = MicroBatchPlanner()
    try:
        result = train_steps(adapter, data(), steps=3, batch_size=16, lr=1e-2, seed=2,
                             planner=planner)
        sizes = adapter.model.sizes
    finally:
        adapter.model = model
    assert sizes[:3] == [16, 8, 4]  # 16 fails, 8 fails, 4 fits and stays
    assert set(sizes[3:]) == {4}
    assert planner.ceiling == 4 and result.micro_batch == 4
    assert result.loss == pytest.approx(reference.loss, rel=1e-4)
    for name, value in adapter.get().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=name)
    adapter.set(start)


def test_out_of_memory_with_one_sample_fails_and_other_errors_pass_through(adapter):
    model = adapter.model
    try:
        adapter.model = FailsAbove(model, limit=0, error=RuntimeError)
        with pytest.raises(RuntimeError, match="can't allocate"):
            train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-2)
        # one sample failing switches activation checkpointing on (gradient_checkpointing
        # auto) and tries it once more before giving up
        assert adapter.model.sizes == [4, 2, 1, 1]
        adapter.model = FailsAbove(model, limit=0, error=RuntimeError)
        with pytest.raises(RuntimeError, match="can't allocate"):
            train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-2,
                        gradient_checkpointing=False)
        assert adapter.model.sizes == [4, 2, 1]
        adapter.model = FailsAbove(model, limit=0, error=ValueError)
        with pytest.raises(ValueError):
            train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-2)
        assert adapter.model.sizes == [4]
    finally:
        adapter.model = model


def test_evaluate_halves_its_batch_on_out_of_memory(adapter):
    split = data(30)
    expected = evaluate(adapter, split, batch_size=64)
    model = adapter.model
    try:
        adapter.model = FailsAbove(model, limit=7, error=RuntimeError)
        assert evaluate(adapter, split, batch_size=64) == expected
    finally:
        adapter.model = model


@pytest.mark.skipif(not cpu_has_bf16(), reason="CPU without bf16 instructions")
def test_bf16_autocast_trains_close_to_fp32(adapter):
    start = adapter.get()
    fp32 = train_steps(adapter, data(), steps=2, batch_size=16, lr=1e-2, seed=1)
    adapter.set(start)
    bf16 = train_steps(adapter, data(), steps=2, batch_size=16, lr=1e-2, seed=1,
                       autocast="bf16")
    adapter.set(start)
    assert bf16.loss == pytest.approx(fp32.loss, rel=0.05)


def test_unknown_autocast_is_an_error(adapter):
    with pytest.raises(ValueError, match="autocast"):
        train_steps(adapter, data(), steps=1, batch_size=4, lr=1e-2, autocast="fp8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_bases_train_their_head_in_fp32(precision):
    spec = ModelSection(path="tiny-bert", precision=precision, max_length=48, num_labels=3)
    adapter = build_adapter_model(spec, 3, seed=0)
    assert all(p.dtype == torch.float32 for p in adapter.trainable().values())
    result = train_steps(adapter, data(), steps=2, batch_size=8, lr=1e-3, autocast="bf16")
    assert torch.isfinite(torch.tensor(result.loss))
    assert all(torch.isfinite(p).all() for p in adapter.trainable().values())
