"""Prompt/response data for causal language models: the data spec's ``format=prompt_response``
(a JSONL file, partitioned like labelled data), the masking of prompt and padding tokens out
of the loss, micro-batches weighted by answer tokens, and exact match by greedy decoding
(on the tiny random Llama, fp32, dropout off)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from edge_client.causal import (
    evaluate_causal,
    greedy_answers,
    prompt_part,
    tokenize_pairs,
)
from edge_client.data import DataError, check_device_data
from edge_client.microbatch import MicroBatchPlanner
from edge_client.training import IGNORE_INDEX, accumulate, label_tensor, row_weight
from fedsa_common.federation.config import ModelSection
from quant.adapters import AdapterModel, build_adapter_model
from quant.base_model import tiny_causal_path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_causal_path())


@pytest.fixture(scope="module")
def adapter() -> AdapterModel:
    spec = ModelSection(task="causal_lm", path="tiny-causal", precision="fp32", max_length=32,
                        lora={"dropout": 0.0})
    adapter = build_adapter_model(spec, 0, seed=0, init="b_random")
    adapter.model.eval()
    return adapter


def write_pairs(path: Path, n: int, **extra: str) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"what is {i} plus one ?",
                                        "response": f"{i + 1}", **extra}) + "\n"
                            for i in range(n)))
    return path


def test_only_the_answer_and_its_end_carry_loss(tokenizer) -> None:
    split = tokenize_pairs(tokenizer, ["what is two plus two ?"], ["four"], max_length=32)
    ids, labels = split.input_ids[0], split.labels[0]
    prompt = tokenizer("what is two plus two ?", add_special_tokens=False)["input_ids"]
    answer = tokenizer("four", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.bos_token_id, *prompt, *answer, tokenizer.eos_token_id]
    assert labels == [IGNORE_INDEX] * (1 + len(prompt)) + [*answer, tokenizer.eos_token_id]
    assert row_weight(labels) == len(answer) + 1
    eos = tokenizer.eos_token_id
    assert prompt_part(ids, labels, eos) == ([tokenizer.bos_token_id, *prompt], answer)
    # padding carries no loss either
    padded = label_tensor([labels, labels[:3]], width=len(labels))
    assert padded[1, 3:].eq(IGNORE_INDEX).all() and padded[0].tolist() == labels


def test_a_long_row_keeps_its_answer_and_drops_the_prompts_beginning(tokenizer) -> None:
    prompt = " ".join(f"word{i}" for i in range(40))
    split = tokenize_pairs(tokenizer, [prompt], ["the answer"], max_length=16)
    ids, labels = split.input_ids[0], split.labels[0]
    answer = tokenizer("the answer", add_special_tokens=False)["input_ids"]
    assert len(ids) == 16 and ids[0] == tokenizer.bos_token_id
    assert labels[-len(answer) - 1:] == [*answer, tokenizer.eos_token_id]
    full = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[1 : 16 - len(answer) - 1] == full[-(16 - len(answer) - 2):]  # the prompt's end


def test_micro_batches_weighted_by_answer_tokens_equal_the_whole_batch(adapter, tokenizer):
    prompts = [f"question {i} " + "filler " * (i % 5) for i in range(8)]
    answers = ["a", "b c d e f", "g", "h i", "j k l", "m", "n o p q r s", "t"]
    split = tokenize_pairs(tokenizer, prompts, answers, max_length=32)
    g = torch.Generator().manual_seed(1)
    adapter.set({n: torch.randn(p.shape, generator=g) * 0.1
                 for n, p in adapter.params.items()})  # A and B != 0: both get gradients
    runs = {}
    for micro in (None, 1):
        adapter.model.zero_grad(set_to_none=True)
        total, _ = accumulate(adapter, split.input_ids, split.labels,
                              pad_id=tokenizer.pad_token_id,
                              planner=MicroBatchPlanner(ceiling=micro))
        runs[micro] = (total, {n: p.grad.clone() for n, p in adapter.trainable().items()})
    whole, single = runs[None], runs[1]
    assert single[0] == pytest.approx(whole[0], rel=1e-5)
    for name, grad in whole[1].items():
        torch.testing.assert_close(single[1][name], grad, rtol=1e-4, atol=1e-6)


def test_greedy_answers_of_a_batch_are_each_prompts_own(adapter, tokenizer) -> None:
    split = tokenize_pairs(tokenizer, ["one", "what is the colour of item 3 ?", "a b c d e"],
                           ["x"] * 3, max_length=32)
    prompts = [prompt_part(i, y, tokenizer.eos_token_id)[0]
               for i, y in zip(split.input_ids, split.labels, strict=True)]
    batched = greedy_answers(adapter, prompts, 5)
    assert batched == [greedy_answers(adapter, [p], 5)[0] for p in prompts]
    assert all(batched)


@contextlib.contextmanager
def answers_always(adapter: AdapterModel, word: int, eos: int) -> Iterator[None]:
    """Make the model's next token ``word`` after anything but ``word``, and ``eos`` after
    it: every greedy answer is then ``word`` alone (hooks on the real forward pass)."""
    base = adapter.model.get_base_model()
    last: list[torch.Tensor] = []

    def see_inputs(_module, _args, kwargs):
        last[:] = [kwargs["input_ids"][:, -1]]

    def steer(_module, _args, logits):
        after_word = last[0].eq(word)
        logits = logits.clone()
        logits[:, -1, word] += torch.where(after_word, 0.0, 1e4)
        logits[:, -1, eos] += torch.where(after_word, 1e4, 0.0)
        return logits

    hooks = [base.register_forward_pre_hook(see_inputs, with_kwargs=True),
             base.lm_head.register_forward_hook(steer)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def test_exact_match_counts_greedy_answers_equal_to_the_reference(adapter, tokenizer):
    word = tokenizer.convert_tokens_to_ids("four")
    prompts = ["what is 2 plus 2 ?", "what is 1 plus 3 ?", "what is 3 plus 3 ?"]
    split = tokenize_pairs(tokenizer, prompts, [" Four ", "four", "six"], max_length=32)
    with answers_always(adapter, word, tokenizer.eos_token_id):
        score = evaluate_causal(adapter, split, batch_size=2)
    # compared as decoded (this tokenizer lowercases), ignoring surrounding whitespace
    assert score.exact_match == pytest.approx(2 / 3)
    plain = evaluate_causal(adapter, split)
    assert plain.exact_match == 0.0  # the untrained model never says "four" and stops
    assert plain.perplexity == pytest.approx(float(torch.tensor(plain.loss).exp()), rel=1e-5)
    assert plain.loss > 5  # a random model over a 30k vocabulary


def test_prompt_response_data_is_read_and_partitioned(tmp_path: Path) -> None:
    path = write_pairs(tmp_path / "qa.jsonl", 40)
    _, share = check_device_data(f"{path}?format=prompt_response&num_clients=2&shard=0")
    assert share.prompt_response and share.num_labels == 0 and share.label_names == []
    assert len(share.train.texts) + len(share.test.texts) == 20
    for split in (share.train, share.test):
        assert split.responses is not None and len(split.responses) == len(split.texts)
        for prompt, answer in zip(split.texts, split.responses, strict=True):
            assert answer == str(int(prompt.split()[2]) + 1)  # pairs stay together
    _, labelled = check_device_data(f"{write_pairs(tmp_path / 'l.jsonl', 8, label='x')}"
                                    "?text_column=prompt")
    assert not labelled.prompt_response


def test_other_field_names_and_a_client_field(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"q": f"q{i}", "a": f"a{i}", "user": f"u{i % 2}"}) + "\n"
                            for i in range(20)))
    _, share = check_device_data(f"{path}?format=prompt_response&prompt_column=q&"
                                 "response_column=a&partition=column&client_column=user&"
                                 "client=u1")
    assert sorted(share.train.texts + share.test.texts) == sorted(
        f"q{i}" for i in range(1, 20, 2))


@pytest.mark.parametrize(("options", "message"), [
    ("format=prompt_response&partition=dirichlet", "partition: dirichlet deals out labels"),
    ("format=prompt_response&classes=2", "classes: not used with format=prompt_response"),
    ("format=prompt_response&label_column=y", "label_column: not used with format="),
    ("prompt_column=q", "prompt_column: only used with format=prompt_response"),
    ("format=chat", "option 'format'"),
])
def test_spec_mistakes_name_the_option(tmp_path: Path, options: str, message: str) -> None:
    path = write_pairs(tmp_path / "qa.jsonl", 10)
    with pytest.raises(DataError, match=message):
        check_device_data(f"{path}?{options}")


def test_a_missing_response_names_the_line(tmp_path: Path) -> None:
    path = write_pairs(tmp_path / "qa.jsonl", 3)
    with path.open("a") as fh:
        fh.write(json.dumps({"prompt": "no answer"}) + "\n")
    with pytest.raises(DataError, match=r"qa\.jsonl: line 4: missing column 'response'"):
        check_device_data(f"{path}?format=prompt_response")
    with pytest.raises(DataError, match="20newsgroups is labelled text"):
        check_device_data("20newsgroups?format=prompt_response")
