"""fedsa-edge: cross-device FedSA-LoRA over MQTT."""
