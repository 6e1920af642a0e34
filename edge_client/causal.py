"""A causal language model's data and evaluation on a device: prompt/response pairs.

Each pair becomes one row ``[bos] prompt answer [eos]`` whose labels are ``IGNORE_INDEX`` on
the begin-of-sequence token and the prompt, so the loss (and the gradient) comes from the
answer tokens alone: the model learns to answer, not to write prompts.  The end-of-sequence
token is part of the answer, so the model learns where an answer stops, which greedy
decoding needs for an exact match.  A row longer than ``max_length`` keeps its answer and
drops the prompt's beginning (the part farthest from the answer).

Evaluation on the held-out split reports the mean loss per answer token, its perplexity,
and the share of prompts whose greedy-decoded answer is exactly the reference (compared as
the tokenizer decodes both, without special tokens, ignoring surrounding whitespace).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from edge_client.microbatch import MicroBatchPlanner
from edge_client.training import (
    IGNORE_INDEX,
    Autocast,
    TokenizedSplit,
    compute_context,
    eval_batches,
    label_tensor,
    row_weight,
)
from quant.adapters import AdapterModel

MAX_ANSWER_TOKENS = 32  # greedy decoding stops here: longer answers never match exactly
MAX_LOG_PERPLEXITY = 700.0  # exp() of more overflows a float; no trained model gets near


def tokenize_pairs(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                   responses: Sequence[str], max_length: int) -> TokenizedSplit:
    """Rows of ``[bos] prompt answer [eos]`` with labels on the answer and eos only."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("model.path: its tokenizer has no end-of-sequence token, which a "
                         "causal model needs to end its answers")
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows, labels = [], []
    for prompt, answer in zip(prompt_ids, answer_ids, strict=True):
        answer = [*answer, eos][: max_length - len(bos) - 1]  # room for one token before
        keep = max_length - len(bos) - len(answer)  # >= 1
        head = bos + prompt[max(0, len(prompt) - keep):]
        rows.append(head + answer)
        labels.append([IGNORE_INDEX] * len(head) + answer)
    return TokenizedSplit(input_ids=rows, labels=labels)


def prompt_part(ids: list[int], labels: list[int], eos: int | None
                ) -> tuple[list[int], list[int]]:
    """A row's prompt (with bos) and its reference answer (without its final eos, which
    truncation may have cut)."""
    start = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
    answer = [t for t in labels[start:] if t != IGNORE_INDEX]
    return ids[:start], answer[:-1] if answer and answer[-1] == eos else answer


@dataclass(frozen=True)
class CausalScore:
    loss: float  # mean loss per answer token on the held-out split
    perplexity: float  # exp(loss)
    exact_match: float  # share of prompts whose greedy answer is the reference


def left_padded(prompts: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts padded on the left, so every row's next token comes at the same position."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def greedy_answers(adapter: AdapterModel, prompts: Sequence[list[int]], max_new_tokens: int
                   ) -> list[list[int]]:
    """Each prompt's greedy continuation, up to (not including) its first eos."""
    tokenizer = adapter.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = left_padded(prompts, pad_id)
    out = adapter.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                 eos_token_id=tokenizer.eos_token_id)
    answers = []
    for row in out[:, ids.shape[1]:].tolist():
        eos = tokenizer.eos_token_id
        answers.append(row[: row.index(eos)] if eos in row else row)
    return answers


def same_answer(tokenizer: PreTrainedTokenizerBase, got: list[int], want: list[int]) -> bool:
    def text(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True)).strip()
    return text(got) == text(want)


def evaluate_causal(adapter: AdapterModel, data: TokenizedSplit, batch_size: int = 64, *,
                    planner: MicroBatchPlanner | None = None, autocast: Autocast = "none"
                    ) -> CausalScore:
    """Held-out loss, perplexity and exact match of the device's personalized model."""
    if len(data) == 0:
        return CausalScore(loss=0.0, perplexity=1.0, exact_match=0.0)
    amp = compute_context(autocast, adapter.model)
    loss_sum, tokens, matches = 0.0, 0, 0

    def score(idx: list[int], ids: torch.Tensor, mask: torch.Tensor) -> None:
        nonlocal loss_sum, tokens, matches
        labels = [data.labels[i] for i in idx]
        weight = sum(row_weight(y) for y in labels)
        parts = [prompt_part(data.input_ids[i], data.labels[i],  # type: ignore[arg-type]
                             adapter.tokenizer.eos_token_id) for i in idx]
        longest = min(max(len(want) for _, want in parts) + 1, MAX_ANSWER_TOKENS)
        with amp():
            out = adapter.model(input_ids=ids, attention_mask=mask,
                                labels=label_tensor(labels, ids.shape[1]))
            got = greedy_answers(adapter, [prompt for prompt, _ in parts], longest)
        loss_sum += float(out.loss) * weight  # only once the whole batch succeeded
        tokens += weight
        matches += sum(same_answer(adapter.tokenizer, g, want)
                       for g, (_, want) in zip(got, parts, strict=True))

    eval_batches(adapter, data, batch_size, score, planner=planner)
    loss = loss_sum / max(tokens, 1)
    return CausalScore(loss=loss, perplexity=math.exp(min(loss, MAX_LOG_PERPLEXITY)),
                       exact_match=matches / len(data))
