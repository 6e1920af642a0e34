"""Local training and evaluation of the adapter model on a device's own data.

Texts are tokenized once when the device starts (the tokenizer is the slow part on a small
CPU) and batches are padded only to their own longest sequence.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fedsa_common.split import role
from quant.adapters import AdapterModel


@dataclass(frozen=True)
class TokenizedSplit:
    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TrainResult:
    loss: float
    samples: int
    seconds: float


def tokenize(adapter: AdapterModel, texts: Sequence[str], labels: Sequence[int]) -> TokenizedSplit:
    enc = adapter.tokenizer(list(texts), truncation=True, max_length=adapter.max_length)
    return TokenizedSplit(input_ids=enc["input_ids"], labels=list(labels))


def collate(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def sample_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless shuffled passes over ``range(n)`` in batches (a short last batch is kept)."""
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def train_steps(
    adapter: AdapterModel,
    data: TokenizedSplit,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    head_lr: float | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> TrainResult:
    """Run ``steps`` optimizer steps on the currently trainable adapter parameters."""
    if len(data) == 0:
        raise ValueError("no training data on this device")
    start = time.perf_counter()
    trainable = adapter.trainable()
    groups = [
        {"params": [p for n, p in trainable.items() if role(n) != "head"], "lr": lr},
        {"params": [p for n, p in trainable.items() if role(n) == "head"], "lr": head_lr or lr},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay
    )
    pad_id = adapter.tokenizer.pad_token_id or 0
    batches = sample_batches(len(data), batch_size, torch.Generator().manual_seed(seed))
    adapter.model.train()
    torch.manual_seed(seed)  # dropout masks
    total, samples = 0.0, 0
    for _ in range(steps):
        idx = next(batches)
        ids, mask = collate([data.input_ids[i] for i in idx], pad_id)
        labels = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
        out = adapter.model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += float(out.loss.detach()) * len(idx)
        samples += len(idx)
    adapter.model.eval()
    return TrainResult(loss=total / samples, samples=samples, seconds=time.perf_counter() - start)


@torch.no_grad()
def evaluate(adapter: AdapterModel, data: TokenizedSplit, batch_size: int = 64) -> float:
    """Accuracy of the device's personalized model on its own test split."""
    if len(data) == 0:
        return 0.0
    adapter.model.eval()
    pad_id = adapter.tokenizer.pad_token_id or 0
    # Sorting by length keeps padding (and so wasted compute) small.
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    correct = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = collate([data.input_ids[i] for i in idx], pad_id)
        logits = adapter.model(input_ids=ids, attention_mask=mask).logits
        pred = logits.argmax(dim=-1).tolist()
        correct += sum(int(p == data.labels[i]) for p, i in zip(pred, idx, strict=True))
    return correct / len(data)
