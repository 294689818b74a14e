"""The aggregator's handling of enrolment and signatures, driven without a broker."""

import asyncio
import hashlib
import time

import numpy as np
import pytest

from gridsim.aggregator.service import WILL_SETTLE_S, Aggregator, AggregatorConfig
from gridsim.ledger.entries import MeterContribution
from gridsim.meter.identity import meter_signing_key, raw_public_key
from gridsim.transport import codec
from gridsim.transport.broker import BrokerAddress
from gridsim.transport.topics import Topics

DIM = 6


def _hello(meter: int, key_seed: int, sits_out: int = -1) -> bytes:
    key = raw_public_key(meter_signing_key(key_seed, meter))
    return codec.encode(
        codec.Hello(
            v=codec.WIRE_VERSION,
            session="s",
            meter=meter,
            n_train=10,
            public_key=key,
            sits_out=sits_out,
        )
    )


def _update(agg: Aggregator, meter: int, key_seed: int, delta: np.ndarray) -> bytes:
    payload = codec.vector_to_bytes(delta.astype(np.float32))
    key = meter_signing_key(key_seed, meter)
    digest = hashlib.sha256(payload).digest()
    sig = key.sign(MeterContribution.message("s", 0, meter, digest))
    return codec.encode(
        codec.Update(
            v=codec.WIRE_VERSION,
            session="s",
            run=agg.run_id,
            round=0,
            meter=meter,
            n_samples=10,
            train_loss=0.1,
            train_s=0.0,
            delta=payload,
            eval=codec.EvalReport(0, 0, 0, 0, 0, 0),
            payload_sha256=digest,
            signature=sig,
        )
    )


async def _aggregator() -> Aggregator:
    cfg = AggregatorConfig(session="s", rounds=1, expected_meters=2)
    agg = Aggregator(BrokerAddress("127.0.0.1", 1), cfg, np.zeros(DIM, dtype=np.float32))
    # Messages are handed in directly, as from a connected aggregator (it takes a
    # will for a dropped meter only while it hears the broker).
    agg.connection.connected.set()
    return agg


async def _aggregator_in_a_round(meters: list[int]) -> Aggregator:
    """An aggregator with ``meters`` enrolled and round 0 open for all of them."""
    from gridsim.aggregator.fedavg_round import FedAvgRound

    agg = await _aggregator()
    t = Topics("s")
    for m in meters:
        agg._on_message(t.hello(m), _hello(m, key_seed=7))
    agg._round = FedAvgRound(
        0, selected=meters, model=np.zeros(DIM, dtype=np.float32), train=True, run=agg.run_id
    )
    return agg


def test_forged_hello_and_update_are_rejected() -> None:
    async def scenario() -> None:
        agg = await _aggregator()
        t = Topics("s")
        agg._on_message(t.hello(1), _hello(1, key_seed=7))
        agg._on_message(t.hello(2), _hello(2, key_seed=7))
        # Someone else claims meter 1 with another key: refused, meter 1 keeps its key.
        agg._on_message(t.hello(1), _hello(1, key_seed=99))
        assert agg.rejected_messages == 1
        from gridsim.aggregator.fedavg_round import FedAvgRound

        agg._round = FedAvgRound(
            0,
            selected=[1, 2],
            model=np.zeros(DIM, dtype=np.float32),
            train=True,
            run=agg.run_id,
        )
        # An update for meter 1 signed with the impostor's key is forged.
        agg._on_message(t.update(1), _update(agg, 1, key_seed=99, delta=np.ones(DIM)))
        assert agg.rejected_messages == 2 and agg._round.pending() == {1, 2}
        # An update from a meter that never enrolled is refused too.
        agg._on_message(t.update(5), _update(agg, 5, key_seed=7, delta=np.ones(DIM)))
        assert agg.rejected_messages == 3
        # The genuine updates are accepted.
        agg._on_message(t.update(1), _update(agg, 1, key_seed=7, delta=np.ones(DIM)))
        agg._on_message(t.update(2), _update(agg, 2, key_seed=7, delta=np.ones(DIM)))
        assert agg._round.complete and agg.rejected_messages == 3
        out = agg._round.close()
        np.testing.assert_allclose(out.model, np.ones(DIM))
        assert set(out.contributions) == {1, 2}

    asyncio.run(scenario())


