"""Allocator settings a device applies before loading its model (glibc)."""

from __future__ import annotations

import sys

import pytest
import torch

from edge_client.memory import release_free_memory, return_large_frees


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_return_large_frees_is_accepted_and_allocation_still_works():
    assert return_large_frees(2**20) is True
    t = torch.ones(4 * 2**20 // 4)  # above the threshold: its own mapping
    assert float(t.sum()) == 4 * 2**20 // 4
    del t
    assert release_free_memory() >= 0
