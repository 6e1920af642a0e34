"""Load an exported adapter the way a Hugging Face user would, and print its logits as JSON.

Run as a script in a fresh interpreter by the export tests: it imports transformers, peft
and torch only, never this project (checked at the end), so it proves that
``peft.PeftModel.from_pretrained`` alone restores the adapter and the head.  Arguments:
adapter directory, base model directory, a JSON list of texts, and ``--bnb`` to load the
base with the bitsandbytes settings recorded in the directory's fedsa.json.  The base is a
sequence classifier, or a causal language model when fedsa.json's ``task`` says
``causal_lm`` (then the logits are every position's next-token scores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
)


def main() -> None:
    adapter_dir, base_dir, texts = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    meta = json.loads((adapter_dir / "fedsa.json").read_text())
    quant = BitsAndBytesConfig(**meta["bitsandbytes"]) if "--bnb" in sys.argv[4:] else None
    if meta.get("task") == "causal_lm":
        base = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quant)
    else:
        base = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=meta["num_labels"], quantization_config=quant,
            ignore_mismatched_sizes=True)  # the base's own head has another size
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    # On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights into a bf16 inference layout at
    # the first eval forward, whose matmuls round differently (~1e-2 on these logits).  The
    # device evaluates without the repacking (quant.adapters.keep_4bit_layout_trainable), so
    # the loader does the same and the comparison checks the exported weights, not kernels.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=meta["max_length"],
                    return_tensors="pt")
    with torch.no_grad():  # a causal model takes no token_type_ids (a BERT tokenizer's)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    ours = sorted({m.split(".")[0] for m in sys.modules} & {"edge_client", "hub", "quant",
                                                             "fedsa_common", "scenarios"})
    print(json.dumps({"logits": logits.tolist(), "project_modules": ours,
                      "type": type(model).__name__}))


if __name__ == "__main__":
    main()
