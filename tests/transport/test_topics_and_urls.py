import pytest

from gridsim.exceptions import ConfigError, MessageError
from gridsim.transport.broker import mosquitto_config, parse_broker_url
from gridsim.transport.topics import Topics


def test_meter_id_comes_from_the_last_topic_level() -> None:
    t = Topics("s")
    assert t.meter_of(t.update(42)) == 42
    for bad in ("gridsim/s/update/x", "gridsim/s/update/-1", "gridsim/s/update/99999999999"):
        with pytest.raises(MessageError):
            t.meter_of(bad)


def test_broker_urls() -> None:
    a = parse_broker_url("mqtt://alice:p%40ss@broker.example:1884")
    assert (a.host, a.port, a.username, a.password, a.tls) == (
        "broker.example",
        1884,
        "alice",
        "p@ss",
        False,
    )
    assert parse_broker_url("mqtts://h").port == 8883
    assert parse_broker_url("mqtt://h").port == 1883
    assert "p@ss" not in a.redacted_url
    for bad in ("http://h:1", "mqtt://", "mqtt://h:notaport"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)


def test_generated_config_is_sized_for_fan_in() -> None:
    conf = mosquitto_config(12345)
    lines = conf.splitlines()
    assert "listener 12345 127.0.0.1" in lines
    assert sum(ln.startswith("listener ") for ln in lines) == 1
    # Mosquitto's default of 1000 queued messages per client drops QoS 1 updates
    # when hundreds of meters publish at once; ours must not be bounded by count.
    assert "max_queued_messages 0" in lines
    packet = next(int(ln.split()[1]) for ln in lines if ln.startswith("max_packet_size"))
    assert packet > 16 * 1024 * 1024
