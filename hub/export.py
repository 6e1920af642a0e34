"""Exporting the cloud's global shared parameters as a peft adapter (quant.peft_export).

The cloud holds only what the federation shares: under FedSA-LoRA the A matrices, under
FedIT A and B, under FFA-LoRA B.  Every other adapter tensor is written at the value every
party starts from (``quant.adapters.init_adapter_values`` with the federation's seed and
LoRA init: one of A and B random, the other zero, a classifier's head at its seeded
initialisation), so the adapter is what a new device would start its first round from,
which ``PeftModel.from_pretrained(base, dir, is_trainable=True)`` then trains further;
under FedIT the LoRA part is the global model itself.  A causal language model's adapter
(``model.task: causal_lm``) is LoRA alone, task type ``CAUSAL_LM``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedsa_common.federation.config import FederationConfig
from hub.checkpoint import load_checkpoint
from quant.adapters import adapter_shapes, init_adapter_values
from quant.peft_export import PeftExport, bnb_settings, fp32_adapter, save_peft_adapter

log = logging.getLogger("fedsa.export")


def export_global_peft(state_dir: Path, out: Path, *, config: FederationConfig | None = None,
                       base_name: str | None = None) -> PeftExport:
    """Write the cloud checkpoint's global shared parameters in ``state_dir`` to the
    directory ``out`` in peft's format.  ``config`` is needed only for checkpoints that do
    not record the configuration they ran with (written before hub.lifecycle)."""
    state = load_checkpoint(state_dir)
    if state is None:
        raise FileNotFoundError(f"{state_dir}: no cloud checkpoint (checkpoint.json); the cloud "
                                "writes one after every round")
    if state.config is not None:
        config = FederationConfig.model_validate(state.config)
    if config is None:
        raise ValueError(f"{state_dir}: the checkpoint does not record its configuration; "
                         "give the cloud's --config")
    spec = config.model
    if spec.num_labels is None and not spec.causal:  # a causal model has no head to size
        raise ValueError("model.num_labels is not set in the configuration")
    num_labels = spec.num_labels or 0
    shared = state.params if state.shared is None else {n: state.params[n]
                                                       for n in state.shared}
    values = init_adapter_values(adapter_shapes(spec, num_labels), config.federation.seed,
                                 config.lora_init)
    unknown = sorted(set(shared) - set(values))
    if unknown:
        raise ValueError(f"the checkpoint's parameters do not fit the model {spec.path!r}: "
                         f"unknown {unknown[:3]}")
    values.update(shared)
    adapter = fp32_adapter(spec, num_labels, values)
    result = save_peft_adapter(adapter, out, base_name=base_name, meta={
        "trained_precision": spec.precision,
        "bitsandbytes": bnb_settings(spec.precision, spec.task),
        "global": sorted(shared),
        "initial": sorted(set(values) - set(shared)),
        "source": {"federation": config.federation.name, "round": state.round,
                   "version": state.version, "algorithm": config.fedsa_lora.algorithm,
                   "config_hash": state.config_hash},
    })
    log.info("exported the global adapter (round %d, %d global tensors) to %s", state.round,
             len(shared), out)
    return result
