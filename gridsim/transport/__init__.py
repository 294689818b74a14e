"""MQTT transport: wire codec, topics, brokers and connection handling."""
