"""One quantized base model in memory, shared by every virtual device of a process.

Devices take the lock, swap their own adapter and head tensors in, train or evaluate, and
read their tensors back out; the base weights are never copied.
"""

from __future__ import annotations

import json
import threading

from edge_client.memory import release_free_memory
from fedsa_common.federation.config import FederationConfig, Precision
from quant.adapters import AdapterModel, build_adapter_model


class ModelHost:
    def __init__(self, precision: Precision | None = None) -> None:
        self.lock = threading.Lock()
        self.precision = precision
        self._adapter: AdapterModel | None = None
        self._key: str | None = None

    def adapter(self, config: FederationConfig) -> AdapterModel:
        """The model for ``config``, built on first use; callers must hold ``lock``."""
        spec = config.model
        if self.precision is not None:
            spec = spec.model_copy(update={"precision": self.precision})
        personal_head = config.fedsa_lora.personalization.personal_head
        key = json.dumps([spec.model_dump(mode="json"), config.federation.seed,
                          personal_head])
        if self._adapter is None:
            if spec.needs_num_labels:
                raise ValueError("announcement config lacks model.num_labels")
            self._adapter = build_adapter_model(spec, spec.num_labels or 0,
                                                config.federation.seed,
                                                config.lora_init,
                                                personal_head=personal_head)
            self._key = key
            release_free_memory()  # the full-precision staging copies of quantized weights
        elif key != self._key:
            raise ValueError("this process already hosts a different model configuration")
        return self._adapter
