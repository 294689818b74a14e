"""A secure round's first SecAgg+ request comes inside the round announcement.

The meter takes it up while it handles the announcement (before it reads the next
message, which may already be the sharing request) and answers with its signed
keys; a request it cannot accept keeps it out of the round with the reason
logged. Outgoing messages are captured at :meth:`MeterAgent._send`; the request
is a real one, made and signed by :class:`SecAggServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import aiomqtt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridsim.config import RunConfig
from gridsim.learning.model import initial_parameters
from gridsim.meter.agent import MeterAgent
from gridsim.meter.identity import meter_signing_key
from gridsim.meter.training_pool import TrainingPool
from gridsim.run import meter_windows
from gridsim.secagg import messages as sa
from gridsim.secagg.client import SecAggClient
from gridsim.secagg.server import SecAggConfig, SecAggServer
from gridsim.transport import codec
from gridsim.transport.broker import BrokerAddress

CFG = RunConfig(meters=4, days=10, test_days=3, seed=4)
METERS = [0, 1, 2, 3]
ME = 3


def _opening(server_key: Ed25519PrivateKey, agent: MeterAgent) -> bytes:
    server = SecAggServer(server_key, "s", SecAggConfig(d=8, neighbors="all"))
    for m in METERS:
        server.enroll(m, agent.peer_keys[m] if m != ME else agent._key.public_key())
    out = server.start_round(5, METERS, 0.0)
    assert out.broadcast is not None
    return sa.encode(out.broadcast)


def _announce(server_key: Ed25519PrivateKey, opening: bytes) -> codec.RoundAnnounce:
    return codec.RoundAnnounce(
        v=codec.WIRE_VERSION,
        session="s",
        run="ab",
        round=5,
        train=True,
        selected=METERS,
        deadline_s=30.0,
        plan=codec.TrainPlan(1, 32, 0.003),
        model=codec.vector_to_bytes(initial_parameters(CFG.seed)),
        ledger_key="",
        secagg_key=server_key.public_key().public_bytes_raw(),
        secagg_open=opening,
    )


@pytest.mark.parametrize("forged", [False, True])
def test_the_announcement_opens_the_secure_round(forged: bool) -> None:
    Sent = list[tuple[str | None, bytes]]

    async def scenario() -> tuple[Sent, MeterAgent, sa.Stage | None, bool]:
        pool = TrainingPool(meter_windows([ME], CFG), seed=CFG.seed)
        agent = MeterAgent(
            ME, address=BrokerAddress("127.0.0.1", 1), session="s", pool=pool, seed=CFG.seed
        )
        sent: Sent = []

        def capture(payload: bytes, topic: str) -> None:
            sent.append((topic, payload))

        agent._send = capture  # type: ignore[method-assign]
        server_key = Ed25519PrivateKey.generate()
        # Forged: signed by a key other than the one the announcement names.
        opening = _opening(Ed25519PrivateKey.generate() if forged else server_key, agent)
        try:
            agent._on_announce(_announce(server_key, opening))
            # Taken up at once: the client now waits for the sharing request.
            assert agent._secagg is not None
            expecting = agent._secagg.expecting
            started = agent._task is not None
            await asyncio.sleep(0.05)
        finally:
            await agent.stop()
        return sent, agent, expecting, started

    sent, agent, expecting, started = asyncio.run(scenario())
    if forged:
        assert sent == []
        assert expecting is None and not started  # stays out: no training either
        assert agent.rejected_messages == 1
        return
    assert expecting is sa.Stage.SHARE and started
    assert len(sent) == 1
    topic, payload = sent[0]
    assert topic == agent.topics.secagg_up(ME)
    advert = sa.decode(payload)
    assert isinstance(advert, sa.AdvertiseKeys)
    assert (advert.meter, advert.round) == (ME, 5)
    sa.verify_signature(advert, agent._key.public_key())


@pytest.mark.parametrize("connects", [1, 2], ids=["just-started", "reconnected"])
def test_only_a_meter_that_just_started_sits_out_a_retained_round(connects: int) -> None:
    """After a broker restart the aggregator publishes its announcement again, and a
    meter that reconnects may get it retained: it has not restarted, so it joins."""

    async def scenario() -> tuple[int, bool]:
        pool = TrainingPool(meter_windows([ME], CFG), seed=CFG.seed)
        agent = MeterAgent(
            ME, address=BrokerAddress("127.0.0.1", 1), session="s", pool=pool, seed=CFG.seed
        )

        def discard(payload: bytes, topic: str) -> None:
            pass

        agent._send = discard  # type: ignore[method-assign]
        server_key = Ed25519PrivateKey.generate()
        agent.connection.retained, agent.connection.connects = True, connects
        try:
            agent._on_announce(_announce(server_key, _opening(server_key, agent)))
            return agent._sits_out, agent._task is not None
        finally:
            await agent.stop()

    sits_out, started = asyncio.run(scenario())
    assert (sits_out, started) == ((5, False) if connects == 1 else (-1, True))


@pytest.mark.broker
@pytest.mark.parametrize("under_way", [True, False], ids=["under-way", "live"])
def test_a_meter_that_starts_during_a_secure_round_sits_it_out(
    mosquitto: BrokerAddress, under_way: bool
) -> None:
    """A meter (re)started while a secure round is under way holds nothing of it and
    cannot tell how far it has gone: it says so in a hello instead of advertising
    keys the aggregator may no longer take (and being waited for). A round
    announced after it started, it joins."""

    async def scenario() -> tuple[list[int], list[sa.SecAggMessage], bool]:
        pool = TrainingPool(meter_windows([ME], CFG), seed=CFG.seed)
        agent = MeterAgent(ME, address=mosquitto, session="s", pool=pool, seed=CFG.seed)
        server_key = Ed25519PrivateKey.generate()
        announce = codec.encode(_announce(server_key, _opening(server_key, agent)))
        topics = agent.topics
        hellos: list[int] = []
        replies: list[sa.SecAggMessage] = []
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as probe:
            await probe.subscribe(topics.hello(ME), qos=1)
            await probe.subscribe(topics.secagg_up(ME), qos=1)
            if under_way:  # announced before the meter connects: it finds it retained
                await probe.publish(topics.round, announce, qos=1, retain=True)
            agent.start()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3.0):
                        async for message in probe.messages:
                            payload = bytes(cast(bytes, message.payload))
                            if message.topic.matches(topics.hello(ME)):
                                hello = codec.decode(payload)
                                assert isinstance(hello, codec.Hello)
                                hellos.append(hello.sits_out)
                                if not under_way and len(hellos) == 1:
                                    await probe.publish(topics.round, announce, qos=1)
                            else:
                                replies.append(sa.decode(payload))
                started = agent._task is not None
            finally:
                await agent.stop()
                pool.close()
        return hellos, replies, started

    hellos, replies, started = asyncio.run(scenario())
    if under_way:
        assert hellos == [-1, 5] and replies == [] and not started
    else:
        assert hellos == [-1] and started
        assert [type(r) for r in replies] == [sa.AdvertiseKeys]


def test_a_repeated_sharing_request_gets_the_shares_again_and_a_forged_one_is_refused() -> None:
    """After a reconnect the aggregator repeats its open request: a meter that has
    answered it sends the same answer again (it may have been lost) instead of
    refusing it; a copy with a forged signature is refused and logged, unanswered.
    The requests are real ones, made and signed by :class:`SecAggServer`."""

    async def scenario() -> tuple[list[bytes], int, int]:
        pool = TrainingPool(meter_windows([ME], CFG), seed=CFG.seed)
        agent = MeterAgent(
            ME, address=BrokerAddress("127.0.0.1", 1), session="s", pool=pool, seed=CFG.seed
        )
        sent: list[bytes] = []

        def capture(payload: bytes, topic: str) -> None:
            sent.append(payload)

        agent._send = capture  # type: ignore[method-assign]
        server_key = Ed25519PrivateKey.generate()
        server = SecAggServer(server_key, "s", SecAggConfig(d=8, neighbors="all"))
        others = {
            m: SecAggClient(
                m,
                meter_signing_key(CFG.seed, m),
                server_key.public_key(),
                agent.peer_keys,
                session="s",
            )
            for m in METERS
            if m != ME
        }
        for m in METERS:
            server.enroll(m, agent.peer_keys[m] if m != ME else agent._key.public_key())
        opening = server.start_round(5, METERS, 0.0).broadcast
        assert isinstance(opening, sa.AdvertiseRequest)
        try:
            agent._on_announce(_announce(server_key, sa.encode(opening)))
            for client in others.values():
                advert = client.advertise(opening)
                assert advert is not None
                server.receive(advert, 0.0)
            server.receive(sa.decode(sent[0]), 0.0)  # this meter's advertisement
            request = server.close_stage(0.0).direct[ME]
            topic = agent.topics.secagg_to(ME)
            payload = sa.encode(request)
            waiting = agent._on_secagg(topic, payload)  # shares once training starts
            if waiting is not None:
                await asyncio.wait_for(waiting, 30)
            answered = len(sent)
            assert agent._on_secagg(topic, payload) is None  # repeated: answered again
            forged = sa.encode(msgspec.structs.replace(request, sig=bytes(64)))
            assert agent._on_secagg(topic, forged) is None
            await asyncio.sleep(0.05)
            return sent, answered, agent.rejected_messages
        finally:
            await agent.stop()
            pool.close()

    sent, answered, rejected = asyncio.run(scenario())
    assert answered == 2  # the advertisement, then the shares
    shares = sa.decode(sent[1])
    assert isinstance(shares, sa.ShareKeys) and shares.meter == ME
    assert sent[2:] == [sent[1]]  # the same answer once more, nothing for the forgery
    assert rejected == 1
