"""Fixtures shared by the edge_client tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge_client.snapshot import model_info, save_global
from edge_client.state import DeviceState, StateDir
from fedsa_common.federation.config import FederationConfig
from fedsa_common.federation.split import local_names, role, shared_names
from quant.adapters import build_adapter_model

TRAINED_LABELS = ["comp.graphics", "rec.autos", "sci.space"]


def write_trained_state(path: Path, config: FederationConfig,
                        label_names: list[str] | None) -> Path:
    """A device state directory as Device.train_round leaves it under ``config``, with
    non-trivial adapters (a head far from uniform, LoRA A and B both nonzero)."""
    num_labels = config.model.num_labels or 0
    seed = config.federation.seed
    adapter = build_adapter_model(config.model.model_copy(update={"precision": "fp32"}),
                                  num_labels, seed)
    g = torch.Generator().manual_seed(0)
    values = {n: torch.randn(s, generator=g) * (1.0 if role(n) == "head" else 0.2)
              for n, s in adapter.shapes().items()}
    names = adapter.names
    algorithm = config.fedsa_lora.algorithm
    name = config.federation.name
    store = StateDir(path, "dev-1", "north", name)
    store.save(DeviceState("dev-1", "north", name, config_hash=config.digest(), last_round=3,
                           local={n: values[n] for n in local_names(names, algorithm)}))
    save_global(path, {n: values[n] for n in shared_names(names, algorithm)},
                model_info(config, label_names, client="dev-1", round_=3,
                           config_hash=config.digest()))
    return path


@pytest.fixture(scope="session")
def trained_state_dir(tmp_path_factory) -> Path:
    """A classifier's device state directory (tiny BERT, nf4, three labels)."""
    config = FederationConfig.model_validate({
        "federation": {"name": "exp", "seed": 4},
        "model": {"path": "tiny-bert", "precision": "nf4", "max_length": 32, "num_labels": 3},
    })
    return write_trained_state(tmp_path_factory.mktemp("device"), config, TRAINED_LABELS)


@pytest.fixture(scope="session")
def causal_state_dir(tmp_path_factory) -> Path:
    """A causal language model's device state directory (the tiny Llama, nf4, FedSA-LoRA:
    A global, B the device's own)."""
    config = FederationConfig.model_validate({
        "federation": {"name": "exp", "seed": 4},
        "model": {"task": "causal_lm", "path": "tiny-causal", "precision": "nf4",
                  "max_length": 32},
    })
    return write_trained_state(tmp_path_factory.mktemp("causal-device"), config, None)
