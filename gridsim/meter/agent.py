"""One smart meter: its own MQTT connection, its own data, its own protocol state."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import aiomqtt

from gridsim.exceptions import GridsimError, MessageError
from gridsim.learning.batched import TrainConfig
from gridsim.ledger.audit import verify_own_contribution
from gridsim.ledger.checkpoint import NoteVerifier, load_verifier
from gridsim.ledger.entries import MeterContribution
from gridsim.meter.dropout import vanishes
from gridsim.meter.identity import meter_signing_key, raw_public_key
from gridsim.meter.training_pool import TrainingPool
from gridsim.transport import codec
from gridsim.transport.broker import BrokerAddress
from gridsim.transport.droplog import DropLog
from gridsim.transport.mqtt import Connection
from gridsim.transport.topics import Topics

log = logging.getLogger(__name__)
# One limiter for all meters of a process: garbage reaches every meter at once.
DROPS = DropLog(log)


class MeterAgent:
    """Answers the aggregator's rounds with its own update, computed by the shared pool."""

    def __init__(
        self,
        meter: int,
        *,
        address: BrokerAddress,
        session: str,
        pool: TrainingPool,
        seed: int,
        dropout: float = 0.0,
    ) -> None:
        self.meter = meter
        self.session = session
        self.topics = Topics(session)
        self.pool = pool
        self.seed = seed
        self.dropout = dropout
        self.done = asyncio.Event()
        self.rounds_answered = 0
        self.rounds_vanished = 0
        self.rejected_messages = 0
        self.proofs_ok = 0
        self.proofs_bad = 0
        self.proofs_missing = 0
        self._key = meter_signing_key(seed, meter)
        self._public_key = raw_public_key(self._key)
        self._ledger_key: NoteVerifier | None = None
        self._awaiting_proof: tuple[str, int, bytes] | None = None  # run, round, payload hash
        self._answered_round = -1
        self._answer: bytes | None = None
        self._current_round = -1
        self._run = ""
        self._task: asyncio.Task[None] | None = None
        self.connection = Connection(
            address,
            identifier=f"gridsim-{session}-meter-{meter}",
            subscriptions=[self.topics.round, self.topics.control, self.topics.proof(meter)],
            on_message=self._on_message,
            on_connect=self._on_connect,
            will=aiomqtt.Will(self.topics.status(meter), b"offline", qos=1),
        )

    async def _on_connect(self) -> None:
        hello = codec.Hello(
            v=codec.WIRE_VERSION,
            session=self.session,
            meter=self.meter,
            n_train=self.pool.data.n_train,
            public_key=self._public_key,
        )
        await self.connection.publish(self.topics.hello(self.meter), codec.encode(hello), wait=0)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # the aggregator clearing a retained message
        try:
            msg = codec.decode(payload)
        except MessageError as exc:
            self._drop(topic, str(exc))
            return
        if msg.session != self.session:
            self._drop(topic, f"message of session {msg.session!r}")
        elif isinstance(msg, codec.Stop) and topic == self.topics.control:
            self.done.set()
        elif isinstance(msg, codec.RollCall) and topic == self.topics.control:
            await self._on_connect()
        elif isinstance(msg, codec.RoundAnnounce) and topic == self.topics.round:
            self._on_announce(msg)
        elif isinstance(msg, codec.Proof) and topic == self.topics.proof(self.meter):
            self._on_proof(msg)
        else:
            self._drop(topic, f"unexpected {type(msg).__name__}")

    def _drop(self, topic: str, reason: str) -> None:
        self.rejected_messages += 1
        DROPS.drop(f"meter {self.meter}", topic, reason)

    def _on_proof(self, msg: codec.Proof) -> None:
        """Check that the ledger holds exactly the update this meter sent."""
        waiting = self._awaiting_proof
        if waiting is None or (msg.run, msg.round) != waiting[:2] or self._ledger_key is None:
            self._drop(self.topics.proof(self.meter), f"unexpected proof for round {msg.round}")
            return
        self._awaiting_proof = None
        check = verify_own_contribution(
            meter=self.meter,
            round=msg.round,
            payload_sha256=waiting[2],
            proof=msg.proof,
            head=msg.head,
            ledger_key=self._ledger_key,
            session=self.session,
            meter_key=self._key.public_key(),
        )
        if check.ok:
            self.proofs_ok += 1
        else:
            self.proofs_bad += 1
            log.error(
                "meter %d: bad ledger proof for round %d: %s", self.meter, msg.round, check.reason
            )

    def _check_proof_arrived(self, msg: codec.RoundAnnounce) -> None:
        """A new round began: the previous round's proof should have come by now."""
        waiting = self._awaiting_proof
        if waiting is not None and (waiting[0] != msg.run or waiting[1] < msg.round):
            self.proofs_missing += 1
            log.error("meter %d: no ledger proof for round %d", self.meter, waiting[1])
            self._awaiting_proof = None

    def _on_announce(self, msg: codec.RoundAnnounce) -> None:
        self._check_proof_arrived(msg)
        if msg.ledger_key and self._ledger_key is None:
            try:
                # Trust on first use: the first ledger key this meter sees is pinned.
                self._ledger_key = load_verifier(msg.ledger_key.encode())
            except GridsimError as exc:
                self._drop(self.topics.round, f"bad ledger key: {exc}")
        if self.meter not in msg.selected:
            return
        if msg.run != self._run:
            # A new aggregator (or a restarted one): its rounds start afresh.
            self._run = msg.run
            self._current_round = self._answered_round = -1
            self._answer = None
        if msg.round == self._answered_round and self._answer is not None:
            # The aggregator asks again (e.g. after a broker restart): resend.
            asyncio.get_running_loop().create_task(self._send(self._answer))
            return
        if msg.round <= self._current_round:
            return  # already working on it, or a stale announcement
        if msg.train and vanishes(self.seed, self.meter, msg.round, self.dropout):
            self.rounds_vanished += 1
            self._current_round = msg.round
            return
        self._current_round = msg.round
        self._task = asyncio.get_running_loop().create_task(self._answer_round(msg))

    async def _answer_round(self, msg: codec.RoundAnnounce) -> None:
        try:
            model = codec.vector_from_bytes(msg.model, self.pool.layout_dim)
        except MessageError as exc:
            log.warning("meter %d: round %d has a bad model: %s", self.meter, msg.round, exc)
            return
        local = self.pool.local(msg.selected)
        expected = sum(
            1 for m in local if not (msg.train and vanishes(self.seed, m, msg.round, self.dropout))
        )
        plan = TrainConfig(msg.plan.local_epochs, msg.plan.batch_size, msg.plan.lr)
        answer = await self.pool.request(
            self.meter,
            round_=msg.round,
            train=msg.train,
            model=model,
            plan=plan,
            expected=expected,
        )
        e = answer.eval
        delta = b"" if answer.delta is None else codec.vector_to_bytes(answer.delta)
        digest = hashlib.sha256(delta).digest()
        signature = self._key.sign(
            MeterContribution.message(self.session, msg.round, self.meter, digest)
        )
        update = codec.Update(
            v=codec.WIRE_VERSION,
            session=self.session,
            run=msg.run,
            round=msg.round,
            meter=self.meter,
            n_samples=answer.n_samples,
            train_loss=answer.train_loss,
            train_s=answer.train_s,
            delta=delta,
            eval=codec.EvalReport(
                sse=e.sse,
                sae=e.sae,
                count=e.count,
                sum_y=e.sum_y,
                naive_sse=e.naive_sse,
                naive_sae=e.naive_sae,
            ),
            signature=signature,
        )
        payload = codec.encode(update)
        self._answered_round, self._answer = msg.round, payload
        if msg.train and msg.ledger_key:
            self._awaiting_proof = (msg.run, msg.round, digest)
        await self._send(payload)
        self.rounds_answered += 1

    async def _send(self, payload: bytes) -> None:
        await self.connection.publish(self.topics.update(self.meter), payload, wait=30)

    def start(self) -> None:
        self.connection.start()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.connection.close()


