"""The network floor: MQTT sessions (``transport``), brokers (Mosquitto or the embedded
amqtt fallback; ``broker.free_port``), broker credentials (``broker_auth``), and a session
wrapper that simulates a churning, slow link (``simulated_link``, following a seeded
``link_schedule``).  Beside the federation floor, never importing it.
"""
