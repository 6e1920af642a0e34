"""Fixtures shared by the edge_client tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge_client.snapshot import model_info, save_global
from edge_client.state import DeviceState, StateDir
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import local_names, shared_names
from quant.adapters import build_adapter_model

TRAINED_LABELS = ["comp.graphics", "rec.autos", "sci.space"]


@pytest.fixture(scope="session")
def trained_state_dir(tmp_path_factory) -> Path:
    """A device state directory as Device.train_round leaves it, with non-trivial adapters."""
    config = FederationConfig.model_validate({
        "federation": {"name": "exp", "seed": 4},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
    })
    adapter = build_adapter_model(config.model.model_copy(update={"precision": "fp32"}), 3, 4)
    g = torch.Generator().manual_seed(0)
    values = {n: torch.randn(s, generator=g) * (1.0 if n.startswith("classifier") else 0.2)
              for n, s in adapter.shapes().items()}
    names = adapter.names
    path = tmp_path_factory.mktemp("device")
    store = StateDir(path, "dev-1", "north", "exp")
    store.save(DeviceState("dev-1", "north", "exp", config_hash=config.digest(), last_round=3,
                           local={n: values[n] for n in local_names(names, "fedsa")}))
    save_global(path, {n: values[n] for n in shared_names(names, "fedsa")},
                model_info(config, TRAINED_LABELS, client="dev-1", round_=3,
                           config_hash=config.digest()))
    return path