async def run_fleet(
    meters: list[int],
    *,
    address: BrokerAddress,
    session: str,
    pool: TrainingPool,
    seed: int,
    dropout: float,
    stop: asyncio.Event,
    connect_spacing_s: float = 0.002,
) -> dict[str, int]:
    """Run the agents of ``meters`` until the aggregator says stop (or ``stop`` is set)."""
    agents = [
        MeterAgent(m, address=address, session=session, pool=pool, seed=seed, dropout=dropout)
        for m in meters
    ]
    started = time.perf_counter()
    try:
        for agent in agents:
            # Stagger connects so the broker is not hit by thousands of CONNECTs at once.
            agent.start()
            await asyncio.sleep(connect_spacing_s)
        log.info("%d meters started in %.1f s", len(agents), time.perf_counter() - started)
        all_done: asyncio.Future[Any] = asyncio.gather(*(a.done.wait() for a in agents))
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        await asyncio.wait([all_done, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        all_done.cancel()
    finally:
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
    return {
        "answered": sum(a.rounds_answered for a in agents),
        "vanished": sum(a.rounds_vanished for a in agents),
        "rejected_messages": sum(a.rejected_messages for a in agents),
        "proofs_ok": sum(a.proofs_ok for a in agents),
        "proofs_bad": sum(a.proofs_bad for a in agents),
        "proofs_missing": sum(a.proofs_missing for a in agents),
    }
