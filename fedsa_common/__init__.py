"""fedsa-edge: cross-device FedSA-LoRA over MQTT; what the device, the hubs and the scenarios
share, in floors whose imports point down only (pyproject.toml, fedsa-common-floors):

* ``process``: CLI helpers, logging, child processes, atomic file writes;
* ``net`` beside ``federation``: MQTT sessions, brokers and credentials; the federation
  model (``FederationConfig``, which runs every floor's cross-field checks) and the
  shared/local split;
* ``privacy``: differential privacy and secure aggregation, pure math on config sections;
* ``config``: the configuration's sections (the leaf) and the checks that read only them;
* ``wire``: what travels as bytes (errors, names, ``Tensors``, envelope, chunking,
  protocol headers, delta codecs, downlink deltas, hub status).

A module belongs to the lowest floor whose floors below give it everything it imports.
"""
