"""A quantized base's unquantized tensors copied out of the checkpoint's memory mapping."""

from __future__ import annotations

import ctypes
import mmap

import torch

from fedsa_common.process.libc import glibc

_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now; data is never lost
_CHUNK = 8 * 2**20


def _madvise() -> ctypes._CFuncPtr | None:
    fn = getattr(glibc(), "madvise", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


_MADVISE = _madvise()


def _page_out(start: int, end: int) -> None:
    """Ask the kernel to reclaim the whole pages in [start, end) (a hint: a failure or an
    unsupported kernel leaves them resident, and anonymous pages are swapped, not lost)."""
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if _MADVISE is not None and last > first:
        _MADVISE(first, last - first, _MADV_PAGEOUT)


def _copy_dropping_source_pages(src: torch.Tensor) -> torch.Tensor:
    """``src.clone()``, copied in chunks whose source pages are paged out once copied."""
    if not src.is_contiguous() or src.numel() * src.element_size() <= _CHUNK:
        return src.clone()
    out = torch.empty_like(src)
    flat_src, flat_out = src.view(-1), out.view(-1)
    step = _CHUNK // src.element_size()
    for i in range(0, flat_src.numel(), step):
        piece = flat_src[i:i + step]
        flat_out[i:i + step].copy_(piece)
        _page_out(piece.data_ptr(), piece.data_ptr() + piece.numel() * piece.element_size())
    return out


def own_unquantized_tensors(model: torch.nn.Module) -> int:
    """Copy the parameters and buffers that loading left unquantized (embeddings, norms,
    biases, the head) into the process's own memory, so that the checkpoint file's memory
    mapping is released; returns how many tensors were copied.

    transformers memory-maps a safetensors checkpoint and, where a tensor's dtype already
    matches, keeps it as a view of that mapping.  On a quantized base those few views keep
    the whole full-precision file mapped, and every page that packing read stays resident:
    for a 4-bit BERT-base the 92 MiB of unquantized tensors held about 240 MiB more in the
    loaded process and 340 MiB more during training (docs/benchmarks.md, issue 18).  The copies are
    bit-identical, so training is unchanged.  Not done on a full-precision base, whose
    weights are all views: copying them would only move them from reclaimable file pages
    into anonymous memory.  Reading a tensor to copy it pages it in; the source pages are
    handed back as each chunk is copied, so the copies do not double the load peak."""
    seen: set[int] = set()  # a tensor shared by modules (tied weights) is copied once
    with torch.no_grad():
        for module in model.modules():
            for tensors in (module._parameters, module._buffers):
                for tensor in tensors.values():
                    if tensor is None or not tensor.is_floating_point() or id(tensor) in seen:
                        continue  # packed 4-bit and int8 weights are new tensors already
                    seen.add(id(tensor))
                    tensor.data = _copy_dropping_source_pages(tensor.data)
    return len(seen)
