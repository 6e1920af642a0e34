"""The micro-batch planner: unit behaviour, and a real budget held in a clean process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from edge_client.memory import MiB, PeakMeter, is_out_of_memory, rss_bytes
from edge_client.microbatch import MicroBatchPlanner
from quant.base_model import tiny_bert_path

PROBE = Path(__file__).with_name("budget_probe.py")


def test_unlimited_planner_takes_the_whole_batch_up_to_its_ceiling():
    assert MicroBatchPlanner().size(16, 100) == 16
    assert MicroBatchPlanner(ceiling=4).size(16, 100) == 4
    assert MicroBatchPlanner(ceiling=4).size(3, 100) == 3
    assert not MicroBatchPlanner().measuring


def test_planner_probes_then_grows_toward_the_budget_from_below():
    p = MicroBatchPlanner(budget_bytes=1000 * MiB, safety=1.0, floor=200 * MiB)
    assert p.measuring
    assert p.size(16, 100) == 1  # the probe
    # 1 x 100 tokens peaked 20 MiB over the floor (10 fixed + 10 per sample)
    p.observe(1, 100, 220 * MiB)
    first = p.size(64, 100)
    assert first == 40  # 800 MiB headroom / 20 MiB per sample: conservative (true fit: 79)
    p.observe(first, 100, (200 + 10 + 10 * first) * MiB)
    second = p.size(64, 100)
    assert first < second <= 79
    assert p.size(64, 50) >= second  # narrower rows fit more samples


def test_planner_shrinks_when_a_smaller_step_peaks_over_the_budget():
    p = MicroBatchPlanner(budget_bytes=1000 * MiB, safety=1.0, floor=200 * MiB)
    p.size(8, 10)
    p.observe(8, 100, 600 * MiB)  # 0.5 MiB per token
    assert p.size(64, 100) == 16
    p.observe(4, 100, 1100 * MiB)  # something else grew: over the budget
    assert p.size(64, 100) < 16


def test_planner_below_one_sample_still_trains_one_at_a_time():
    p = MicroBatchPlanner(budget_bytes=100 * MiB, floor=300 * MiB, per_token=1.0)
    assert p.size(16, 128) == 1


def test_out_of_memory_halves_and_caps():
    p = MicroBatchPlanner()
    assert p.out_of_memory(16) == 8 and p.size(16, 10) == 8
    assert p.out_of_memory(3) == 1 and p.size(16, 10) == 1
    assert p.out_of_memory(1) == 0


def test_for_budget_converts_mib():
    p = MicroBatchPlanner.for_budget(512, micro_batch=8)
    assert p.budget_bytes == 512 * MiB and p.ceiling == 8
    assert MicroBatchPlanner.for_budget(None).budget_bytes is None


@pytest.mark.parametrize("err,expected", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate"), True),
    (MemoryError(), True),
    (torch.OutOfMemoryError("x"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),
])
def test_is_out_of_memory(err, expected):
    assert is_out_of_memory(err) is expected


def test_peak_meter_sees_a_transient_allocation():
    with PeakMeter() as meter:
        meter.mark()
        before = rss_bytes()
        block = torch.ones(64 * MiB // 4)  # 64 MiB, touched
        del block
        peak = meter.read()
    assert peak - before > 48 * MiB
    assert meter.overall >= peak


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory) -> Path:
    """A 2-layer, 256-wide BERT: big enough that activations of 256-token batches dwarf
    allocator noise, small enough to train in seconds."""
    out = tmp_path_factory.mktemp("small-bert")
    config = BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=1024, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    tiny = tiny_bert_path()
    for f in tiny.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, out / f.name)
    return out


def probe(model: Path, headroom_mb: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(PROBE), "--model", str(model),
                           "--headroom-mb", str(headroom_mb)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS figures from Linux")
def test_training_stays_under_a_small_memory_budget(small_bert):
    free = probe(small_bert, 0)
    growth = max(free["sampled_peak"], free["hwm_peak"]) - free["floor"]
    assert growth > 60 * MiB, free  # the full batch of 32 x 256 tokens needs this much
    headroom_mb = 0.35 * growth / MiB
    held = probe(small_bert, headroom_mb)
    assert held["samples"] == free["samples"]
    assert 1 <= held["micro_batch"] < 32
    assert held["sampled_peak"] <= held["budget"], (held, free)
    assert held["hwm_peak"] <= held["budget"], (held, free)
