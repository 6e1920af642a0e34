"""Local training and evaluation of the adapter model on a device's own data.

Texts are tokenized once when the device starts (the tokenizer is the slow part on a small
CPU) and batches are padded only to their own longest sequence.

A step always covers ``batch_size`` samples (the federation's effective batch, so every
device's update means the same thing), but forward and backward may run over smaller
micro-batches with gradients accumulated: the device's ``MicroBatchPlanner`` picks their
size to stay under its memory budget, and an out-of-memory error halves the size and
retries the step instead of failing the round.  Each micro-batch's mean loss is weighted by
its share of the batch, so the accumulated gradient is the full batch's.

Activation checkpointing (``training.gradient_checkpointing``) is on or off for the whole
run, or, under ``auto``, switched on by the planner when a memory budget needs it; it
changes memory and time, never the gradient.

A classifier's rows have one label each; a causal language model's rows (edge_client/
causal.py) have one label per token, ``IGNORE_INDEX`` where no loss is taken (the prompt,
the padding).  Its loss is the mean over answer tokens, so micro-batches are weighted by
their share of the batch's answer tokens rather than of its samples.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from edge_client.memory import PeakMeter, is_out_of_memory
from edge_client.meta import PerFedAvg, meta_backward
from edge_client.microbatch import MicroBatchPlanner
from edge_client.schedule import Schedule, lr_multiplier
from fedsa_common.federation.split import role
from quant.adapters import AdapterModel, set_gradient_checkpointing

log = logging.getLogger("fedsa.device")

Autocast = Literal["none", "bf16"]
Checkpointing = bool | Literal["auto"]
IGNORE_INDEX = -100  # a token label that carries no loss (transformers' ignore index)
Label = int | list[int]  # a classifier's class, or a causal model's per-token labels


@dataclass(frozen=True)
class TokenizedSplit:
    input_ids: list[list[int]]
    labels: Sequence[Label]

    def __len__(self) -> int:
        return len(self.labels)


def row_weight(label: Label) -> int:
    """What one row adds to its batch's mean loss: 1 for a class, else its labelled tokens
    (the model predicts each from the one before; the first token is never labelled)."""
    if isinstance(label, int):
        return 1
    return sum(1 for t in label[1:] if t != IGNORE_INDEX)


def label_tensor(labels: Sequence[Label], width: int) -> torch.Tensor:
    """The labels of a batch padded to ``width`` tokens: classes as they are, token labels
    padded with ``IGNORE_INDEX`` (the padding carries no loss)."""
    if all(isinstance(y, int) for y in labels):
        return torch.tensor(labels, dtype=torch.long)
    out = torch.full((len(labels), width), IGNORE_INDEX, dtype=torch.long)
    for i, y in enumerate(labels):
        out[i, : len(y)] = torch.tensor(y, dtype=torch.long)  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class TrainResult:
    loss: float
    samples: int
    seconds: float
    micro_batch: int = 0  # the largest micro-batch that ran
    peak_rss: int | None = None  # measured under a memory budget only
    checkpointing: bool = False  # whether activation checkpointing was on at the end
    # mean squared batch gradient per trainable tensor (a diagonal-Fisher proxy), only when
    # train_steps was asked for it: the adaptive split's per-module importance
    importance: dict[str, float] | None = None


@dataclass(frozen=True)
class StepInfo:
    """Progress after one optimizer step, for progress lines and logs."""

    step: int
    steps: int
    loss: float
    samples: int
    micro_batch: int
    seconds: float
    peak_rss: int | None


class MicroBatchOutOfMemory(Exception):
    """A micro-batch of ``size`` samples failed to allocate; ``error`` is the original."""

    def __init__(self, size: int, error: BaseException) -> None:
        super().__init__(f"out of memory with a micro-batch of {size}: {error}")
        self.size = size
        self.error = error


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


@cache
def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16/AMX on x86, BF16 on Arm); without
    it bf16 autocast is emulated and slower than fp32."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))


def compute_context(autocast: Autocast, model: torch.nn.Module | None = None
                    ) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the forward pass's precision context: fp32, or bf16 autocast where the
    CPU supports it (falling back with a warning, since emulation is slower than fp32).

    An fp16 base already computes in fp16, and bf16 autocast over it mixes the two half
    formats (CPU layer norm refuses that), so it keeps its own precision.
    """
    if autocast == "bf16":
        if model is not None and any(p.dtype == torch.float16 for p in model.parameters()):
            log.warning("training.autocast=bf16 ignored: the base is fp16")
        elif cpu_has_bf16():
            return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        else:
            log.warning("training.autocast=bf16 but this CPU has no bf16 instructions; "
                        "using fp32")
    elif autocast != "none":
        raise ValueError(f"unknown autocast {autocast!r}; allowed: none, bf16")
    return contextlib.nullcontext


