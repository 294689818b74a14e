"""The aggregator side: round state machines (no I/O) and their MQTT service."""
