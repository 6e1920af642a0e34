"""Exporting the cloud's global shared parameters as a peft adapter (quant.peft_export).

The cloud holds only what the federation shares: under FedSA-LoRA the A matrices, under
FedIT A and B, under FFA-LoRA B.  Every other adapter tensor is written at the value every
party starts from (``quant.adapters.init_adapter_values`` with the federation's seed: B
zero, the head's seeded initialisation), so the adapter is what a new device would start
its first round from.  Under FedSA-LoRA that model equals the base (B is zero) until B and
the head are trained, which is what ``PeftModel.from_pretrained(base, dir, is_trainable=True)``
then does; under FedIT the LoRA part is the global model itself.
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
    if spec.causal:
        raise ValueError("model.task causal_lm: exporting a causal language model's global "
                         "parameters is not supported yet")
    if spec.num_labels is None:
        raise ValueError("model.num_labels is not set in the configuration")
    shared = state.params if state.shared is None else {n: state.params[n]
                                                       for n in state.shared}
    values = init_adapter_values(adapter_shapes(spec, spec.num_labels), config.federation.seed,
                                 config.lora_init)
    unknown = sorted(set(shared) - set(values))
    if unknown:
        raise ValueError(f"the checkpoint's parameters do not fit the model {spec.path!r}: "
                         f"unknown {unknown[:3]}")
    values.update(shared)
    adapter = fp32_adapter(spec, spec.num_labels, values)
    result = save_peft_adapter(adapter, out, base_name=base_name, meta={
        "trained_precision": spec.precision,
        "bitsandbytes": bnb_settings(spec.precision),
        "global": sorted(shared),
        "initial": sorted(set(values) - set(shared)),
        "source": {"federation": config.federation.name, "round": state.round,
                   "version": state.version, "algorithm": config.fedsa_lora.algorithm,
                   "config_hash": state.config_hash},
    })
    log.info("exported the global adapter (round %d, %d global tensors) to %s", state.round,
             len(shared), out)
    return result
