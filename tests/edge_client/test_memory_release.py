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


@pytest.mark.parametrize(("memory_mb", "sets_it"), [(None, False), (650.0, True)])
def test_only_a_device_with_a_memory_budget_trades_cpu_time_for_returned_frees(
        monkeypatch, tmp_path, memory_mb, sets_it):
    import edge_client.device as device_module
    from edge_client.data import DataSpec
    from edge_client.device import Device, DeviceSpec
    from edge_client.host import ModelHost
    from tests.support.sessions import RecordingSession

    calls: list[int] = []
    monkeypatch.setattr(device_module, "return_large_frees", lambda: calls.append(1) or True)
    spec = DeviceSpec(client="d1", region="eu", federation="f",
                      data=DataSpec(source="20newsgroups"), state_dir=tmp_path,
                      memory_mb=memory_mb)
    Device(spec, "mqtt://127.0.0.1:1", ModelHost(),
           session=RecordingSession())  # type: ignore[arg-type]
    assert bool(calls) is sets_it
