"""``python -m gridsim.transport.amqtt_broker PORT``: the embedded fallback broker.

Starts amqtt's broker on ``127.0.0.1:PORT`` with anonymous access, from a
config built here rather than amqtt's command-line script (whose CLI
dependencies clash with other tools' pins). Runs until terminated.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {
            "default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "max_connections": 0}
        },
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m gridsim.transport.amqtt_broker PORT")
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
