"""MQTT request/reply cost per meter: gridsim's lean client vs aiomqtt/paho vs gmqtt (JSON).

The shape of a SecAgg+ stage: ``--meters`` meter connections and one aggregator
connection on one event loop (as in ``run``), over a private Mosquitto. Each
trial the aggregator publishes one request of ``--request-bytes`` to each meter's
own topic and every meter answers with ``--reply-bytes``; the trial ends when
all answers are in. Reported per client: the event loop thread's CPU per
request/reply (both ends' client code, the handlers are empty) and each trial's
wall time, medians over ``--trials``. The broker's own CPU is not counted. gmqtt
(another asyncio MQTT client, from the ``bench`` extra) is the peer; it is
skipped if not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gridsim import __version__
from gridsim.config import MQTT_CLIENTS
from gridsim.transport.broker import BrokerAddress, BrokerProcess
from gridsim.transport.mqtt import connection

Publish = Callable[[str, bytes], Awaitable[None]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--request-bytes", type=int, default=2000)
    parser.add_argument("--reply-bytes", type=int, default=2000)
    parser.add_argument(
        "--clients", default=",".join((*MQTT_CLIENTS, "gmqtt")), help="comma-separated"
    )


class _Gmqtt:
    """A gmqtt client with the same four calls the benchmark makes of ours."""

    def __init__(self, address: BrokerAddress, ident: str, subs: list[str], handler: Any) -> None:
        import gmqtt

        logging.getLogger("gmqtt").setLevel(logging.WARNING)  # it logs every connection
        self.client = gmqtt.Client(ident)
        self.address, self.subs = address, subs

        def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
            handler(topic, payload)
            return 0

        self.client.on_message = on_message

    async def start(self) -> None:
        from gmqtt.mqtt.constants import MQTTv311

        await self.client.connect(self.address.host, self.address.port, version=MQTTv311)
        for topic in self.subs:
            self.client.subscribe(topic, qos=1)
        await asyncio.sleep(0.01)

    def publish_nowait(self, topic: str, payload: bytes) -> bool:
        self.client.publish(topic, payload, qos=0)
        return True

    async def close(self) -> None:
        await self.client.disconnect()


async def _measure(address: BrokerAddress, client: str, args: argparse.Namespace) -> dict[str, Any]:
    n = args.meters
    request, reply = b"r" * args.request_bytes, b"a" * args.reply_bytes
    answered = 0
    done = asyncio.Event()

    def on_answer(topic: str, payload: bytes) -> None:
        nonlocal answered
        answered += 1
        if answered == n:
            done.set()

    def make(ident: str, subs: list[str], handler: Any) -> Any:
        if client == "gmqtt":
            return _Gmqtt(address, ident, subs, handler)
        return connection(client, address, ident, subs, handler)

    def meter_handler(i: int, holder: list[Any]) -> Callable[[str, bytes], None]:
        up = f"bench/up/{i}"

        def handle(topic: str, payload: bytes) -> None:
            holder[0].publish_nowait(up, reply)

        return handle

    aggregator = make("bench-aggregator", ["bench/up/+"], on_answer)
    meters = []
    for i in range(n):
        holder: list[Any] = []
        meter = make(f"bench-meter-{i}", [f"bench/down/{i}"], meter_handler(i, holder))
        holder.append(meter)
        meters.append(meter)
    everyone = [aggregator, *meters]
    for c in everyone:
        if client == "gmqtt":
            await c.start()
        else:
            c.start()
            await asyncio.wait_for(c.connected.wait(), 30)
    await asyncio.sleep(0.5)
    cpu_us, wall_ms = [], []
    try:
        for trial in range(args.trials + 1):  # the first warms up
            answered = 0
            done.clear()
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            for i in range(n):
                aggregator.publish_nowait(f"bench/down/{i}", request)
            await asyncio.wait_for(done.wait(), 60)
            if trial:
                cpu_us.append((time.thread_time() - cpu0) / n * 1e6)
                wall_ms.append((time.perf_counter() - wall0) * 1e3)
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(c.close() for c in everyone), return_exceptions=True)
    return {
        "loop_cpu_us_per_request_reply": round(statistics.median(cpu_us), 2),
        "loop_cpu_us_min": round(min(cpu_us), 2),
        "trial_wall_ms": round(statistics.median(wall_ms), 2),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    result: dict[str, object] = {
        "benchmark": "transport",
        "version": __version__,
        "meters": args.meters,
        "trials": args.trials,
        "request_bytes": args.request_bytes,
        "reply_bytes": args.reply_bytes,
    }
    with BrokerProcess("auto") as address:
        for client in clients:
            if client == "gmqtt":
                try:
                    import gmqtt  # noqa: F401
                except ImportError:
                    result[client] = {
                        "skipped": "gmqtt is not installed (pip install gridsim[bench])"
                    }
                    continue
            result[client] = asyncio.run(_measure(address, client, args))
    lean = result.get("lean")
    if isinstance(lean, dict) and "loop_cpu_us_per_request_reply" in lean:
        for peer in clients:
            other = result.get(peer)
            if (
                peer != "lean"
                and isinstance(other, dict)
                and "loop_cpu_us_per_request_reply" in other
            ):
                result[f"lean_cpu_advantage_over_{peer}"] = round(
                    other["loop_cpu_us_per_request_reply"] / lean["loop_cpu_us_per_request_reply"],
                    2,
                )
    return result
