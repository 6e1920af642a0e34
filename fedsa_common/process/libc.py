"""The C library, for the few allocator and paging calls Python does not expose."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def glibc() -> ctypes.CDLL | None:
    """The process's C library on Linux (None elsewhere or when it cannot be loaded), with
    ``errno`` kept for its calls; loaded once, so callers on a training path pay nothing.
    One lookup serves the allocator settings (edge_client/memory.py) and the page hints of
    quant/owned_tensors.py."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