def test_a_round_stops_waiting_for_meters_that_dropped_or_restarted() -> None:
    async def scenario() -> None:
        agg = await _aggregator_in_a_round([1, 2, 3, 4])
        t = Topics("s")
        # Meter 3 crashes: the broker publishes its will. It comes back at once saying
        # it restarted and sits round 0 out: still not waited for, though online.
        agg._on_message(t.status(3), b"offline")
        agg._on_message(t.hello(3), _hello(3, key_seed=7, sits_out=0))
        assert 3 not in agg.offline and agg._gone() == {3}
        # Meter 4 loses its connection and comes back holding the round: waited for.
        # (A will counts once it has settled: WILL_SETTLE_S.)
        agg._on_message(t.status(4), b"offline")
        assert agg._gone() == {3}
        await asyncio.sleep(WILL_SETTLE_S + 0.01)
        assert agg._gone() == {3, 4}
        agg._on_message(t.hello(4), _hello(4, key_seed=7, sits_out=7))
        assert agg._gone() == {3}
        agg._on_message(t.update(1), _update(agg, 1, key_seed=7, delta=np.ones(DIM)))
        agg._changed.clear()
        agg._on_message(t.status(4), b"offline")  # and drops for good
        await asyncio.sleep(WILL_SETTLE_S + 0.01)
        agg._changed.clear()
        # The last answer the round can still get wakes the round up to close.
        agg._on_message(t.update(2), _update(agg, 2, key_seed=7, delta=np.ones(DIM)))
        assert agg._changed.is_set() and agg._round.pending() == {3, 4}
        # A later hello that names no round to sit out (the first was stale, say)
        # makes meter 3 one to wait for again.
        agg._on_message(t.hello(3), _hello(3, key_seed=7))
        assert agg._gone() == {4}
        assert agg.rejected_messages == 0

    asyncio.run(scenario())


def test_dp_rounds_sample_meters_independently_as_the_accountant_assumes() -> None:
    from gridsim.privacy.settings import resolve_dp

    dp = resolve_dp(
        "central",
        epsilon=4.0,
        delta=1e-5,
        noise_multiplier=None,
        clip_norm=1.0,
        sampling_rate=0.3,
        rounds=10,
    )

    async def sizes(with_dp: bool) -> list[int]:
        cfg = AggregatorConfig(
            session="s", rounds=1, expected_meters=1000, fraction=0.3, dp=dp if with_dp else None
        )
        agg = Aggregator(BrokerAddress("127.0.0.1", 1), cfg, np.zeros(DIM, dtype=np.float32))
        agg.registered = {m: 10 for m in range(1000)}
        return [len(agg._select(True)) for _ in range(40)]

    poisson = asyncio.run(sizes(True))
    # Binomial(1000, 0.3): sd 14.5; the mean of 40 rounds is within 300 +- 11 (4.8 sd)
    # and 40 draws are not all equal, except w.p. far below 1e-5.
    assert abs(sum(poisson) / 40 - 300) < 11 and len(set(poisson)) > 1
    # Without DP the aggregator takes exactly the fraction, as before.
    assert set(asyncio.run(sizes(False))) == {300}


def _report(agg: Aggregator, meter: int, key_seed: int, digest: bytes, *, round_: int = 0) -> bytes:
    key = meter_signing_key(key_seed, meter)
    sig = key.sign(MeterContribution.message("s", round_, meter, digest))
    return codec.encode(
        codec.Update(
            v=codec.WIRE_VERSION,
            session="s",
            run=agg.run_id,
            round=round_,
            meter=meter,
            n_samples=10,
            train_loss=0.1,
            train_s=0.0,
            delta=b"",
            eval=codec.EvalReport(1.0, 1.0, 4, 2.0, 1.5, 1.5),
            payload_sha256=digest,
            signature=sig,
        )
    )


def test_a_masked_input_carries_only_its_own_meters_signed_report() -> None:
    from gridsim.secagg import messages as sa

    async def scenario() -> None:
        agg = await _aggregator()
        t = Topics("s")
        agg._on_message(t.hello(1), _hello(1, key_seed=7))
        data = b"\x01" * 24
        digest = hashlib.sha256(data).digest()

        def masked(report: bytes, meter: int = 1) -> sa.MaskedInput:
            return sa.MaskedInput(
                v=sa.SECAGG_WIRE_VERSION,
                session="s",
                round=0,
                stage=sa.Stage.MASKED_INPUT,
                sig=b"",
                meter=meter,
                data=data,
                digest=digest,
                report=report,
            )

        good, reason = agg._masked_input_report(1, masked(_report(agg, 1, 7, digest)))
        assert reason is None and good is not None and good.eval.count == 4
        # Its signature is checked with the others, in a batch off the loop.
        forged, reason = agg._masked_input_report(1, masked(_report(agg, 1, 99, digest)))
        assert reason is None and forged is not None
        results: list[bool] = []
        for report in (good, forged):
            check = agg._contribution_check(1, report)
            assert not isinstance(check, str)
            agg.verifier.submit([check], results.extend)
        await agg.verifier.drained()
        assert results == [True, False]
        refused = {
            "another input": _report(agg, 1, 7, bytes(32)),
            "another round": _report(agg, 1, 7, digest, round_=1),
            "another meter": _report(agg, 2, 7, digest),
            "garbage": b"\x93not msgpack",
            "empty": b"",
        }
        for what, report in refused.items():
            got, reason = agg._masked_input_report(1, masked(report))
            assert got is None and reason, what

    asyncio.run(scenario())


