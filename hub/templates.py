"""Ready configuration templates for ``hub config template NAME``.

Each is the YAML an operator would start from, with comments that say why a value is what
it is; every template validates (tests/hub/test_config_cli.py checks that), so a copied
template is a working starting point, not a sketch.
"""

from __future__ import annotations

TINY_TEST = """\
# A seconds-long federation on a tiny random BERT, for smoke tests of a new machine:
#   hub config template tiny-test > tiny.yaml && scenarios run tiny.yaml --out runs/tiny
scenario:
  name: tiny-test
  broker: auto                  # Mosquitto when installed, else the embedded broker
  topology:
    regions: {north: 2, south: 2}
  data: {source: 20newsgroups, classes: 3, partition: dirichlet, alpha: 0.5,
         max_train: 48, max_test: 24, seed: 0}
  devices_per_worker: 2
  timeout_s: 300
federation: {name: tiny-test, seed: 0}
model: {path: tiny-bert, precision: nf4, max_length: 32}
rounds: 2
training: {local_steps: 3, batch_size: 8, lr: 0.001}
round_policy: {deadline_s: 60}
"""

EDGE_4BIT = """\
# Cloud hub configuration for phones and gateways: all-MiniLM-L6-v2 in 4-bit (nf4),
# FedSA-LoRA (only LoRA A travels), top-k int8 deltas.
#   hub serve --role cloud --federation demo --state-dir /var/lib/fedsa/cloud \\
#             --broker mqtt://cloud-broker:1883 --config edge-4bit.yaml
federation: {name: demo, seed: 0}   # --federation overrides the name
model:
  path: minilm
  precision: nf4                # devices may override (e.g. fp32 where bitsandbytes lacks CPU)
  max_length: 128
  num_labels: 4                 # the cloud needs it; set it to your task's label count
  lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: [query, value]}
fedsa_lora:
  algorithm: fedsa
  compression: {enable: true, method: topk, ratio: 0.05}   # 5% of each A tensor per round, int8
rounds: 20
training: {local_steps: 10, batch_size: 16, lr: 0.0005}
sampling:
  clients_per_round: 50         # seeded sample of the devices online at each round
  min_clients: 10               # wait for this many before round 1 ...
  wait_for_clients_s: 600       # ... but no longer than this
round_policy:
  deadline_s: 600               # phones train slowly and drop off; the round closes anyway
  min_quorum: 5                 # fewer accepted updates leave the global A unchanged
  max_update_norm: null         # once typical delta norms are known, refuse far larger ones
transport: {payload_limit: 256000}   # small MQTT messages for gateways with small buffers
"""

FEDIT_BASELINE = """\
# The FedIT baseline (FedAvg of LoRA: A and B are both shared), otherwise identical to
# edge-4bit, to measure what keeping B on the device buys.  Expect about twice the uplink
# bytes of fedsa for the same rounds.
federation: {name: fedit-baseline, seed: 0}
model:
  path: minilm
  precision: nf4
  max_length: 128
  num_labels: 4                 # set it to your task's label count
  lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: [query, value]}
fedsa_lora:
  algorithm: fedit
  compression: {enable: true, method: topk, ratio: 0.05}
rounds: 20
training: {local_steps: 10, batch_size: 16, lr: 0.0005}
sampling: {clients_per_round: 50, min_clients: 10, wait_for_clients_s: 600}
round_policy: {deadline_s: 600, min_quorum: 5}
transport: {payload_limit: 256000}
"""

TINY_TUNE = """\
# tiny-test with a search space for automatic tuning (a few minutes for 3 trials):
#   hub config template tiny-tune > tune.yaml && scenarios tune tune.yaml --trials 3 --out runs/tune
scenario:
  name: tiny-tune
  broker: auto
  topology:
    regions: {north: 2, south: 2}
  data: {source: 20newsgroups, classes: 3, partition: dirichlet, alpha: 0.5,
         max_train: 48, max_test: 24, seed: 0}
  devices_per_worker: 2
  timeout_s: 300
federation: {name: tiny-tune, seed: 0}
model: {path: tiny-bert, precision: nf4, max_length: 32}
rounds: 2
training: {local_steps: 3, batch_size: 8, lr: 0.001}
round_policy: {deadline_s: 60}
tune:
  params: [lr, lora_r, local_steps, compression_ratio]   # what is searched
  lr: {low: 0.0001, high: 0.01, log: true}
  lora_r: [4, 8, 16]
  local_steps: {low: 2, high: 6}
  compression_ratio: {low: 0.05, high: 0.5, log: true}
  sampler_seed: 0
"""

TEMPLATES: dict[str, tuple[str, str]] = {
    "tiny-test": ("scenario: 4 devices, tiny random BERT, 2 rounds (seconds)", TINY_TEST),
    "edge-4bit": ("cloud --config: MiniLM nf4, FedSA-LoRA, top-k int8, phone-sized deadlines",
                  EDGE_4BIT),
    "fedit-baseline": ("cloud --config: edge-4bit with FedIT (A and B shared) for comparison",
                       FEDIT_BASELINE),
    "tiny-tune": ("scenario: tiny-test with a tune: section for scenarios tune", TINY_TUNE),
}
