"""The network floor: MQTT sessions (``transport``), brokers (Mosquitto or the
embedded amqtt fallback) and broker credentials (``broker_auth``).  Beside the
federation floor, never importing it.
"""