def test_secure_aggregation_messages_are_verified_in_batches_and_forgeries_refused() -> None:
    # SecAgg+ messages reach the protocol only after their signatures were checked
    # in a batch off the loop: a forged one among genuine ones is refused and
    # counted, the others go through, in the order they came.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gridsim.secagg import messages as sa
    from gridsim.secagg.server import SecAggConfig

    async def scenario() -> None:
        cfg = AggregatorConfig(
            session="s", rounds=1, expected_meters=3, secagg=SecAggConfig(d=DIM, neighbors="all")
        )
        agg = Aggregator(
            BrokerAddress("127.0.0.1", 1),
            cfg,
            np.zeros(DIM, dtype=np.float32),
            signing_key=Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
        )
        assert agg.secagg is not None
        t = Topics("s")
        for m in (1, 2, 3):
            agg._on_message(t.hello(m), _hello(m, key_seed=7))
        agg.secagg.start_round(1, [1, 2, 3], time.monotonic())
        assert agg.secagg.stage is sa.Stage.ADVERTISE

        def advert(meter: int, key: Ed25519PrivateKey) -> bytes:
            unsigned = sa.AdvertiseKeys(
                v=sa.SECAGG_WIRE_VERSION,
                session="s",
                round=1,
                stage=sa.Stage.ADVERTISE,
                sig=b"",
                meter=meter,
                enc_key=bytes([meter]) * 32,
                agree_key=bytes([meter + 1]) * 32,
                seed_commitment=bytes(32),
            )
            return sa.encode(sa.sign(unsigned, key))

        agg._on_message(t.secagg_up(1), advert(1, meter_signing_key(7, 1)))
        agg._on_message(t.secagg_up(2), advert(2, meter_signing_key(99, 2)))  # impostor
        agg._on_message(t.secagg_up(3), advert(3, meter_signing_key(7, 3)))
        assert agg.rejected_messages == 0 and agg.secagg.waiting_for == {1, 2, 3}
        await agg.verifier.drained()
        assert agg.rejected_messages == 1
        assert agg.secagg.waiting_for == {2}
        assert [r.meter for r in agg.secagg.rejected] == [2]
        assert "bad signature on AdvertiseKeys" in agg.secagg.rejected[0].reason
        # Meter 2's own advertisement still gets in.
        agg._on_message(t.secagg_up(2), advert(2, meter_signing_key(7, 2)))
        await agg.verifier.drained()
        assert agg.secagg.waiting_for == frozenset() and agg.rejected_messages == 1
        agg.verifier.close()

    asyncio.run(scenario())


def test_ctrl_c_stops_the_aggregator_even_as_a_message_arrives() -> None:
    """Ctrl-C cancels the aggregator's task; a message landing in the same instant
    must not swallow that cancellation (it did with wait_for on Python 3.11: the
    aggregator kept waiting for meters that had stopped, and the run hung)."""

    async def scenario() -> None:
        agg = await _aggregator()
        task = asyncio.create_task(agg._wait_changed(30))
        await asyncio.sleep(0)  # the aggregator is now waiting for a change
        agg._changed.set()  # a message arrives ...
        task.cancel()  # ... as the cancellation does
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_a_round_waits_for_meters_to_come_back_when_all_went_offline() -> None:
    # A stopping broker publishes every client's will: all meters look offline
    # until their hellos arrive after the restart. The next round waits for them
    # instead of failing with no meter to select.
    async def scenario() -> tuple[bool, bool]:
        agg = await _aggregator()
        t = Topics("s")
        for m in (1, 2):
            agg._on_message(t.hello(m), _hello(m, key_seed=7))
            agg._on_message(t.status(m), b"offline")
        waiting = asyncio.create_task(agg._wait_for_online())
        await asyncio.sleep(0.2)
        still_waiting = not waiting.done()
        agg._on_message(t.hello(2), _hello(2, key_seed=7))  # back after the restart
        await asyncio.wait_for(waiting, 1)
        return still_waiting, agg._select(train=True) == [2]

    assert asyncio.run(scenario()) == (True, True)


