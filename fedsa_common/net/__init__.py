"""The network floor: MQTT sessions (``transport``), brokers (Mosquitto or the embedded
amqtt fallback; ``broker.free_port``) and broker credentials (``broker_auth``).  Beside the
federation floor, never importing it.
"""