def _next_size(adapter: AdapterModel, planner: MicroBatchPlanner, remaining: int, width: int
               ) -> int:
    """The planner's next micro-batch size, after switching checkpointing on if it asks."""
    if planner.wants_checkpointing(width):
        planner.start_checkpointing()
        set_gradient_checkpointing(adapter.model, True)
    return planner.size(remaining, width)


def accumulate(
    adapter: AdapterModel,
    rows: Sequence[list[int]],
    labels: Sequence[Label],
    *,
    pad_id: int,
    planner: MicroBatchPlanner,
    meter: PeakMeter | None = None,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[float, int]:
    """Forward and backward over one batch in micro-batches, leaving the batch-mean loss's
    gradient in ``.grad``.  Returns (sum of per-sample losses, or per-token ones for a
    causal model: see ``row_weight``; largest micro-batch).

    When the batch is split, rows go longest first so that later micro-batches pad less.
    """
    n = len(rows)
    weight = sum(row_weight(y) for y in labels)
    order = list(range(n))
    size = _next_size(adapter, planner, n, max(len(r) for r in rows))
    if size < n:
        order.sort(key=lambda i: -len(rows[i]))
    total, start, largest = 0.0, 0, 0
    while start < n:
        if start:
            size = _next_size(adapter, planner, n - start, len(rows[order[start]]))
        part = order[start : start + size]
        ids, mask = collate([rows[i] for i in part], pad_id)
        y = label_tensor([labels[i] for i in part], ids.shape[1])
        part_weight = sum(row_weight(labels[i]) for i in part)
        if meter is not None:
            meter.mark()
        try:
            with amp():
                out = adapter.model(input_ids=ids, attention_mask=mask, labels=y)
                generic = adapter.generic_loss(y)  # a personal head's shared model
            loss = out.loss if generic is None else out.loss + generic
            loss = loss if len(part) == n else loss * (part_weight / weight)
            loss.backward()
        except (RuntimeError, MemoryError) as err:
            if is_out_of_memory(err):
                raise MicroBatchOutOfMemory(len(part), err) from err
            raise
        if meter is not None:
            planner.observe(len(part), ids.shape[1], meter.read())
        total += float(out.loss.detach()) * part_weight
        largest = max(largest, len(part))
        start += len(part)
    return total, largest


def train_steps(
    adapter: AdapterModel,
    data: TokenizedSplit,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    head_lr: float | None = None,
    b_lr_ratio: float = 1.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    planner: MicroBatchPlanner | None = None,
    micro_batch: int | None = None,
    autocast: Autocast = "none",
    on_step: Callable[[StepInfo], None] | None = None,
    proximal: Proximal | None = None,
    importance: bool = False,
    warmup_steps: int = 0,
    lr_schedule: Schedule = "constant",
    gradient_checkpointing: Checkpointing = "auto",
    meta: PerFedAvg | None = None,
) -> TrainResult:
    """Run ``steps`` optimizer steps on the currently trainable adapter parameters.

    ``planner`` (kept by the device across rounds) sizes micro-batches under a memory
    budget; without one, ``micro_batch`` fixes their largest size (None: the whole batch).
    ``proximal`` pulls the named parameters towards their anchors (FedProx);
    ``importance`` also returns each trainable tensor's mean squared gradient.
    ``b_lr_ratio`` sets the LoRA B matrices' rate to that multiple of ``lr`` (LoRA+).
    ``warmup_steps``/``lr_schedule`` scale every learning rate step by step
    (``schedule.lr_multiplier``; the defaults keep them constant).
    ``gradient_checkpointing``: on, off, or ``auto`` (the planner's choice under a budget).
    ``meta`` (Per-FedAvg, edge_client/meta.py): each step takes two batches, the first for
    the inner step, the second for the gradient the optimizer applies; the loss reported is
    the second's (and so is ``importance``), the samples both.
    """
    if len(data) == 0:
        raise ValueError("no training data on this device")
    planner = planner or MicroBatchPlanner(ceiling=micro_batch)
    auto = gradient_checkpointing == "auto"
    planner.auto_checkpointing = auto
    set_gradient_checkpointing(adapter.model, planner.checkpointing if auto
                               else bool(gradient_checkpointing))
    amp = compute_context(autocast, adapter.model)
    start = time.perf_counter()
    trainable = adapter.trainable()
    rates = {"head": head_lr or lr, "personal": head_lr or lr,
             "lora_B": lr * b_lr_ratio}  # the rest (A): lr
    rate_of = {n: rates.get(role(n), lr) for n in trainable}
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for n, p in trainable.items():
        groups.setdefault(rate_of[n], []).append(p)
    inner_rates = meta.inner_rates(rate_of, lr) if meta is not None else {}
    optimizer = torch.optim.AdamW(
        [{"params": ps, "lr": rate} for rate, ps in groups.items()], lr=lr,
        weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_multiplier(i, steps, warmup_steps, lr_schedule))
    pad_id = adapter.tokenizer.pad_token_id or 0
    batches = sample_batches(len(data), batch_size, torch.Generator().manual_seed(seed))
    adapter.model.train()
    torch.manual_seed(seed)  # dropout masks
    total, samples, weight, largest = 0.0, 0, 0, 0
    fisher = {n: 0.0 for n in trainable} if importance else None
    with PeakMeter() if planner.measuring else contextlib.nullcontext() as meter:
        def backward(idx: list[int]) -> tuple[float, int]:
            """The batch's gradient in ``.grad`` (retried with smaller micro-batches on
            out-of-memory errors): its summed loss and largest micro-batch."""
            rows = [data.input_ids[i] for i in idx]
            labels = [data.labels[i] for i in idx]
            while True:
                try:
                    return accumulate(adapter, rows, labels, pad_id=pad_id,
                                      planner=planner, meter=meter, amp=amp)
                except MicroBatchOutOfMemory as oom:
                    optimizer.zero_grad(set_to_none=True)
                    if not planner.out_of_memory(oom.size):
                        raise oom.error from None
                    if planner.checkpointing:  # auto: switched on for lack of memory
                        set_gradient_checkpointing(adapter.model, True)
                gc.collect()  # outside the handler: the failed step's tensors are gone now

        for step in range(steps):
            idx = next(batches)
            if meta is not None:
                first = idx
                idx = next(batches)
                samples += len(first)
                step_loss, used = meta_backward(trainable, inner_rates,
                                                lambda b=first: backward(b),
                                                lambda b=idx: backward(b))
            else:
                step_loss, used = backward(idx)
            labels = [data.labels[i] for i in idx]
            if fisher is not None:
                accumulate_importance(fisher, trainable)
            if proximal is not None:
                proximal.add_to_grad(trainable)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if meter is not None:
                meter.read()
            step_weight = max(1, sum(row_weight(y) for y in labels))
            total += step_loss
            samples += len(idx)
            weight += step_weight
            largest = max(largest, used)
            if on_step is not None:
                on_step(StepInfo(step=step + 1, steps=steps, loss=step_loss / step_weight,
                                 samples=samples, micro_batch=used,
                                 seconds=time.perf_counter() - start,
                                 peak_rss=meter.overall if meter is not None else None))
    adapter.model.eval()
    return TrainResult(loss=total / weight, samples=samples, seconds=time.perf_counter() - start,
                       micro_batch=largest, peak_rss=meter.overall if meter is not None else None,
                       checkpointing=adapter.model.get_base_model().is_activation_checkpointing,
                       importance=({n: v / steps for n, v in fisher.items()}
                                   if fisher is not None else None))


@dataclass(frozen=True)
class Proximal:
    """FedProx's term ``mu/2 * ||w - anchor||^2`` over the anchored parameters.

    Added to the gradient (``mu * (w - anchor)``) rather than to the loss, so it costs no
    autograd graph and is exact however the batch is split into micro-batches.
    """

    mu: float
    anchors: dict[str, torch.Tensor]

    def add_to_grad(self, params: dict[str, torch.nn.Parameter]) -> None:
        if self.mu == 0:
            return
        for name, anchor in self.anchors.items():
            p = params.get(name)
            if p is None:
                continue
            pull = (p.detach() - anchor.to(p.dtype)) * self.mu
            if p.grad is None:
                p.grad = pull
            else:
                p.grad.add_(pull)


def accumulate_importance(fisher: dict[str, float], params: dict[str, torch.nn.Parameter]
                          ) -> None:
    """Add each tensor's mean squared batch-loss gradient (before any proximal pull)."""
    for name, p in params.items():
        if p.grad is not None:
            fisher[name] += float(p.grad.detach().to(torch.float32).pow(2).mean())


Scorer = Callable[[list[int], torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def eval_batches(adapter: AdapterModel, data: TokenizedSplit, batch_size: int, score: Scorer,
                 *, planner: MicroBatchPlanner | None = None) -> None:
    """Run ``score(rows, input_ids, attention_mask)`` over ``data`` in batches (in eval mode,
    shortest rows first, so padding and wasted compute stay small).

    Under a memory budget the batch is also capped by the planner (whose training estimate
    overstates inference, which keeps no activations for backward), and halved on
    out-of-memory errors; ``score`` must then leave no trace of a batch that failed.
    """
    adapter.model.eval()
    pad_id = adapter.tokenizer.pad_token_id or 0
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    start, cap = 0, batch_size
    while start < len(order):
        size = min(cap, len(order) - start)
        if planner is not None and planner.per_token is not None:
            width = len(data.input_ids[order[min(start + size, len(order)) - 1]])
            size = min(size, planner.size(size, width))
        idx = order[start : start + size]
        ids, mask = collate([data.input_ids[i] for i in idx], pad_id)
        try:
            score(idx, ids, mask)
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err) or size <= 1:
                raise
            cap = size // 2
            continue
        start += size


def evaluate(adapter: AdapterModel, data: TokenizedSplit, batch_size: int = 64, *,
             planner: MicroBatchPlanner | None = None, autocast: Autocast = "none") -> float:
    """Accuracy of the device's personalized classifier on its own test split."""
    if len(data) == 0:
        return 0.0
    amp = compute_context(autocast, adapter.model)
    correct = 0

    def score(idx: list[int], ids: torch.Tensor, mask: torch.Tensor) -> None:
        nonlocal correct
        with amp():
            logits = adapter.model(input_ids=ids, attention_mask=mask).logits
        pred = logits.argmax(dim=-1).tolist()
        correct += sum(int(p == data.labels[i]) for p, i in zip(pred, idx, strict=True))

    eval_batches(adapter, data, batch_size, score, planner=planner)
    return correct / len(data)
