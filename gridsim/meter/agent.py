"""One smart meter: its own MQTT connection, its own data, its own protocol state."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final, Generic, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gridsim import signatures
from gridsim.exceptions import GridsimError, InvalidInputError, MessageError, ProtocolError
from gridsim.learning.batched import TrainConfig
from gridsim.ledger.audit import verify_own_contribution
from gridsim.ledger.checkpoint import NoteVerifier, load_verifier
from gridsim.ledger.entries import MeterContribution
from gridsim.meter.dropout import silent_from
from gridsim.meter.identity import meter_signing_key, raw_public_key
from gridsim.meter.peers import shared_peer_keys
from gridsim.meter.training_pool import DDGaussEncoding, MeterAnswer, TrainingPool
from gridsim.privacy.ddgauss import DDGaussCodec
from gridsim.privacy.guard import MeterBudget
from gridsim.secagg import messages as sa
from gridsim.secagg.client import SecAggClient
from gridsim.transport import codec
from gridsim.transport.broker import BrokerAddress
from gridsim.transport.droplog import DropLog
from gridsim.transport.mqtt import Will, connection
from gridsim.transport.topics import Topics

log = logging.getLogger(__name__)
# One limiter for all meters of a process: garbage reaches every meter at once.
DROPS = DropLog(log)

OFFLOAD_MIN_NEIGHBORS: Final = 64
"""Above this many neighbours a meter shares and prepares its masks in a worker
thread (see :meth:`MeterAgent._on_secagg`); at or below, on the event loop."""


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
        dropout_mode: str = "crash",
        peer_keys: Mapping[int, Ed25519PublicKey] | None = None,
        budget: MeterBudget | None = None,
        mqtt_client: str = "lean",
    ) -> None:
        self.meter = meter
        self.budget = budget
        self.budget_refusals = 0
        self.session = session
        self.topics = Topics(session)
        self.pool = pool
        self.seed = seed
        self.dropout = dropout
        self.dropout_mode = dropout_mode
        self._vanished = -1  # the last round this meter vanished from (--dropout)
        self._sits_out = -1  # the round it sits out after a (simulated) crash
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
        # run, round, payload hash, this meter's signature of its contribution
        self._awaiting_proof: tuple[str, int, bytes, bytes | None] | None = None
        self._signed: tuple[int, bytes, bytes] = (-1, b"", b"")  # round, digest, signature
        self.peer_keys = peer_keys if peer_keys is not None else shared_peer_keys(seed)
        self._secagg: SecAggClient | None = None
        self._secagg_key = b""
        # The secure round in progress: its training answer once the batch has run,
        # and its masked-input request (with the topic it came on) once prepared for,
        # until both are here and the masked input goes out.
        self._trained: MeterAnswer | None = None
        self._trained_round = -1
        self._masking: tuple[str, sa.MaskedInputRequest] | None = None
        # The last answer sent: its round, topic, payload and (SecAgg+) stage; sent
        # again when the aggregator announces that round or asks for that stage
        # again, e.g. after a broker restart, which may have lost it.
        self._reply: tuple[int, str, bytes, sa.Stage | None] | None = None
        self._resent_on = -1  # the connection (its count) on which it was sent again
        self._current_round = -1
        self._run = ""
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.connection = connection(
            mqtt_client,
            address,
            identifier=f"gridsim-{session}-meter-{meter}",
            subscriptions=[
                self.topics.round,
                self.topics.control,
                self.topics.proof(meter),
                self.topics.secagg,
                self.topics.secagg_to(meter),
            ],
            on_message=self._on_message,
            on_connect=self._on_connect,
            will=Will(self.topics.status(meter), b"offline", qos=1),
        )

    async def _on_connect(self) -> None:
        hello = codec.Hello(
            v=codec.WIRE_VERSION,
            session=self.session,
            meter=self.meter,
            n_train=self.pool.data.n_train,
            public_key=self._public_key,
            sits_out=self._sits_out,
        )
        await self.connection.publish(self.topics.hello(self.meter), codec.encode(hello), wait=0)

    def _on_message(self, topic: str, payload: bytes) -> Awaitable[None] | None:
        """Handle one message; what is left to wait for, if anything (the connection
        holds this meter's next message until it is done)."""
        if not payload:
            return None  # the aggregator clearing a retained message
        if topic in (self.topics.secagg, self.topics.secagg_to(self.meter)):
            return self._on_secagg(topic, payload)
        try:
            msg = _ANNOUNCEMENTS(payload) if topic == self.topics.round else codec.decode(payload)
        except MessageError as exc:
            self._drop(topic, str(exc))
            return None
        if msg.session != self.session:
            self._drop(topic, f"message of session {msg.session!r}")
        elif isinstance(msg, codec.Stop) and topic == self.topics.control:
            self.done.set()
        elif isinstance(msg, codec.RollCall) and topic == self.topics.control:
            return self._on_connect()
        elif isinstance(msg, codec.RoundAnnounce) and topic == self.topics.round:
            self._on_announce(msg)
        elif isinstance(msg, codec.Proof) and topic == self.topics.proof(self.meter):
            self._on_proof(msg)
        else:
            self._drop(topic, f"unexpected {type(msg).__name__}")
        return None

    def _refuse(self, topic: str, exc: ProtocolError) -> None:
        """Drop a secure-aggregation message the protocol refused (logged, counted)."""
        self._drop(topic, f"secure aggregation: {exc}")

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
            # Its own signature, kept from signing: compared, not verified again.
            own_signature=waiting[3],
            meter_key=None if waiting[3] is not None else self._key.public_key(),
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
            if (waiting[0], waiting[1]) not in _MISSING_PROOFS_LOGGED:  # once per process
                _MISSING_PROOFS_LOGGED.add((waiting[0], waiting[1]))
                log.warning(
                    "no ledger proof for round %d (meter %d and maybe others of this process): "
                    "the round was abandoned or its receipt lost; counted in proofs_missing",
                    waiting[1],
                    self.meter,
                )
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
            self._current_round = self._vanished = self._sits_out = -1
            self._reply = None
        last = self._reply
        if last is not None and last[0] == msg.round:
            # The aggregator asks again: resend (it refuses a copy it has, logged).
            # It re-announces once per reconnect of its own, so always.
            self._resend_reply(always=True)
            return
        if msg.round <= self._current_round:
            return  # already working on it, or a stale announcement
        self._current_round = msg.round
        self._sits_out = -1
        # Whatever the last secure round left waiting goes: its masked input must
        # not go out once a new round has begun (_start_secagg sets up a secure one).
        self._trained, self._trained_round, self._masking = None, -1, None
        # Retained on the first connection: announced before this meter started. (After
        # a broker restart the re-published announcement may come retained too, to a
        # meter that holds its round and goes on.)
        under_way = self.connection.retained and self.connection.connects == 1
        if under_way and msg.train and msg.secagg_key:
            # This meter started while the secure round was under way (it restarted,
            # say): it holds nothing of the round and cannot tell how far the round
            # has gone. It sits the round out and says so, so it is not waited for.
            log.info(
                "meter %d: sits out round %d, under way when it started", self.meter, msg.round
            )
            self._sits_out = msg.round
            self._spawn(self._on_connect())  # a hello naming the round
            return
        if msg.train and self._silent_from(msg.round, bool(msg.secagg_key)) == 0:
            self._vanish(msg.round)
            return
        if msg.train and self.budget is not None:
            plan = None if msg.ddgauss is None else msgspec.structs.asdict(msg.ddgauss)
            reason = self.budget.refusal(msg.round, msg.dp, plan, self.pool.layout_dim)
            if reason is not None:
                # Stays out, like a meter that is offline: no training, no secure aggregation.
                self.budget_refusals += 1
                if msg.round not in _REFUSALS_LOGGED:  # once per round and process
                    _REFUSALS_LOGGED.add(msg.round)
                    log.warning("meters stay out of round %d: %s", msg.round, reason)
                return
        if msg.train and msg.secagg_key:
            if not self._start_secagg(msg):
                return
            if msg.secagg_open and not self._open_secagg(msg.secagg_open):
                return  # cannot take part in this secure round (logged)
        joined = self._join_round(msg)
        if joined is not None:
            self._task = asyncio.get_running_loop().create_task(self._answer_round(msg, joined))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, holding a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _silent_from(self, round_: int, secure: bool) -> int | None:
        """The stage from which this meter vanishes this round (see :func:`silent_from`)."""
        return silent_from(self.seed, self.meter, round_, self.dropout, secure)

    def _vanish(self, round_: int) -> None:
        """Vanish from ``round_`` (``--dropout``) at the stage this meter was due to answer.

        "crash": the meter drops its connection without a goodbye, so the broker
        publishes its will at once, and comes back as a restarted meter that holds
        nothing of the round: its hello names the round it sits out, and the
        aggregator stops waiting for it. "hang": it stays connected and says nothing
        more this round; the aggregator waits for it until the stage's deadline.
        """
        if self._vanished == round_:
            return
        self._vanished = round_
        self.rounds_vanished += 1
        if self.dropout_mode == "crash":
            self._reply = None  # a restarted meter has no answer to send again
            self._sits_out = round_
            self.connection.abort()

    def _start_secagg(self, msg: codec.RoundAnnounce) -> bool:
        """Set up this round's SecAgg+ client (pinning the aggregator's key on first use)."""
        if self._secagg is None:
            try:
                server_key = Ed25519PublicKey.from_public_bytes(msg.secagg_key)
            except ValueError:
                self._drop(self.topics.round, "bad secure-aggregation key")
                return False
            self._secagg = SecAggClient(
                self.meter, self._key, server_key, self.peer_keys, session=self.session
            )
            self._secagg_key = msg.secagg_key
        elif msg.secagg_key != self._secagg_key:
            self._drop(self.topics.round, "secure-aggregation key differs from the pinned one")
            return False
        self._trained_round = msg.round  # (_on_announce cleared the last round's)
        return True

    def _open_secagg(self, payload: bytes) -> bool:
        """Take up the SecAgg+ request that came with the round announcement.

        Handled here, before the next message is read, because the aggregator's
        next request (sharing) follows at once when this meter advertised ahead.
        False, with the reason logged, when the request is refused.
        """
        client = self._secagg
        assert client is not None
        topic = self.topics.round
        try:
            msg = _SECAGG_BROADCASTS(payload)
            if not isinstance(msg, sa.AdvertiseRequest):
                raise ProtocolError(f"the announcement carries a {type(msg).__name__}")
            advert = client.advertise(msg)
        except GridsimError as exc:
            self._drop(topic, f"secure aggregation: {exc}")
            return False
        if advert is not None:
            self._reply_secagg(msg.round, advert)
        return True

    def _join_round(self, msg: codec.RoundAnnounce) -> asyncio.Future[MeterAnswer] | None:
        """Join the round's training batch at once (None, logged, if this meter cannot).

        Done as the announcement is handled, not in the round's task: the batch
        starts when its last meter has joined, and the sharing requests that follow
        the announcement would otherwise run first (see TrainingPool.submit).
        """
        try:
            model = codec.vector_from_bytes(msg.model, self.pool.layout_dim)
        except MessageError as exc:
            log.warning("meter %d: round %d has a bad model: %s", self.meter, msg.round, exc)
            return None
        secure = msg.train and bool(msg.secagg_key)
        expected = _expected_meters(self.pool, msg, secure, self.seed, self.dropout)
        p = msg.plan
        plan = TrainConfig(p.local_epochs, p.batch_size, p.lr, p.clip_norm, p.local_noise)
        encoding = None
        if msg.train and msg.ddgauss is not None:
            encoding = self._ddgauss(msg, secure)
            if encoding is None:
                return None
        return self.pool.submit(
            self.meter,
            round_=msg.round,
            train=msg.train,
            model=model,
            plan=plan,
            expected=expected,
            ddgauss=encoding,
        )

    async def _answer_round(
        self, msg: codec.RoundAnnounce, joined: asyncio.Future[MeterAnswer]
    ) -> None:
        secure = msg.train and bool(msg.secagg_key)
        answer = await asyncio.shield(joined)
        if secure:
            # The delta leaves this meter only masked, when the aggregator asks for it:
            # now, if it has, and the round is still this meter's current one.
            # (_trained_round is the current round's, or -1 once another has begun.)
            if msg.round == self._trained_round and self._trained is None:
                self._trained, waiting = answer, self._masking
                if waiting is not None:
                    self._masking = None
                    try:
                        self._send_masked(*waiting, answer)
                    except Exception:
                        # This task has no one to report to (the handler that parked
                        # the request has returned): say so here.
                        log.exception("meter %d: masking round %d failed", self.meter, msg.round)
            return
        delta = b"" if answer.delta is None else codec.vector_to_bytes(answer.delta)
        self._send_update(msg.round, answer, delta, hashlib.sha256(delta).digest(), 0)

    def _ddgauss(self, msg: codec.RoundAnnounce, secure: bool) -> DDGaussEncoding | None:
        """The round's DDGauss encoding, or None (logged) if it cannot be honoured."""
        plan = msg.ddgauss
        assert plan is not None
        if not secure:
            # The encoding only protects inside secure aggregation; never send it bare.
            self._drop(self.topics.round, "distributed DP announced without secure aggregation")
            return None
        try:
            ddgauss = DDGaussCodec.from_plan(self.pool.layout_dim, msgspec.structs.asdict(plan))
        except InvalidInputError as exc:
            self._drop(self.topics.round, f"unusable distributed-DP plan: {exc}")
            return None
        return DDGaussEncoding(ddgauss, self.session)

    def _update(
        self, round_: int, answer: MeterAnswer, delta: bytes, digest: bytes, saturated: int
    ) -> bytes:
        """The encoded, signed round report (with ``delta`` in the clear, or b"")."""
        e = answer.eval
        signature = signatures.sign(
            self._key, MeterContribution.message(self.session, round_, self.meter, digest)
        )
        self._signed = (round_, digest, signature)
        update = codec.Update(
            v=codec.WIRE_VERSION,
            session=self.session,
            run=self._run,
            round=round_,
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
            payload_sha256=digest,
            signature=signature,
            saturated=saturated,
        )
        return codec.encode(update)

    def _answered(self, round_: int, answer: MeterAnswer, digest: bytes) -> None:
        if answer.delta is not None and self._ledger_key is not None:
            signed_round, signed_digest, signature = self._signed
            own = signature if (signed_round, signed_digest) == (round_, digest) else None
            self._awaiting_proof = (self._run, round_, digest, own)
        self.rounds_answered += 1

    def _send_update(
        self, round_: int, answer: MeterAnswer, delta: bytes, digest: bytes, saturated: int
    ) -> None:
        payload = self._update(round_, answer, delta, digest, saturated)
        self._answered(round_, answer, digest)
        self._reply_with(round_, self.topics.update(self.meter), payload)

    def _on_secagg(self, topic: str, payload: bytes) -> Awaitable[None] | None:
        """One SecAgg+ request: answer it unless this meter has vanished by that stage.

        Answered here and now, unless it has to wait (for the round's training batch
        to start, or for a worker thread): then what is left is returned, and the
        connection holds this meter's next message until it is done.
        """
        client = self._secagg
        if client is None:
            return None  # no secure round has begun for this meter
        try:
            msg = _SECAGG_BROADCASTS(payload) if topic == self.topics.secagg else sa.decode(payload)
        except GridsimError as exc:
            self._drop(topic, str(exc))
            return None
        if msg.round > self._current_round and topic == self.topics.secagg:
            return None  # a request to all meters of a round this meter is not in
        silent = self._silent_from(msg.round, secure=True)
        if silent is not None and int(msg.stage) >= silent:
            if msg.round == self._current_round:
                self._vanish(msg.round)
            return None
        last = self._reply
        repeated = last is not None and last[0] == msg.round and last[3] is msg.stage
        if repeated and client.answered(msg):
            # The aggregator asks again for the answer this meter gave last (it
            # reconnected, or this meter did, and the answer may be lost): send it
            # again rather than refuse a request already answered.
            self._resend_reply()
            return None
        # (A round's AdvertiseRequest comes inside its announcement: _open_secagg.)
        # Sharing and mask preparation run on the loop at SecAgg+ degrees: each
        # is a fraction of a millisecond at degree 24, the other core is busy
        # training meanwhile, and a thread hop per meter and stage cost more in
        # executor bookkeeping and GIL hand-overs than it saved (secure round of
        # 500 meters on 2 cores 1.72 -> 1.67 s, CPU 2.70 -> 2.60 s: medians of
        # five alternating 8-round runs, Zen 5). At large degrees their key
        # agreements and mask expansion, which release the GIL, take
        # milliseconds and outlast the training: in a worker thread they use
        # the other core (classic SecAgg, 500 meters: 10.0 s a round on the
        # loop, 8.1 s in threads).
        offload = len(client.neighbors) > OFFLOAD_MIN_NEIGHBORS
        if isinstance(msg, sa.ShareRequest):
            # The sharing request follows the round's announcement at once: the
            # other meters handle theirs (and join the training batch, which
            # starts once the last has) before this meter's key agreements. (A
            # meter that was expected but does not join, one refused by its
            # privacy budget say, holds this up to the batch's linger, 0.25 s.)
            if offload or self.pool.gathering(msg.round):
                return self._share_when_launched(topic, msg, offload)
            self._share(topic, msg)
        elif isinstance(msg, sa.MaskedInputRequest):
            if msg.recipient != self.meter or msg.round != self._trained_round:
                self._drop(topic, f"masked-input request for round {msg.round}")
            elif offload:
                return self._prepare_in_thread(topic, msg)
            else:
                self._prepare(topic, msg)
        elif isinstance(msg, sa.UnmaskRequest):
            try:
                reply = client.unmask(msg)
            except ProtocolError as exc:
                self._refuse(topic, exc)
                return None
            self._reply_secagg(msg.round, reply)
        else:
            self._drop(topic, f"unexpected {type(msg).__name__}")
        return None

    def _share(
        self, topic: str, msg: sa.ShareRequest, shared: sa.MeterMessage | None = None
    ) -> None:
        """Answer a sharing request (with ``shared``, if it was made in a thread)."""
        client = self._secagg
        assert client is not None
        try:
            reply = shared if shared is not None else client.share_keys(msg)
        except ProtocolError as exc:
            self._refuse(topic, exc)
            return
        self._reply_secagg(msg.round, reply)

    async def _share_when_launched(self, topic: str, msg: sa.ShareRequest, offload: bool) -> None:
        await self.pool.launched(msg.round)
        client = self._secagg
        assert client is not None
        shared = None
        if offload:
            try:
                shared = await asyncio.to_thread(client.share_keys, msg)
            except ProtocolError as exc:
                self._refuse(topic, exc)
                return
        self._share(topic, msg, shared)

    def _prepare(self, topic: str, msg: sa.MaskedInputRequest, *, prepared: bool = False) -> None:
        """Shares, masks, the next round's keys and the unmasking answer (for a round
        in which no neighbour drops) while the training runs; afterwards masking is
        one addition and unmasking, most often, a lookup. The masked input goes out
        when both the training answer and this request are here, whichever is last:
        the handler does not wait, so the meter's other messages are not held up
        behind its training.
        (``prepared``: the masks were prepared in a thread already.)"""
        client = self._secagg
        assert client is not None
        try:
            if not prepared:
                client.prepare_masked_input(msg)
            client.prepare_next_keys()
            client.prepare_unmask_answer()
        except ProtocolError as exc:
            self._refuse(topic, exc)
            return
        if self._trained is None:
            self._masking = (topic, msg)
            return
        self._send_masked(topic, msg, self._trained)

    async def _prepare_in_thread(self, topic: str, msg: sa.MaskedInputRequest) -> None:
        client = self._secagg
        assert client is not None
        try:
            await asyncio.to_thread(client.prepare_masked_input, msg)
        except ProtocolError as exc:
            self._refuse(topic, exc)
            return
        self._prepare(topic, msg, prepared=True)

    def _send_masked(self, topic: str, msg: sa.MaskedInputRequest, answer: MeterAnswer) -> None:
        """Mask this meter's update (with its round report inside) and send it."""
        client = self._secagg
        assert client is not None

        def report(digest: bytes, saturated: int) -> bytes:
            # The round report rides inside the signed masked input.
            return self._update(msg.round, answer, b"", digest, saturated)

        try:
            if answer.encoded is not None:
                masked = client.masked_input_quantized(msg, answer.encoded, report)
            else:
                assert answer.delta is not None
                masked = client.masked_input(msg, answer.delta, report)
        except ProtocolError as exc:
            self._refuse(topic, exc)
            return
        if self.pool.quantized is not None and client.quantized is not None:
            self.pool.quantized.setdefault(msg.round, {})[self.meter] = client.quantized
        self._answered(msg.round, answer, masked.digest)
        self._reply_secagg(msg.round, masked)

    def _resend_reply(self, *, always: bool = False) -> None:
        """Send the last answer again: ``always`` for a repeated announcement (the
        aggregator repeats it once per reconnect of its own), and otherwise (a
        repeated request) once per connection of this meter's, as long as nothing
        was sent again on it: after a reconnect the aggregator repeats its open
        request too, and the meter's hello makes it repeat the request again, and
        one copy is what can have been lost."""
        last = self._reply
        if last is None or (not always and self._resent_on == self.connection.connects):
            return
        self._resent_on = self.connection.connects
        self._send(last[2], last[1])

    def _reply_secagg(self, round_: int, msg: sa.MeterMessage) -> None:
        """Send this meter's SecAgg+ answer to ``round_`` (see _reply_with)."""
        self._reply_with(round_, self.topics.secagg_up(self.meter), sa.encode(msg), msg.stage)

    def _reply_with(
        self, round_: int, topic: str, payload: bytes, stage: sa.Stage | None = None
    ) -> None:
        """Send this meter's answer to ``round_`` (to its SecAgg+ ``stage``), kept for
        a re-announcement or a repeated request."""
        self._reply = (round_, topic, payload, stage)
        self._resent_on = -1
        self._send(payload, topic)

    def _send(self, payload: bytes, topic: str) -> None:
        """Publish now; while disconnected, in the background once connected again."""
        if not self.connection.publish_nowait(topic, payload):
            self._spawn(self._send_later(payload, topic))

    async def _send_later(self, payload: bytes, topic: str) -> None:
        await self.connection.publish(topic, payload, wait=30)

    def start(self) -> None:
        self.connection.start()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for task in list(self._background):
            task.cancel()
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
    dropout_mode: str = "crash",
    connect_spacing_s: float = 0.002,
    budget: MeterBudget | None = None,
    mqtt_client: str = "lean",
) -> dict[str, int]:
    """Run the agents of ``meters`` until the aggregator says stop (or ``stop`` is set)."""
    agents = [
        MeterAgent(
            m,
            address=address,
            session=session,
            pool=pool,
            seed=seed,
            dropout=dropout,
            dropout_mode=dropout_mode,
            budget=budget,
            mqtt_client=mqtt_client,
        )
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
        try:
            await asyncio.wait([all_done, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            all_done.cancel()
            # Also when Ctrl-C cancels us: fetch the outcome, or asyncio logs it as
            # "never retrieved" at exit.
            all_done.add_done_callback(lambda f: f.cancelled() or f.exception())
    finally:
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
    return {
        "answered": sum(a.rounds_answered for a in agents),
        "vanished": sum(a.rounds_vanished for a in agents),
        "rejected_messages": sum(a.rejected_messages for a in agents),
        "proofs_ok": sum(a.proofs_ok for a in agents),
        "proofs_bad": sum(a.proofs_bad for a in agents),
        "proofs_missing": sum(a.proofs_missing for a in agents),
        "budget_refusals": sum(a.budget_refusals for a in agents),
    }


_M = TypeVar("_M")


class _SharedDecode(Generic[_M]):
    """``decode`` of a broadcast topic's payloads, once per process and payload.

    Every meter of a process gets its own copy of each broadcast (the round's
    announcement, the SecAgg+ opening inside it, the unmasking request), and each
    decoded it: 500 decodings of the same bytes, and for a SecAgg+ request each
    copy then compared field by field with the one the memo of checked requests
    holds, where the same object compares at once. The last payload and what it
    decoded to are kept; an equal payload gets that (frozen) message. A payload
    that fails to decode is not kept.
    """

    def __init__(self, decode: Callable[[bytes], _M]) -> None:
        self._decode = decode
        self._last: tuple[bytes, _M] | None = None

    def __call__(self, payload: bytes) -> _M:
        last = self._last
        if last is not None and last[0] == payload:
            return last[1]
        msg = self._decode(payload)
        self._last = (payload, msg)
        return msg


_ANNOUNCEMENTS = _SharedDecode(codec.decode)
_SECAGG_BROADCASTS = _SharedDecode(sa.decode)  # the openings and unmasking requests

_EXPECTED: dict[tuple[TrainingPool, str, int, bool], int] = {}


def _expected_meters(
    pool: TrainingPool, msg: codec.RoundAnnounce, secure: bool, seed: int, dropout: float
) -> int:
    """How many of a pool's meters join the round's batch (those not silent from stage 0).

    The same for every meter of the pool: counted once per round and pool, not by
    each of its n meters over all n.
    """
    key = (pool, msg.run, msg.round, msg.train)
    count = _EXPECTED.get(key)
    if count is None:
        if len(_EXPECTED) >= 64:
            _EXPECTED.clear()
        count = _EXPECTED[key] = sum(
            1
            for m in pool.local(msg.selected)
            if not msg.train or silent_from(seed, m, msg.round, dropout, secure) != 0
        )
    return count


_REFUSALS_LOGGED: set[int] = set()
_MISSING_PROOFS_LOGGED: set[tuple[str, int]] = set()
