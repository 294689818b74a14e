"""A meter resends its last SecAgg+ reply when the aggregator announces the round again.

The aggregator re-announces the open round after every reconnect (e.g. a broker
restart); a reply the meter published as the connection went down may never have
reached the broker. The end-to-end restart test causes this for real, but whether
a reply is caught in flight depends on timing; here the meter's outgoing messages
are captured at :meth:`MeterAgent._send` so the behaviour is checked every time.
"""

from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridsim.config import RunConfig
from gridsim.learning.model import initial_parameters
from gridsim.meter.agent import MeterAgent
from gridsim.meter.training_pool import TrainingPool
from gridsim.run import meter_windows
from gridsim.transport import codec
from gridsim.transport.broker import BrokerAddress

CFG = RunConfig(meters=4, days=10, test_days=3, seed=4)


def _announce(run: str, round_: int, server_key: bytes) -> codec.RoundAnnounce:
    return codec.RoundAnnounce(
        v=codec.WIRE_VERSION,
        session="s",
        run=run,
        round=round_,
        train=True,
        selected=[3],
        deadline_s=30.0,
        plan=codec.TrainPlan(1, 32, 0.003),
        model=codec.vector_to_bytes(initial_parameters(CFG.seed)),
        ledger_key="",
        secagg_key=server_key,
    )


def _agent_with_outbox() -> tuple[MeterAgent, list[tuple[str | None, bytes]]]:
    """Meter 3, and the list its outgoing messages land in (topic, payload)."""
    pool = TrainingPool(meter_windows([3], CFG), seed=CFG.seed)
    agent = MeterAgent(
        3, address=BrokerAddress("127.0.0.1", 1), session="s", pool=pool, seed=CFG.seed
    )
    sent: list[tuple[str | None, bytes]] = []

    def capture(payload: bytes, topic: str) -> None:
        sent.append((topic, payload))

    agent._send = capture  # type: ignore[method-assign]
    return agent, sent


def test_a_reannounced_round_gets_the_last_secagg_reply_again_and_only_that_round() -> None:
    async def scenario() -> list[tuple[str | None, bytes]]:
        agent, sent = _agent_with_outbox()
        key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        try:
            agent._on_announce(_announce("run-a", 2, key))
            agent._reply_with(2, agent.topics.secagg_up(3), b"shares of round 2")
            agent._on_announce(_announce("run-a", 2, key))  # after a reconnect
            await asyncio.sleep(0.05)
            # Not for another aggregator's run, nor once the next round has begun.
            agent._on_announce(_announce("run-b", 2, key))
            agent._on_announce(_announce("run-b", 3, key))
            agent._on_announce(_announce("run-b", 3, key))
            await asyncio.sleep(0.05)
        finally:
            await agent.stop()
        return sent

    sent = asyncio.run(scenario())
    up = "gridsim/s/secagg-up/3"
    assert sent == [(up, b"shares of round 2"), (up, b"shares of round 2")]


def test_a_repeated_request_gets_the_last_reply_again_once_per_connection() -> None:
    # After a reconnect the aggregator repeats its announcement (once per reconnect of
    # its own: the answer goes again every time) and its open request, and the
    # meter's hello makes it repeat the request again: for repeated requests the
    # answer goes again once per connection of the meter's, unless it went already.
    async def scenario() -> list[bytes]:
        agent, sent = _agent_with_outbox()
        key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        try:
            agent._on_announce(_announce("run-a", 2, key))
            agent._reply_with(2, agent.topics.secagg_up(3), b"shares of round 2")
            agent._resend_reply()  # a repeated request: sent again
            agent._resend_reply()  # and another on the same connection: not
            agent._on_announce(_announce("run-a", 2, key))  # re-announced: sent again
            agent._resend_reply()  # not
            agent.connection.connects += 1  # the meter reconnects
            agent._resend_reply()  # sent again
            await asyncio.sleep(0.05)
        finally:
            await agent.stop()
        return [payload for _, payload in sent]

    assert asyncio.run(scenario()) == [b"shares of round 2"] * 4
