"""Process memory as the operating system sees it, and recognising out-of-memory errors.

torch allocates CPU tensors with the C allocator, outside Python's heap, so ``tracemalloc``
never sees them; what a device's memory budget is about is the resident set size (RSS) of
the process.  The peak of one training step matters, not the RSS after it (activations are
freed by then), so on Linux the kernel's high-water mark (``VmHWM``) is reset before a step
and read after it: exact, and free of sampling.  Elsewhere a background thread samples RSS
with psutil, which can miss short spikes; the budget's safety margin absorbs that.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from types import TracebackType

import psutil
import torch

from fedsa_common.process.libc import glibc

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
MiB = 1024 * 1024


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return int(psutil.Process().memory_info().rss)


def release_free_memory() -> int:
    """Hand memory that the C allocator keeps after ``free`` back to the OS (glibc only).

    Loading a quantized model reads full-precision weights and frees them after packing;
    glibc keeps much of that in its heap, so a 4-bit BERT-base process stays ~270 MB larger
    than it needs to.  Returns the bytes of RSS released (0 where unsupported).
    """
    trim = getattr(glibc(), "malloc_trim", None)
    if trim is None:
        return 0
    gc.collect()
    before = rss_bytes()
    trim(0)
    return max(0, before - rss_bytes())


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def return_large_frees(threshold: int = MiB) -> bool:
    """Serve allocations of ``threshold`` bytes and more with their own memory mappings, so
    that freeing them returns the memory to the OS at once (glibc only; returns whether set).

    glibc raises its mmap threshold (from 128 KiB up to 32 MiB) each time a mapped block is
    freed, after which a training step's activations, gradients and bitsandbytes' per-call
    dequantized weights come from the heap, which fragments and keeps the freed blocks: on a
    4-bit BERT-base with activation checkpointing that retention was ~500 MiB of a 1.3 GiB
    peak, each checkpointed layer's recomputation leaving ~40 MiB behind (docs/benchmarks.md,
    issue 18).  A fixed threshold also stops that adjustment.  It changes where memory comes
    from, never values, so training is unchanged; each large allocation costs a fresh
    mapping and zeroed pages: 25-40 % more CPU time per training sample, measured under
    load.  So a device sets it only when it has a memory budget (``--memory-mb``), as the
    planner switches checkpointing on only for one; it is process-wide, so in a worker one
    budgeted virtual device sets it for all.  Set it before loading the model."""
    mallopt = getattr(glibc(), "mallopt", None)
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def _read_hwm() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _read_hwm() is not None


def peak_rss_bytes() -> int:
    """Peak RSS since process start or the last reset (the current RSS where unknown)."""
    return _read_hwm() or rss_bytes()


class PeakMeter:
    """Peak RSS of the whole process between ``mark()`` and ``read()``.

    Use as a context manager around a training run.  ``mark()`` resets the kernel counter,
    which is process-wide: an outer measurement of the same process's peak would be reset
    too, so callers wanting the peak of a larger span keep their own maximum of ``read()``
    values (as ``overall`` does here).
    """

    def __init__(self, sample_interval_s: float = 0.002) -> None:
        self.interval = sample_interval_s
        self.overall = 0
        self._exact = False
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMeter:
        self._exact = _reset_hwm()
        if not self._exact:
            self._sampled = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, int(proc.memory_info().rss))

    def mark(self) -> None:
        if self._exact:
            _reset_hwm()
        else:
            self._sampled = rss_bytes()

    def read(self) -> int:
        peak = max(_read_hwm() or 0, rss_bytes()) if self._exact else max(self._sampled,
                                                                          rss_bytes())
        self.overall = max(self.overall, peak)
        return peak

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory",
              "not enough memory", "failed to allocate")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says an allocation failed (and a smaller batch may succeed).

    torch raises ``torch.OutOfMemoryError`` on accelerators and a plain ``RuntimeError``
    ("DefaultCPUAllocator: can't allocate memory") on CPU; Python raises ``MemoryError``.
    """
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if isinstance(err, MemoryError) or (oom_type is not None and isinstance(err, oom_type)):
        return True
    return isinstance(err, RuntimeError) and any(w in str(err).lower() for w in _OOM_WORDS)
