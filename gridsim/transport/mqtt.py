"""Self-healing MQTT connections: the interface, and its implementation over aiomqtt.

A connection keeps one client connected for as long as it runs: after a broker
restart or a network fault it reconnects with jittered exponential backoff,
subscribes again and calls ``on_connect`` so the owner can re-send what the
broker lost. Every incoming payload is handed to ``on_message`` in order; a
handler that returns an awaitable holds the next message until it completes,
and a handler's exception is logged, never fatal.

Two clients implement it (:func:`connection` picks one, ``run --mqtt-client``
the user): ``lean`` (:mod:`gridsim.transport.lean`, the default: MQTT 3.1.1 on an
asyncio protocol, about a tenth of the CPU per message) and ``aiomqtt``
(:class:`AiomqttConnection`, over aiomqtt and paho, with everything they offer).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiomqtt

from gridsim.config import MQTT_CLIENTS
from gridsim.transport.broker import BrokerAddress

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None] | None]


@dataclasses.dataclass(frozen=True)
class Will:
    """The message the broker publishes for a client that vanishes without a goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Backoff:
    """Exponential backoff with full jitter, so reconnecting meters spread out."""

    def __init__(
        self, initial: float = 0.2, maximum: float = 5.0, rng: random.Random | None = None
    ):
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        cap = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0


