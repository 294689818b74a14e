"""The MQTT connection over a real Mosquitto: packets written at once arrive whole and in order."""

from __future__ import annotations

import asyncio
import os

from gridsim.transport.broker import BrokerAddress
from gridsim.transport.mqtt import Connection


async def _burst(address: BrokerAddress, sizes: list[int]) -> tuple[list[bytes], list[bytes]]:
    received: list[bytes] = []
    done = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        received.append(payload)
        if len(received) == len(sizes):
            done.set()

    sink = Connection(address, "sink", ["t/burst"], on_message)
    source = Connection(address, "source", [], lambda t, p: None)
    sink.start()
    source.start()
    try:
        await asyncio.wait_for(sink.connected.wait(), 10)
        await asyncio.wait_for(source.connected.wait(), 10)
        # Sequence number first, so a lost or reordered packet shows.
        sent = [i.to_bytes(4, "big") + os.urandom(n) for i, n in enumerate(sizes)]
        # All at once: large payloads fill the socket, so some packets are written
        # at once and the rest wait for writability behind them.
        results = await asyncio.gather(*(source.publish("t/burst", p) for p in sent))
        assert all(results)
        await asyncio.wait_for(done.wait(), 30)
        return sent, received
    finally:
        await source.close()
        await sink.close()


def test_a_burst_of_small_and_large_publishes_arrives_whole_and_in_order(
    mosquitto: BrokerAddress,
) -> None:
    sizes = [16, 300_000, 10, 1_000_000, 64] * 20
    sent, received = asyncio.run(_burst(mosquitto, sizes))
    assert received == sent
