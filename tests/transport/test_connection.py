"""The MQTT connection over a real Mosquitto: packets written at once arrive whole and in order."""

from __future__ import annotations

import asyncio
import os

import pytest

from gridsim.config import MQTT_CLIENTS
from gridsim.transport.broker import BrokerAddress
from gridsim.transport.mqtt import _Client, connection
from tests.transport._util import connected


async def _burst(
    address: BrokerAddress, sizes: list[int], client: str
) -> tuple[list[bytes], list[bytes]]:
    received: list[bytes] = []
    done = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        received.append(payload)
        if len(received) == len(sizes):
            done.set()

    sink = connection(client, address, "sink", ["t/burst"], on_message)
    source = connection(client, address, "source", [], lambda t, p: None)
    sink.start()
    source.start()
    try:
        await connected(sink, source)
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


@pytest.mark.parametrize("client", MQTT_CLIENTS)
def test_a_burst_of_small_and_large_publishes_arrives_whole_and_in_order(
    mosquitto: BrokerAddress, client: str
) -> None:
    sizes = [16, 300_000, 10, 1_000_000, 64] * 20
    sent, received = asyncio.run(_burst(mosquitto, sizes, client))
    assert received == sent


def test_pending_calls_are_tracked_per_message_id() -> None:
    # The constant-time bookkeeping keeps aiomqtt's rule: one pending call per
    # message id across publishes and subscriptions, freed when the call ends.
    async def check() -> None:
        client = _Client("127.0.0.1", 1)  # never connected
        with client._pending_call(7, "publish", client._pending_publishes):
            with (
                pytest.raises(RuntimeError, match='message ID "7"'),
                client._pending_call(7, "subscribe", client._pending_subscribes),
            ):
                pass
            with client._pending_call(8, "subscribe", client._pending_subscribes):
                assert client._pending_count() == 2
        assert client._pending_count() == 0
        with client._pending_call(7, "again", client._pending_publishes):
            assert list(client._pending_publishes) == [7]

    asyncio.run(check())


def test_the_override_replaces_a_method_aiomqtt_still_has() -> None:
    # _Client overrides a private method of aiomqtt; if aiomqtt renamed or
    # reshaped it, the override would silently stop being used.
    import inspect

    import aiomqtt

    original = vars(aiomqtt.Client).get("_pending_call")
    assert original is not None, "aiomqtt.Client no longer defines _pending_call"
    ours = vars(_Client)["_pending_call"]
    assert list(inspect.signature(original).parameters) == list(inspect.signature(ours).parameters)


def test_the_fast_message_iterator_reads_a_queue_aiomqtt_still_has() -> None:
    # _messages takes queued messages from aiomqtt's private queue; if aiomqtt
    # renamed it, every connection would fail at its first message, so say why here.
    async def check() -> None:
        client = _Client("127.0.0.1", 1)  # never connected
        assert isinstance(client._queue, asyncio.Queue)

    asyncio.run(check())


def test_buffered_reads_serve_small_pieces_from_one_system_call() -> None:
    # paho asks for one byte, then one, then the rest of each packet; the buffer
    # takes what the kernel holds in one read and hands it out piece by piece, and
    # says how much it still holds (aiomqtt reads on while it does).
    import socket

    from gridsim.transport.mqtt import _BufferedSocket

    class Counting:
        def __init__(self, sock: socket.socket) -> None:
            self.sock, self.reads = sock, 0

        def recv(self, n: int) -> bytes:
            self.reads += 1
            return self.sock.recv(n)

    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        packets = [
            bytes([0x30, len(body)]) + body for body in (os.urandom(i % 90) for i in range(200))
        ]
        a.sendall(b"".join(packets))
        counting = Counting(b)
        buffered = _BufferedSocket(counting)
        got = []
        for _ in packets:
            head = buffered.recv(1) + buffered.recv(1)
            got.append(head + (buffered.recv(head[1]) if head[1] else b""))
        assert got == packets
        assert counting.reads == 1 and buffered.pending() == 0
        with pytest.raises(BlockingIOError):  # empty: the socket's own answer
            buffered.recv(1)
        assert buffered.sock is b  # everything else is the socket's
    finally:
        a.close()
        b.close()