class Connection(abc.ABC):
    """What the aggregator and the meters need of an MQTT connection, and what the
    clients share: their settings and counters, ``start`` and ``publish``."""

    def __init__(
        self,
        address: BrokerAddress,
        identifier: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        *,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        will: Will | None = None,
        keepalive: int = 30,
        backoff: Backoff | None = None,
    ) -> None:
        self.address = address
        self.identifier = identifier
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_connect = on_connect
        self.will = will
        self.keepalive = keepalive
        self.backoff = backoff or Backoff()
        self.connected = asyncio.Event()
        self.connects = 0
        self.retained = False
        """Whether the message being handled came from the broker's retained store
        (it was published before this connection subscribed), not live."""
        self._closing = False
        self._aborted = False
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def run(self) -> None:
        """Stay connected until :meth:`close`; reconnect after every failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect cleanly (the broker does not publish the will) and stop reconnecting."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection without a goodbye, as a crashed process does: the
        broker publishes the will at once, and :meth:`run` reconnects without a
        backoff."""

    @abc.abstractmethod
    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish now at QoS 0 if connected; False if not."""

    def start(self) -> asyncio.Task[None]:
        """Run the connection in a task of its own."""
        self._task = asyncio.create_task(self.run(), name=f"mqtt-{self.identifier}")
        return self._task

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, wait: float | None = None
    ) -> bool:
        """Publish, waiting up to ``wait`` seconds for a connection (forever if None).

        Returns False if the message could not be handed to the broker; callers
        that must not lose it re-send from their ``on_connect`` hook.

        QoS 0: a QoS 1 acknowledgement would buy nothing here. Sessions are clean
        and every connection a new client, so a message unacknowledged when a
        connection drops is lost either way; while it holds, TCP delivers, and the
        shipped broker (``max_queued_messages 0``, no inflight limits) queues QoS 0
        messages for a slow subscriber instead of dropping them. Recovery is the
        protocol's: the aggregator repeats its announcement and open requests when
        it reconnects and a stage's request when a meter says hello again, and a
        meter that sees a round's announcement again (it is retained) sends its
        last answer again. What the acknowledgements did cost: two more packets
        per message through the broker and both event loops, and paho's limit of
        20 unacknowledged messages, which throttled the aggregator's fan-outs (a
        secure round of 500 meters: 1.6 -> 1.3 s of CPU on the loop's thread).
        """
        if self.publish_nowait(topic, payload, retain=retain):
            return True
        if self._closing:
            return False
        try:
            async with asyncio.timeout(wait):  # not wait_for: see Aggregator._wait_changed
                await self.connected.wait()
        except TimeoutError:
            return False
        return self.publish_nowait(topic, payload, retain=retain)


def connection(
    client: str,
    address: BrokerAddress,
    identifier: str,
    subscriptions: Sequence[str],
    on_message: MessageHandler,
    *,
    on_connect: Callable[[], Awaitable[None]] | None = None,
    will: Will | None = None,
) -> Connection:
    """A connection through ``client`` (one of :data:`MQTT_CLIENTS`)."""
    kind: type[Connection]
    if client == "lean":
        from gridsim.transport.lean import LeanConnection

        kind = LeanConnection
    elif client == "aiomqtt":
        kind = AiomqttConnection
    else:
        raise ValueError(f"unknown MQTT client {client!r}; choose one of {', '.join(MQTT_CLIENTS)}")
    return kind(address, identifier, subscriptions, on_message, on_connect=on_connect, will=will)


def _write_at_once(client: aiomqtt.Client) -> None:
    """Send each outgoing packet at once instead of on the next loop iteration.

    aiomqtt answers paho's "register write" callback (a packet was queued) by
    scheduling ``add_writer`` through ``call_soon_threadsafe``, so every PUBLISH and
    PUBACK costs a self-pipe wake-up, two epoll registrations and a loop iteration
    before it is written. On the event loop's own thread, outside paho's callbacks
    (paho's own rule for writing directly), the packet is written right away; only
    what the socket does not take waits for writability, through aiomqtt as before.
    A 500-meter request/reply over Mosquitto: about 0.6 -> 0.5 ms of CPU per meter;
    a plain 500-meter round 1.43 -> 1.32 s (medians of 8 rounds, Intel machine).
    This reaches into aiomqtt's paho client (``_client``); aiomqtt 2.x is pinned.
    """
    paho = client._client
    register = paho.on_socket_register_write
    loop_thread = threading.get_ident()

    def register_write(mqttc: Any, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == loop_thread and mqttc._in_callback_mutex.acquire(False):
            mqttc._in_callback_mutex.release()
            mqttc.loop_write()  # unregisters itself once everything is written
            if not mqttc.want_write():
                return
        if register is not None:
            register(mqttc, userdata, sock)

    paho.on_socket_register_write = register_write


READ_CHUNK = 256 * 1024
"""Bytes asked of the socket per read: a burst of packets, or most of a large one."""


class _BufferedSocket:
    """paho's socket, read in large chunks and handed out in the small pieces paho asks for.

    paho reads a packet with three or more ``recv`` calls (the command byte, each
    byte of the remaining length, then the rest), and aiomqtt reads one packet per
    wake-up of the event loop unless the socket reports ``pending`` bytes (meant for
    TLS). Here one system call takes what the kernel holds, later ``recv`` calls are
    served from it, and ``pending`` makes aiomqtt read on until it is used up: the
    aggregator takes a burst of 500 meters' messages in a few wake-ups instead of
    500, each with its own ``select``. Everything else goes to the socket.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos == len(buf):
            data: bytes = self._sock.recv(max(bufsize, READ_CHUNK))
            if len(data) <= bufsize:
                return data
            buf, pos = self._buf, self._pos = data, 0
        end = min(pos + bufsize, len(buf))
        if end == len(buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = end
        return buf[pos:end]

    def pending(self) -> int:
        return len(self._buf) - self._pos

    @property
    def raw(self) -> Any:
        """The socket itself."""
        return self._sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(aiomqtt.Client):
    """aiomqtt's client with constant-time bookkeeping of pending calls.

    aiomqtt 2.x checks each new call's message id against every pending call, and
    counts them for a warning, by walking a generator over its three dicts of
    pending calls: O(n) per publish, O(n^2) for a fan-out of n messages published
    at once (the aggregator's receipts and SecAgg+ requests, 500 at a time). The
    same checks, on the dicts directly. A fan-out of 3-kB messages over Mosquitto
    (publisher and subscriber on one loop, CPU of the loop's thread): 5,000
    messages 1.77 -> 0.89 s, 2,000 about 390 -> 300 ms; at 500 the difference is
    within the noise. This overrides a private method of aiomqtt 2.x (the
    project allows 2.3 up to 3); a test checks that aiomqtt still defines it with
    this signature, so an upgrade that renames it fails the tests instead of
    silently bypassing this.
    """

    def _pending_count(self) -> int:
        return (
            len(self._pending_subscribes)
            + len(self._pending_unsubscribes)
            + len(self._pending_publishes)
        )

    @contextlib.contextmanager
    def _pending_call(self, mid: int, value: Any, pending_dict: dict[int, Any]) -> Iterator[None]:
        if (
            mid in self._pending_publishes
            or mid in self._pending_subscribes
            or mid in self._pending_unsubscribes
        ):
            raise RuntimeError(f'There already exists a pending call for message ID "{mid}"')
        pending_dict[mid] = value
        try:
            pending = self._pending_count()
            if pending > self.pending_calls_threshold:
                self._logger.warning("There are %d pending publish calls.", pending)
            yield
        finally:
            with contextlib.suppress(KeyError):
                del pending_dict[mid]

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # Called by paho right after it connected its socket, before anything is read.
        if not hasattr(sock, "pending"):  # TLS sockets buffer (and say so) already
            client._sock = _BufferedSocket(sock)
        super()._on_socket_open(client, userdata, sock)


async def _messages(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    """``client.messages``, taking what is already queued without a task per message.

    aiomqtt waits for each message in a task of its own raced against the
    disconnection (``asyncio.wait``): two loop iterations and a handful of futures
    per message even when the next one is queued already, as it is in a burst.
    Queued messages are taken at once here; only an empty queue waits, through
    aiomqtt, so a disconnection still ends the iteration (after what arrived
    before it). This reads aiomqtt 2.x's private queue (``_queue``; pinned, and a
    test checks it is still there).
    """
    queue = client._queue
    while True:
        try:
            message = queue.get_nowait()
        except asyncio.QueueEmpty:
            message = await client.messages.__anext__()
        yield message


class AiomqttConnection(Connection):
    """A :class:`Connection` over aiomqtt (and paho underneath)."""

    def __init__(
        self,
        address: BrokerAddress,
        identifier: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        **options: Any,
    ) -> None:
        super().__init__(address, identifier, subscriptions, on_message, **options)
        self._client: aiomqtt.Client | None = None

    def _make_client(self) -> aiomqtt.Client:
        tls_params = aiomqtt.TLSParameters() if self.address.tls else None
        client = _Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.identifier,
            will=None
            if self.will is None
            else aiomqtt.Will(self.will.topic, self.will.payload, self.will.qos, self.will.retain),
            keepalive=self.keepalive,
            clean_session=True,
            tls_params=tls_params,
            timeout=30,
            logger=log,
        )
        # Fan-out (receipts, secure-aggregation requests) publishes hundreds of
        # messages at once by design; aiomqtt would warn from ten on.
        client.pending_calls_threshold = 100_000
        _write_at_once(client)
        return client

    async def run(self) -> None:
        """Stay connected until :meth:`close`; reconnect after every failure."""
        while not self._closing:
            try:
                async with self._make_client() as client:
                    for topic in self.subscriptions:
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    self.connects += 1
                    self.backoff.reset()
                    self.connected.set()
                    if self.on_connect is not None:
                        await self.on_connect()
                    async for message in _messages(client):
                        self.retained = bool(message.retain)
                        try:
                            await self._dispatch(str(message.topic), message.payload)
                        finally:
                            self.retained = False
            except aiomqtt.MqttError as exc:
                if not self._closing:
                    log.info("%s: connection lost (%s); reconnecting", self.identifier, exc)
            finally:
                self._client = None
                self.connected.clear()
            if not self._closing:
                # After abort() the broker is fine: come back at once, as a restart would.
                aborted, self._aborted = self._aborted, False
                await asyncio.sleep(0 if aborted else self.backoff.next())

    async def _dispatch(self, topic: str, payload: object) -> None:
        if not isinstance(payload, bytes | bytearray):
            log.warning("%s: dropped a non-binary payload on %s", self.identifier, topic)
            return
        try:
            result = self.on_message(topic, bytes(payload))
            if result is not None:
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: handler failed on a message from %s", self.identifier, topic)

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish now if connected (QoS 0); False if not."""
        client = self._client
        if client is None:
            return False
        # aiomqtt's publish, without its wait for an acknowledgement QoS 0 never has.
        info = client._client.publish(topic, payload, qos=0, retain=retain)  # aiomqtt 2.x: pinned
        return bool(info.rc == 0)

    def abort(self) -> None:
        """Drop the connection without a goodbye, as a crashed process does.

        The socket is closed without an MQTT DISCONNECT (the operating system of a
        crashed process closes it too), so the broker publishes this client's will
        at once; :meth:`run` then reconnects without a backoff. (A power cut or a
        broken link closes nothing: the broker notices after 1.5 keepalive
        intervals.) Only TCP and TLS transports can be aborted; otherwise nothing
        happens.
        """
        client = self._client
        sock = None if client is None else client._client.socket()  # aiomqtt 2.x is pinned
        if isinstance(sock, _BufferedSocket):
            sock = sock.raw
        if isinstance(sock, socket.socket):  # TCP or TLS
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return  # already closed: run() is reconnecting anyway
            self._aborted = True

    async def close(self) -> None:
        """Disconnect cleanly (the broker does not publish the will) and stop reconnecting."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
