"""The simulated fleet's MQTT client: MQTT 3.1.1 on an asyncio protocol, nothing more.

A run puts hundreds of meters and the aggregator on one event loop, and every
protocol message costs each end a receipt or a publication. Over aiomqtt and paho
a request and its reply cost about 200 us of the loop's CPU (paho reads each
packet with several ``recv`` calls and builds it up in Python object by object,
aiomqtt adds a queue, futures and a task per message); here about 20 us (gmqtt,
another asyncio client: about 60 us). Measured with 500 connections and one
aggregator on one loop over Mosquitto: ``python -m gridsim bench transport``.

What it speaks, and what it leaves out on purpose:

* CONNECT with a clean session, a will, user name and password, over TCP or TLS
  (``mqtts://``, the system's trust store);
* SUBSCRIBE at QoS 1 (the broker's retained messages and wills arrive at QoS 1
  and are acknowledged at once, as paho does);
* PUBLISH at QoS 0 only, the only level the project sends (see
  :meth:`LeanConnection.publish`); retained or not;
* PINGREQ when nothing was sent for half the keep-alive interval, and a
  connection that has said nothing for 1.5 intervals is dropped (the broker's
  own rule, the other way round);
* DISCONNECT on :meth:`close`; none on :meth:`abort`, so the broker publishes
  the will, as it does for a crashed meter.

No MQTT 5, no QoS 2, no persistent sessions, no websockets: the aggregator and
the meters need none of them. ``--mqtt-client aiomqtt`` runs the same protocol
over aiomqtt and paho for anything this client lacks.

Messages reach ``on_message`` in the order they arrive. A handler that returns
an awaitable holds the messages after it (they wait in a backlog, in order)
until it completes, as if each message were awaited in turn; a handler that
finishes at once costs no task and no loop iteration.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Sequence
from typing import Any, Final

from gridsim.transport.broker import BrokerAddress
from gridsim.transport.mqtt import Connection, MessageHandler, Will

log = logging.getLogger(__name__)

MAX_PACKET: Final = 64 * 1024 * 1024
"""The largest packet accepted, a bound on memory (the shipped broker's limit is
16 MiB; MQTT's own, 256 MiB, would let one bad length claim that much)."""

_PINGREQ: Final = b"\xc0\x00"
_DISCONNECT: Final = b"\xe0\x00"
_CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MqttProtocolError(ConnectionError):
    """The broker sent something MQTT 3.1.1 does not allow here."""


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > 0xFFFF:
        raise ValueError(f"an MQTT string or field holds at most 65,535 bytes, not {len(raw)}")
    return struct.pack("!H", len(raw)) + raw


def connect_packet(
    identifier: str,
    keepalive: int,
    will: Will | None = None,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """CONNECT (MQTT 3.1.1) with a clean session."""
    flags = 0x02
    payload = _field(identifier)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _field(will.topic) + _field(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _field(username)
        if password is not None:
            flags |= 0x40
            payload += _field(password)
    body = _field("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, topics: Sequence[str], qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_field(t) + bytes((qos,)) for t in topics)
    return b"\x82" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, retain: bool = False) -> bytes:
    """PUBLISH at QoS 0."""
    name = topic.encode()
    head = struct.pack("!H", len(name)) + name
    return (
        (b"\x31" if retain else b"\x30")
        + _remaining_length(len(head) + len(payload))
        + head
        + payload
    )


def _keep_nagle(transport: asyncio.BaseTransport | None) -> None:
    """Turn Nagle's algorithm back on (asyncio turns it off for every TCP transport).

    With TCP_NODELAY, the aggregator's burst of 500 small receipts followed by the
    next round's announcement stalled the broker's deliveries to the meters for
    about 180 ms at the start of three plain rounds in four (no meter heard
    anything from 20 ms to 200 ms into the round; the aggregator's buffer was
    empty, the loop idle); with Nagle's algorithm, as paho leaves it, the meters
    heard the round from the first millisecond on, and request/reply costs the
    same (``bench transport``: 23 against 25 us). Only for TCP; TLS runs over it.
    """
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)


class _Session(asyncio.Protocol):
    """One network connection: splits the byte stream into packets for its owner."""

    def __init__(self, owner: LeanConnection) -> None:
        loop = asyncio.get_running_loop()
        self._owner = owner
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[Exception | None] = loop.create_future()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[bytes] = loop.create_future()
        self.last_in = loop.time()
        self.last_out = self.last_in
        self._time = loop.time

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionError("not connected")
        transport.write(data)
        self.last_out = self._time()

    def data_received(self, data: bytes) -> None:
        self.last_in = self._time()
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # the common case: nothing left over, parse what came
        pos, end = 0, len(view)
        try:
            while end - pos >= 2:
                first = view[pos]
                length, shift, i = 0, 0, pos + 1
                while True:
                    if i >= end:
                        length = -1
                        break
                    byte = view[i]
                    length |= (byte & 0x7F) << shift
                    i += 1
                    if not byte & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MqttProtocolError("a remaining length longer than four bytes")
                if length < 0:
                    break
                if length > MAX_PACKET:
                    raise MqttProtocolError(f"a packet of {length} bytes")
                if i + length > end:
                    break
                pos = i + length
                self._owner._packet(self, first, view, i, pos)
                if self.closed.done():
                    return  # aborted by a handler: the rest is not for this meter any more
        except MqttProtocolError as exc:
            log.warning("%s: %s; dropping the connection", self._owner.identifier, exc)
            self.abort(exc)
            return
        if view is buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:]

    def abort(self, exc: Exception | None = None) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(self)
        if not self.closed.done():
            self.closed.set_result(exc)
        lost = exc if exc is not None else ConnectionError("connection closed")
        for waiter in (self.connack, self.suback):
            if not waiter.done():
                waiter.set_exception(lost)
                waiter.exception()  # retrieved: the run loop reports it, not asyncio


class LeanConnection(Connection):
    """Keeps one client connected for as long as it runs (see module docstring)."""

    def __init__(
        self,
        address: BrokerAddress,
        identifier: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        *,
        timeout: float = 30.0,
        **options: Any,
    ) -> None:
        super().__init__(address, identifier, subscriptions, on_message, **options)
        self.timeout = timeout
        self._session: _Session | None = None
        # Messages that came while an earlier one's handler was still running, or
        # while the connection was being set up (until on_connect has run).
        self._backlog: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._holding = True
        self._handling: asyncio.Task[None] | None = None

    # -- incoming -------------------------------------------------------------

    def _packet(
        self, session: _Session, first: int, data: bytes | bytearray, i: int, end: int
    ) -> None:
        kind = first >> 4
        if kind == 3:  # PUBLISH
            qos = (first >> 1) & 3
            if end - i < 2:
                raise MqttProtocolError("a PUBLISH without a topic")
            p = i + 2 + ((data[i] << 8) | data[i + 1])
            try:
                topic = data[i + 2 : p].decode()
            except UnicodeDecodeError:
                raise MqttProtocolError("a topic that is not UTF-8") from None
            if qos:
                if qos == 3 or p + 2 > end:
                    raise MqttProtocolError("a malformed QoS field")
                with contextlib.suppress(ConnectionError):  # closing: the broker resends
                    session.write(b"\x40\x02" + bytes(data[p : p + 2]))  # PUBACK
                p += 2
            if p > end:
                raise MqttProtocolError("a topic longer than its packet")
            self._deliver(topic, bytes(data[p:end]), bool(first & 1))
        elif kind == 2:  # CONNACK
            if end - i != 2:
                raise MqttProtocolError("a malformed CONNACK")
            if not session.connack.done():
                session.connack.set_result(data[i + 1])
        elif kind == 9:  # SUBACK
            if not session.suback.done():
                session.suback.set_result(bytes(data[i + 2 : end]))
        elif kind == 13:  # PINGRESP
            pass
        else:
            raise MqttProtocolError(f"an unexpected packet of type {kind}")

    def _deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._holding or self._handling is not None:
            self._backlog.append((topic, payload, retained))
            return
        pending = self._handle(topic, payload, retained)
        if pending is not None:  # later messages wait until this one is handled
            self._handling = asyncio.get_running_loop().create_task(self._drain(pending))

    def _handle(self, topic: str, payload: bytes, retained: bool) -> Awaitable[None] | None:
        """Hand one message over; the handler's awaitable if it did not finish."""
        self.retained = retained
        try:
            return self.on_message(topic, payload)
        except Exception:
            log.exception("%s: handler failed on a message from %s", self.identifier, topic)
            return None
        finally:
            self.retained = False

    async def _drain(self, pending: Awaitable[None] | None) -> None:
        try:
            while pending is not None:
                try:
                    await pending
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # close(): stop here
                    log.warning("%s: a handler's wait was cancelled", self.identifier)
                except Exception:
                    log.exception("%s: handler failed", self.identifier)
                pending = self._next()
        finally:
            self._handling = None

    def _next(self) -> Awaitable[None] | None:
        """Handle held messages in order until one has to be waited for (returned)."""
        backlog = self._backlog
        while backlog and not self._holding:
            pending = self._handle(*backlog.popleft())
            if pending is not None:
                return pending
        return None

    def _release(self) -> None:
        """The connection is set up: hand over what arrived meanwhile, then the rest."""
        self._holding = False
        if self._handling is None:
            pending = self._next()
            if pending is not None:
                self._handling = asyncio.get_running_loop().create_task(self._drain(pending))

    # -- connection -------------------------------------------------------------

    def _lost(self, session: _Session) -> None:
        """``session`` is gone: publishing waits for the next one from now on."""
        if self._session is session:
            self._session = None
            self.connected.clear()

    async def _open(self) -> _Session:
        # asyncio.timeout, not wait_for: on Python 3.11 a wait_for cancelled in the
        # loop turn its future completes returns normally and loses the cancellation,
        # and close() would wait for a connection that goes on.
        async with asyncio.timeout(self.timeout):
            return await self._handshake()

    async def _handshake(self) -> _Session:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if self.address.tls else None
        _, session = await loop.create_connection(
            lambda: _Session(self), self.address.host, self.address.port, ssl=context
        )
        _keep_nagle(session.transport)
        try:
            session.write(
                connect_packet(
                    self.identifier,
                    self.keepalive,
                    self.will,
                    self.address.username,
                    self.address.password,
                )
            )
            code = await session.connack
            if code != 0:
                raise ConnectionRefusedError(
                    f"the broker refused the connection: {_CONNACK_REASONS.get(code, code)}"
                )
            if self.subscriptions:
                session.write(subscribe_packet(1, self.subscriptions))
                granted = await session.suback
                if len(granted) != len(self.subscriptions) or 0x80 in granted:
                    raise MqttProtocolError(f"the broker refused a subscription: {granted.hex()}")
        except BaseException:
            session.abort()
            raise
        return session

    async def _keep_alive(self, session: _Session) -> None:
        """Ping when quiet; drop a connection the broker stopped answering on."""
        loop = asyncio.get_running_loop()
        interval = self.keepalive / 2
        while not session.closed.done():
            await asyncio.wait([session.closed], timeout=interval)
            if session.closed.done():
                return
            now = loop.time()
            if now - session.last_in > 1.5 * self.keepalive:
                session.abort(TimeoutError("the broker has been silent"))
                return
            # Quiet either way: a ping keeps the broker's count going, and its answer
            # ours (a client that only publishes hears nothing otherwise).
            if now - session.last_out >= interval or now - session.last_in >= interval:
                with contextlib.suppress(ConnectionError):
                    session.write(_PINGREQ)

    async def run(self) -> None:
        """Stay connected until :meth:`close`; reconnect after every failure."""
        while not self._closing:
            session: _Session | None = None
            self._holding = True  # until on_connect has run, as aiomqtt does
            try:
                session = await self._open()
                if self._closing:
                    break
                self._session = session
                self.connects += 1
                self.backoff.reset()
                self.connected.set()
                if self.on_connect is not None:
                    await self.on_connect()
                if self._closing:
                    break
                self._release()
                if self.keepalive:
                    await self._keep_alive(session)
                lost = await session.closed
                if not self._closing:
                    log.info("%s: connection lost (%s); reconnecting", self.identifier, lost)
            except (OSError, TimeoutError, ConnectionError) as exc:
                if not self._closing:
                    log.info("%s: cannot connect (%s); retrying", self.identifier, exc)
            finally:
                self._session = None
                self.connected.clear()
                if session is not None and session.transport is not None:
                    if self._closing:  # a goodbye, after what is still buffered
                        with contextlib.suppress(ConnectionError):
                            session.write(_DISCONNECT)
                        session.transport.close()
                    else:
                        session.transport.abort()
            if not self._closing:
                # After abort() the broker is fine: come back at once, as a restart would.
                aborted, self._aborted = self._aborted, False
                await asyncio.sleep(0 if aborted else self.backoff.next())

    # -- outgoing -------------------------------------------------------------

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish now if connected (QoS 0); False if not."""
        session = self._session
        if session is None:
            return False
        try:
            session.write(publish_packet(topic, payload, retain))
        except ConnectionError:
            return False
        return True

    def abort(self) -> None:
        """Drop the connection without a goodbye, as a crashed process does.

        The broker publishes this client's will at once; :meth:`run` reconnects
        without a backoff.
        """
        session = self._session
        if session is not None:
            self._aborted = True
            session.abort(ConnectionAbortedError("aborted"))

    async def close(self) -> None:
        """Disconnect cleanly (the broker does not publish the will) and stop reconnecting."""
        self._closing = True
        session = self._session
        if session is not None and session.transport is not None:
            with contextlib.suppress(ConnectionError):
                session.write(_DISCONNECT)
            # Closing flushes what is buffered first (the last messages, then the
            # goodbye); the connection is lost once it has been written.
            session.transport.close()
            await asyncio.wait([session.closed], timeout=self.timeout)
            if not session.closed.done():
                session.abort(TimeoutError("the broker did not take the last messages"))
        for task in (self._task, self._handling):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