def test_a_burst_of_wills_is_held_back_until_the_aggregator_knows_its_broker_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stopping broker publishes every client's will, then drops the aggregator. The
    # open round must not stop waiting for its meters on those wills: they are held
    # back for a moment, ignored while the aggregator is cut off, and after it
    # reconnects the meters count as gone only if they stay silent.
    from gridsim.aggregator import service

    monkeypatch.setattr(service, "WILL_BURST_S", 0.1)
    monkeypatch.setattr(service, "REGATHER_S", 0.3)

    async def scenario() -> list[set[int]]:
        agg = await _aggregator_in_a_round([1, 2, 3, 4])
        t = Topics("s")
        seen = []
        # One meter crashes on its own: gone once its will has settled.
        agg._on_message(t.status(1), b"offline")
        await asyncio.sleep(service.WILL_SETTLE_S + 0.01)
        seen.append(agg._gone())
        await asyncio.sleep(0.12)
        # Later, three wills at once (the broker stopping): held back.
        for m in (2, 3, 4):
            agg._on_message(t.status(m), b"offline")
        seen.append(agg._gone())
        await asyncio.sleep(0.15)
        # The broker really went: the aggregator lost it, and takes nobody for gone.
        agg.connection.connected.clear()
        seen.append(agg._gone())
        # It reconnects: every meter is awaited again; two say hello.
        agg.connection.connected.set()
        agg.connection.connects = 2
        await agg._on_connect()
        agg._on_message(t.hello(2), _hello(2, key_seed=7))
        agg._on_message(t.hello(3), _hello(3, key_seed=7))
        seen.append(agg._gone())
        await asyncio.sleep(0.35)  # the others stay silent past REGATHER_S
        seen.append(agg._gone())
        return seen

    assert asyncio.run(scenario()) == [{1}, {1}, set(), set(), {1, 4}]


def test_after_a_reconnect_the_next_round_waits_for_every_meter_to_come_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Meters reconnect over their backoff after a broker restart; a round selected
    # as soon as the first is back would leave the others out. The next round waits
    # for all (up to REGATHER_S: a meter that never comes back is taken for offline).
    from gridsim.aggregator import service

    monkeypatch.setattr(service, "REGATHER_S", 1.0)

    async def scenario() -> tuple[bool, list[int], bool, list[int]]:
        agg = await _aggregator()
        t = Topics("s")
        for m in (1, 2, 3):
            agg._on_message(t.hello(m), _hello(m, key_seed=7))
        agg.connection.connects = 2
        await agg._on_connect()
        agg._on_message(t.hello(1), _hello(1, key_seed=7))
        waiting = asyncio.create_task(agg._wait_for_online())
        await asyncio.sleep(0.1)
        still_waiting = not waiting.done()
        agg._on_message(t.hello(3), _hello(3, key_seed=7))
        await asyncio.wait_for(waiting, 3)  # meter 2 never says hello
        first = agg._select(train=True)
        # A later reconnect, and every meter back in time: no wait past the last hello.
        await agg._on_connect()
        started = time.monotonic()
        waiting = asyncio.create_task(agg._wait_for_online())
        for m in (1, 2, 3):
            agg._on_message(t.hello(m), _hello(m, key_seed=7))
        await asyncio.wait_for(waiting, 2)
        return still_waiting, first, time.monotonic() - started < 0.5, agg._select(train=True)

    assert asyncio.run(scenario()) == (True, [1, 3], True, [1, 2, 3])


def test_when_no_meter_comes_back_after_a_reconnect_the_next_round_still_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After a reconnect and REGATHER_S with no hello, the silent meters are offline:
    # the next round goes on waiting, up to its deadline, for one to come back
    # (it does not select nobody), and a will that comes meanwhile is handled.
    from gridsim.aggregator import service

    monkeypatch.setattr(service, "REGATHER_S", 0.2)

    async def scenario() -> tuple[bool, list[int], set[int]]:
        agg = await _aggregator_in_a_round([1, 2, 3])
        t = Topics("s")
        for m in (1, 2, 3):
            agg._on_message(t.status(m), b"offline")
        agg.connection.connects = 2
        await agg._on_connect()
        waiting = asyncio.create_task(agg._wait_for_online())
        await asyncio.sleep(0.4)  # REGATHER_S passed, nobody back
        still_waiting = not waiting.done()
        agg._on_message(t.hello(2), _hello(2, key_seed=7))
        await asyncio.wait_for(waiting, 2)
        selected = agg._select(train=True)
        agg._on_message(t.status(2), b"offline")  # its will, once it is offline again
        await asyncio.sleep(WILL_SETTLE_S + 0.01)
        return still_waiting, selected, agg._gone()

    assert asyncio.run(scenario()) == (True, [2], {1, 2, 3})
