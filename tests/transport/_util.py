"""Helpers shared by the transport tests."""

from __future__ import annotations

import asyncio

from gridsim.transport.mqtt import Connection


async def connected(*connections: Connection, seconds: float = 10.0) -> None:
    """Wait until every one of ``connections`` (started) is connected."""
    for c in connections:
        await asyncio.wait_for(c.connected.wait(), seconds)
