"""A quantized base owns its unquantized tensors: loading releases the checkpoint's memory
mapping without changing a single value (issue 18's loaded-floor fix)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from quant.base_model import load_base_model, tiny_bert_path
from quant.owned_tensors import own_unquantized_tensors


def test_own_unquantized_tensors_copies_floats_bit_identically_and_leaves_packed_ones():
    storage = torch.arange(40, dtype=torch.float32)  # stands in for the mapped file
    module = torch.nn.Linear(4, 8)
    module.weight.data = storage[:32].view(8, 4)
    module.register_buffer("scale", storage[32:])
    module.register_buffer("packed", torch.arange(6, dtype=torch.uint8))
    packed_ptr = module.packed.data_ptr()
    before = {k: v.clone() for k, v in module.state_dict().items()}

    assert own_unquantized_tensors(module) == 3  # weight, bias, scale

    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    owned = [module.weight, module.scale]
    assert all(t.untyped_storage().data_ptr() != storage.untyped_storage().data_ptr()
               for t in owned)
    assert module.packed.data_ptr() == packed_ptr


def test_nf4_base_keeps_the_fp32_values_of_its_unquantized_tensors():
    full, _ = load_base_model("tiny-bert", 4, "fp32")
    quantized, _ = load_base_model("tiny-bert", 4, "nf4")
    full_state = full.state_dict()
    unquantized = {k: v for k, v in quantized.state_dict().items()  # not the head: the
                   if k.startswith("bert.") and v.is_floating_point()  # checkpoint lacks it
                   and k in full_state
                   and v.shape == full_state[k].shape}
    assert "bert.embeddings.word_embeddings.weight" in unquantized
    assert all(torch.equal(v, full_state[k]) for k, v in unquantized.items())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_loaded_nf4_base_leaves_its_checkpoint_unmapped():
    # in a fresh process: /proc/self/maps is the whole process's, and a test before this one
    # may still hold an fp32 base whose weights are views of the same mapped file
    checkpoint = str(tiny_bert_path() / "model.safetensors")
    code = ("import gc, sys; from quant.base_model import load_base_model; "
            "m, _ = load_base_model('tiny-bert', 4, 'nf4'); gc.collect(); "
            "sys.stdout.write(open('/proc/self/maps').read())")
    maps = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout
    assert "[heap]" in maps  # it is the maps file, read after loading
    assert checkpoint not in maps


def test_chunked_copy_of_a_large_tensor_is_bit_identical_and_its_source_still_readable():
    from quant.owned_tensors import _copy_dropping_source_pages

    src = torch.randn(3 * 2**20 + 7)  # 12 MiB: two chunks and a tail, pages paged out
    expected = src.clone()
    out = _copy_dropping_source_pages(src)
    assert out.data_ptr() != src.data_ptr()
    assert torch.equal(out, expected) and torch.equal(src, expected)  # paged out, not lost
    strided = torch.randn(8, 4).t()
    assert torch.equal(_copy_dropping_source_pages(strided), strided)


def test_a_tensor_shared_by_two_modules_is_copied_once_and_stays_shared():
    shared = torch.nn.Linear(4, 4, bias=False)
    model = torch.nn.Sequential(shared, torch.nn.Linear(4, 4, bias=False))
    model[1].weight = shared.weight  # tied
    assert own_unquantized_tensors(model) == 1
    assert model[0].weight is model[1].weight
