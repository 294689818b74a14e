"""The aggregator's MQTT service: drives FedAvg rounds over the broker.

Event-driven: incoming messages are decoded in the connection's task and fed
to the open round's state machine; the driver announces a round, waits until
every selected meter that is still online answered or the deadline passed,
closes the round and publishes its result. After a reconnect (e.g. a broker
restart) the open round is announced again; meters resend what they had sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridsim import signatures
from gridsim.aggregator.fedavg_round import FedAvgRound, RoundOutcome
from gridsim.aggregator.verifier import AnyCheck, BatchVerifier, Check, DigestCheck
from gridsim.exceptions import (
    ConfigError,
    GridsimError,
    MessageError,
    ProtocolError,
    RoundError,
)
from gridsim.learning.batched import TrainConfig
from gridsim.learning.model import model_hash
from gridsim.ledger.entries import MeterContribution, RoundRecord
from gridsim.ledger.writer import LedgerWriter
from gridsim.meter.identity import raw_public_key
from gridsim.privacy.ddgauss import DDGaussCodec, rotation_signs
from gridsim.privacy.discrete_gaussian import gaussian_noise
from gridsim.privacy.settings import DPSettings
from gridsim.secagg import messages as sa
from gridsim.secagg.masking import MaskArray
from gridsim.secagg.server import Outbox, SecAggConfig, SecAggServer
from gridsim.transport import codec
from gridsim.transport.broker import BrokerAddress
from gridsim.transport.droplog import DropLog
from gridsim.transport.mqtt import connection
from gridsim.transport.topics import Topics

log = logging.getLogger(__name__)

REGATHER_S: Final = 6.0
"""After the aggregator reconnects (the broker restarted, say), how long it waits at
most for every registered meter to say hello again, before a stage stops waiting for
those still silent or the next round selects: longer than a meter's longest
reconnect backoff (5 s) and a connection."""

WILL_BURST_S: Final = 0.25
"""A stopping broker publishes the wills of all its clients at once, then drops the
aggregator too: wills of half the registered meters or more within this window are
held back this long before a stage stops waiting for those meters."""

WILL_SETTLE_S: Final = 0.02
"""Every will waits this long before its meter counts as gone, so that the first
wills of a broker's burst (read before the rest) do not close a stage at once."""


def _forged(meter: int) -> str:
    return f"forged update for meter {meter}: its signature does not verify"


@dataclasses.dataclass(frozen=True)
class AggregatorConfig:
    session: str
    rounds: int
    expected_meters: int
    min_meters: int = 1
    fraction: float = 1.0
    round_timeout_s: float = 60.0
    registration_timeout_s: float = 120.0
    plan: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    seed: int = 0
    # Secure aggregation of the training rounds (None: updates travel in the clear).
    secagg: SecAggConfig | None = None
    # Differential privacy (None: off); the plan's clip and local noise follow it.
    dp: DPSettings | None = None
    mqtt_client: str = "lean"  # see gridsim.transport.mqtt.connection


@dataclasses.dataclass
class SecAggStats:
    rounds_abandoned: int = 0
    abandon_reasons: list[str] = dataclasses.field(default_factory=list)
    verified_rounds: int = 0
    verify_failures: int = 0
    saturated_values: int = 0


@dataclasses.dataclass
class AggregatorReport:
    outcomes: list[RoundOutcome]
    results: list[codec.RoundResult]
    registered: int
    rejected_messages: int
    model: npt.NDArray[np.float32]
    reconnects: int
    secagg_stats: SecAggStats = dataclasses.field(default_factory=SecAggStats)
    secagg_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    dp_released: int = 0
    dp_stopped: str | None = None


class Aggregator:
    def __init__(
        self,
        address: BrokerAddress,
        config: AggregatorConfig,
        initial_model: npt.NDArray[np.float32],
        *,
        on_result: Callable[[codec.RoundResult], None] | None = None,
        ledger: LedgerWriter | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        plaintext: Callable[[int], Mapping[int, MaskArray]] | None = None,
        state_dir: Path | None = None,
        cpu_clock: Callable[[], float] | None = None,
        trained_clock: Callable[[], float | None] | None = None,
    ) -> None:
        self.config = config
        self.cpu_clock = cpu_clock
        """CPU seconds used so far by everything a round runs (None: not measured)."""
        self.trained_clock = trained_clock
        """When (perf_counter) the meters' last training batch finished (None: not
        measured, or meters elsewhere): for each round's ``train_done_s``."""
        self.topics = Topics(config.session)
        self.model = initial_model
        self.on_result = on_result
        self.registered: dict[int, int] = {}  # meter -> n_train
        self.meter_keys: dict[int, Ed25519PublicKey] = {}  # pinned at first hello
        self.ledger = ledger
        self._ledger_key = (ledger.path / "key.pub").read_text() if ledger else ""
        # A ledger continues where it stopped: rounds keep increasing across restarts.
        last = ledger.last_round(config.session) if ledger else None
        self.first_round = 0 if last is None else last + 1
        # Meters refuse a secure-aggregation round number they have seen, so a
        # restarted aggregator also skips rounds it started but never recorded.
        self._started_path = state_dir / "last_started_round" if state_dir else None
        if self._started_path is not None and self._started_path.exists():
            try:
                started = int(self._started_path.read_text().strip())
            except ValueError:
                raise RoundError(f"{self._started_path} is not a round number") from None
            self.first_round = max(self.first_round, started + 1)
        # DP continues across restarts: a replacement aggregator keeps the noise and
        # the count of rounds its session's ledger already records (the auditor
        # recomputes each record's epsilon from both).
        self.dp_released = 0  # rounds whose aggregate was published under DP
        prior = ledger.round_records(config.session) if ledger else []
        if prior:
            config = self._continue_dp(config, prior)
            self.config = config
            self.dp_released = len(prior)
        self.secagg: SecAggServer | None = None
        self._secagg_key = b""
        self._secagg_broadcast = b""
        # The open stage's requests addressed to single meters (encoded), sent again
        # to a meter that reconnects before answering: the broker keeps no copy.
        self._secagg_direct: dict[int, bytes] = {}
        self._stage_times: dict[str, float] = {}  # the secure round's, by stage
        self._sending: set[asyncio.Task[bool]] = set()  # publishes under way
        if config.secagg is not None:
            if signing_key is None:
                raise RoundError("secure aggregation needs the aggregator's signing key")
            self.secagg = SecAggServer(signing_key, config.session, config.secagg)
            self._secagg_key = raw_public_key(signing_key)
        # Distributed DP: meters send DDGauss encodings, decoded here after unmasking.
        self._ddgauss: DDGaussCodec | None = None
        if config.dp is not None and config.dp.mode == "distributed":
            if config.secagg is None:
                raise RoundError("distributed DP needs secure aggregation")
            self._ddgauss = config.dp.codec(int(initial_model.shape[0]))
            if config.secagg.d != self._ddgauss.padded or config.secagg.bits != self._ddgauss.bits:
                raise RoundError("secure aggregation must sum the DDGauss encodings' words")
        # Simulation only (--verify): each meter's quantised input of a round.
        self.plaintext = plaintext
        self.secagg_stats = SecAggStats()
        self.dp_stopped: str | None = None
        self.offline: set[int] = set()
        # Meters that restarted during the open round and sit it out (their hello says so).
        self._sitting_out: set[int] = set()
        # Registered meters not heard from since the aggregator reconnected, and until
        # when the next round waits for them (see _wait_for_online).
        self._unheard: set[int] = set()
        self._regather_by = 0.0
        # When each offline meter's will came, and until when a burst of them is
        # suspected to be a stopping broker's (see _gone).
        self._will_at: dict[int, float] = {}
        self._suspect_until = 0.0
        self.rejected_messages = 0
        self.results: list[codec.RoundResult] = []
        self._drops = DropLog(log)
        self._round: FedAvgRound | None = None
        self._announce: bytes | None = None
        self._changed = asyncio.Event()
        # SecAgg+ messages' signatures are checked in batches, off the loop.
        self.verifier = BatchVerifier()
        self._rng = random.Random(config.seed)
        self.run_id = secrets.token_hex(8)
        self.connection = connection(
            config.mqtt_client,
            address,
            identifier=f"gridsim-{config.session}-aggregator",
            subscriptions=[
                self.topics.hello_all,
                self.topics.update_all,
                self.topics.status_all,
                self.topics.secagg_up_all,
            ],
            on_message=self._on_message,
            on_connect=self._on_connect,
        )

    @staticmethod
    def _continue_dp(config: AggregatorConfig, prior: list[RoundRecord]) -> AggregatorConfig:
        """The DP settings to continue a session whose ledger already has rounds."""
        recorded: dict[str, Any] = dict(prior[-1].dp)
        if recorded.get("mode", "off") == "off":
            if config.dp is not None:
                log.warning(
                    "session %s ran %d rounds without DP; they count as DP rounds from here",
                    config.session,
                    len(prior),
                )
            return config
        if config.dp is None:
            raise ConfigError(
                f"session {config.session} was run with --dp {recorded['mode']}; "
                "an aggregator continuing it must keep differential privacy on"
            )
        if recorded == config.dp.record():
            return config
        log.warning(
            "session %s continues with the DP parameters its ledger records (%s, noise "
            "multiplier %.4g), not newly calibrated ones",
            config.session,
            recorded["mode"],
            float(recorded["noise_multiplier"]),
        )
        dp = DPSettings.from_record(recorded, rounds=config.dp.rounds, budget=config.dp.budget)
        plan = dataclasses.replace(
            config.plan,
            clip_norm=dp.clip_norm,
            local_noise=dp.sigma if dp.mode == "local" else 0.0,
        )
        return dataclasses.replace(config, dp=dp, plan=plan)

    # -- incoming ---------------------------------------------------------------

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected_messages += 1
        self._drops.drop("aggregator", topic, reason)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.startswith(f"{self.topics.prefix}/status/"):
            self._on_status(topic, payload)
            return
        if topic.startswith(f"{self.topics.prefix}/secagg-up/"):
            self._on_secagg(topic, payload)
            return
        # Per-topic limits: nothing a meter sends legitimately is larger than
        # its update (the model's float32 bytes plus a small header).
        is_update = topic.startswith(f"{self.topics.prefix}/update/")
        limit = 4 * int(self.model.shape[0]) + 4096 if is_update else 4096
        try:
            meter = self.topics.meter_of(topic)
            msg = codec.decode(payload, max_bytes=limit)
        except MessageError as exc:
            self._reject(topic, str(exc))
            return
        if msg.session != self.config.session:
            self._reject(topic, f"message of session {msg.session!r}")
        elif isinstance(msg, codec.Hello) and topic == self.topics.hello(meter):
            if msg.meter != meter:
                self._reject(topic, f"hello from meter {msg.meter} on meter {meter}'s topic")
                return
            pinned = self.meter_keys.get(meter)
            key = Ed25519PublicKey.from_public_bytes(msg.public_key)
            if pinned is None:
                self.meter_keys[meter] = key
                if self.secagg is not None:
                    self.secagg.enroll(meter, key)
            elif pinned != key:
                self._reject(topic, f"hello for meter {meter} with a key other than its own")
                return
            self.registered[meter] = msg.n_train
            self.offline.discard(meter)
            self._unheard.discard(meter)
            self._changed.set()
            rnd = self._round
            if rnd is not None and msg.sits_out == rnd.round:
                # Restarted mid-round: it holds nothing of the round; wait no longer.
                self._sitting_out.add(meter)
                return
            self._sitting_out.discard(meter)
            # A meter says hello on every (re)connect: if it reconnected mid-stage,
            # the request it waits for may have been lost with its old connection.
            self._resend_direct([meter])
        elif isinstance(msg, codec.Update) and topic == self.topics.update(meter):
            if self._round is None:
                self._reject(topic, f"update for round {msg.round} while no round is open")
                return
            checked = self._contribution_check(meter, msg)
            if isinstance(checked, str):
                self._reject(topic, checked)
                return
            # Checked here, not batched like SecAgg+ messages: one signature per
            # update is less than the hand-over to the verifier's thread costs
            # (alternating 8-round runs of 500 meters: 0.916 s a round inline
            # against 0.928 s batched, CPU 1.66 against 1.69 s).
            if not signatures.verify(checked.public_key, checked.signature, checked.data):
                self._reject(topic, _forged(meter))
                return
            reason = self._round.offer(meter, msg)
            if reason is not None:
                self._reject(topic, reason)
            elif not (self._round.pending() - self._gone()):
                self._changed.set()
        else:
            self._reject(topic, f"unexpected {type(msg).__name__}")

    def _on_secagg(self, topic: str, payload: bytes) -> None:
        server = self.secagg
        if server is None:
            self._reject(topic, "secure aggregation is off")
            return
        try:
            meter = self.topics.meter_of(topic)
            msg = sa.decode(payload)
        except GridsimError as exc:
            self._reject(topic, str(exc))
            return
        if getattr(msg, "meter", None) != meter:
            self._reject(topic, f"secure-aggregation message not from meter {meter}")
            return
        arrived = time.monotonic()
        report = None
        # Each check with what its failure means, and whether the protocol records it.
        checks: list[tuple[str, bool, AnyCheck]] = []
        if isinstance(msg, sa.MaskedInput):
            # First, as SecAggServer.receive would: a vector swapped under a genuine
            # signature fails here, not on its signature.
            checks.append(
                ("masked input does not match its SHA-256", True, DigestCheck(msg.data, msg.digest))
            )
            report, reason = self._masked_input_report(meter, msg)
            if reason is not None:
                self._reject(topic, reason)
                return
            assert report is not None
            checked = self._contribution_check(meter, report)
            if isinstance(checked, str):
                self._reject(topic, checked)
                return
            checks.append((_forged(meter), False, checked))
        checks += [(why, True, Check(*c)) for why, c in server.signature_checks(msg)]
        meter_msg = msg

        def then(results: list[bool]) -> None:
            for (why, protocol, _), ok in zip(checks, results, strict=True):
                if not ok:
                    if protocol:
                        server.refuse(meter_msg, why)
                    self._reject(topic, f"secure aggregation: {why}" if protocol else why)
                    return
            self._accept_secagg(topic, meter, meter_msg, report, arrived)

        if checks:
            self.verifier.submit([c for _, _, c in checks], then)
        else:
            then([])  # the sender is not enrolled, or its message verified before

    def _accept_secagg(
        self,
        topic: str,
        meter: int,
        msg: sa.SecAggMessage,
        report: codec.Update | None,
        arrived: float,
    ) -> None:
        """Hand a meter's SecAgg+ message, its signatures verified, to the protocol."""
        server = self.secagg
        assert server is not None
        try:
            server.receive(msg, arrived, signatures_checked=True)
        except ProtocolError as exc:
            self._reject(topic, f"secure aggregation: {exc}")
            return
        rnd = self._round
        if report is not None and rnd is not None:
            # Accepted by secure aggregation: the report joins the round as an
            # update without a delta (its sum comes from unmasking).
            reason = rnd.offer(meter, report)
            if reason is not None:
                self._reject(topic, reason)
        if self._stage_done(server):
            self._changed.set()

    def _masked_input_report(
        self, meter: int, msg: sa.MaskedInput
    ) -> tuple[codec.Update | None, str | None]:
        """The round report a masked input carries (its signature still to be
        checked), or why it is unacceptable."""
        try:
            report = codec.decode(msg.report, max_bytes=sa.MAX_REPORT_BYTES)
        except MessageError as exc:
            return None, f"masked input with a bad report: {exc}"
        if not isinstance(report, codec.Update) or report.delta:
            return None, "masked input whose report is not an update without a delta"
        if (report.session, report.round, report.meter, report.payload_sha256) != (
            self.config.session,
            msg.round,
            meter,
            msg.digest,
        ):
            return None, "masked input whose report is for another session, round, meter or input"
        return report, None

    def _contribution_check(self, meter: int, msg: codec.Update) -> Check | str:
        """The check of ``msg``'s contribution signature, or why it cannot be made."""
        key = self.meter_keys.get(meter)
        if key is None:
            return f"update from meter {meter}, which never enrolled a key"
        data = MeterContribution.message(msg.session, msg.round, meter, msg.payload_sha256)
        return Check(key.public_bytes_raw(), data, msg.signature)

    def _on_status(self, topic: str, payload: bytes) -> None:
        try:
            meter = self.topics.meter_of(topic)
        except MessageError as exc:
            self._reject(topic, str(exc))
            return
        if payload == b"offline":
            now = time.monotonic()
            self.offline.add(meter)
            self._will_at[meter] = now
            recent = sum(1 for m in self.offline if now - self._will_at.get(m, 0.0) < WILL_BURST_S)
            loop = asyncio.get_running_loop()
            if recent >= max(2, len(self.registered) // 2) and now >= self._suspect_until:
                self._suspect_until = now + WILL_BURST_S
                loop.call_later(WILL_BURST_S, self._changed.set)
            loop.call_later(WILL_SETTLE_S, self._changed.set)
        else:
            self._reject(topic, "unknown status payload")

    async def _on_connect(self) -> None:
        if self.connection.connects > 1 and self.registered:
            # Reconnected: the broker may have restarted, and every meter with it (its
            # wills said they went offline). Until they say hello again, or
            # REGATHER_S passed, they are neither online nor gone: the open stage
            # and the next round's selection wait for them. A roll call asks those
            # that reconnected before this aggregator did.
            self._unheard = set(self.registered)
            self.offline -= self._unheard
            self._regather_by = time.monotonic() + REGATHER_S
            asyncio.get_running_loop().call_later(REGATHER_S, self._changed.set)
            self._changed.set()
            roll_call = codec.RollCall(
                v=codec.WIRE_VERSION, session=self.config.session, run=self.run_id
            )
            await self.connection.publish(self.topics.control, codec.encode(roll_call), wait=0)
        if self._announce is not None:
            # The broker may have lost the announcement (e.g. it restarted): repeat it.
            await self.connection.publish(self.topics.round, self._announce, retain=True, wait=0)
            if self._secagg_broadcast:
                await self.connection.publish(
                    self.topics.secagg, self._secagg_broadcast, retain=True, wait=0
                )
            self._resend_direct(list(self._secagg_direct))

    def _resend_direct(self, meters: list[int]) -> None:
        """Send the open stage's request again to those of ``meters`` yet to answer it."""
        server = self.secagg
        if server is None or not self._secagg_direct:
            return
        waiting = server.waiting_for
        for meter in meters:
            payload = self._secagg_direct.get(meter)
            if payload is not None and meter in waiting:
                self._send(self.topics.secagg_to(meter), payload)

    # -- driver -----------------------------------------------------------------

    def _gone(self) -> set[int]:
        """Meters the open round need not wait for: offline, or restarted and sitting out.

        Not while this aggregator is cut off from the broker, nor, for a moment, the
        meters of a burst of wills (a stopping broker's, most likely: see
        WILL_BURST_S); meters silent since this aggregator reconnected count only
        once REGATHER_S has passed.
        """
        if not self.connection.connected.is_set():
            return set(self._sitting_out)
        now = time.monotonic()
        # A will counts once it has settled, or, in a burst, once the burst is over.
        hold = WILL_BURST_S if now < self._suspect_until else WILL_SETTLE_S
        offline = {m for m in self.offline if now - self._will_at.get(m, 0.0) >= hold}
        gone = offline | self._sitting_out
        if self._unheard and now >= self._regather_by:
            gone |= self._unheard
        return gone

    def _stage_done(self, server: SecAggServer) -> bool:
        """Whether the open SecAgg+ stage waits for no meter that may still answer."""
        return server.only_gone_left(self._gone())

    async def _wait_changed(self, seconds: float) -> None:
        self._changed.clear()
        # asyncio.timeout, not wait_for: on Python 3.11, a wait_for cancelled in the
        # same loop iteration as the event is set returns normally and drops the
        # cancellation, so a Ctrl-C that landed then left the aggregator running
        # rounds for meters that had already stopped (the run hung).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._changed.wait()

    async def _register(self) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.registration_timeout_s
        roll_call = codec.encode(
            codec.RollCall(v=codec.WIRE_VERSION, session=cfg.session, run=self.run_id)
        )
        next_call = 0.0
        while len(self.registered) < cfg.expected_meters and time.monotonic() < deadline:
            if time.monotonic() >= next_call:
                # Meters that connected before this aggregator (e.g. it was restarted)
                # said hello to nobody; ask again now and then until all are here.
                await self.connection.publish(self.topics.control, roll_call)
                next_call = time.monotonic() + 2.0
            await self._wait_changed(min(deadline, next_call) - time.monotonic())
        if len(self.registered) < cfg.min_meters:
            raise RoundError(
                f"only {len(self.registered)} of at least {cfg.min_meters} meters registered "
                f"within {cfg.registration_timeout_s:.0f} s"
            )
        log.info("%d meters registered", len(self.registered))

    def _select(self, train: bool) -> list[int]:
        online = sorted(m for m in self.registered if m not in self.offline)
        if not train or self.config.fraction >= 1.0:
            return online
        if self.config.dp is not None:
            # The accountant's amplification by sampling assumes Poisson sampling:
            # each meter takes part independently with probability q.
            q = self.config.fraction
            return [m for m in online if self._rng.random() < q]
        k = max(self.config.min_meters, math.ceil(self.config.fraction * len(online)))
        return sorted(self._rng.sample(online, min(k, len(online))))

    def _budget_spent(self) -> bool:
        """Whether one more DP round would spend more than the epsilon budget."""
        dp = self.config.dp
        if dp is None or dp.budget is None:
            return False
        after = dp.epsilon_after(self.dp_released + 1)
        if after <= dp.budget * (1 + 1e-9):
            return False
        self.dp_stopped = (
            f"stopped after {self.dp_released} rounds: one more would spend epsilon "
            f"{after:.4g} of a budget of {dp.budget:g}"
        )
        log.warning("%s", self.dp_stopped)
        return True

    def _mark_started(self, number: int) -> None:
        path = self._started_path
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(f"{number}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    async def _wait_for_online(self) -> None:
        """Wait, up to a round's deadline, until the round has meters to select.

        After this aggregator reconnects, that is every registered meter back, or
        REGATHER_S passed (meters still silent then are offline): they come back
        over their reconnect backoff, and a round that selected the first few would
        leave the others out. In any case some meter must be online: a broker that
        stops publishes its clients' wills, and a round started before their hellos
        would have no one to select.
        """
        deadline = time.monotonic() + self.config.round_timeout_s
        while True:
            now = time.monotonic()
            regathering = bool(self._unheard) and now < min(self._regather_by, deadline)
            if not regathering:
                self.offline |= self._unheard
                self._unheard = set()
                if now >= deadline or not all(m in self.offline for m in self.registered):
                    return
            until = min(self._regather_by, deadline) if regathering else deadline
            await self._wait_changed(until - now)

    async def _run_round(self, number: int, train: bool) -> RoundOutcome:
        cfg = self.config
        self._mark_started(number)
        await self._wait_for_online()
        selected = self._select(train)
        secure = train and self.secagg is not None
        dp = cfg.dp if train else None
        rnd = FedAvgRound(
            number,
            selected=selected,
            model=self.model,
            train=train,
            run=self.run_id,
            secure=secure,
            uniform=dp is not None,
        )
        started = time.perf_counter()
        cpu_started = None if self.cpu_clock is None else self.cpu_clock()
        loop_started = time.thread_time()  # this (the event loop's) thread only
        opening: Outbox | None = None
        if secure:
            # The round's first SecAgg+ request rides in the announcement.
            opening = self._open_secure_round(rnd)
        announce = codec.RoundAnnounce(
            v=codec.WIRE_VERSION,
            session=cfg.session,
            run=self.run_id,
            round=number,
            train=train,
            selected=selected,
            deadline_s=cfg.round_timeout_s,
            plan=codec.TrainPlan(
                cfg.plan.local_epochs,
                cfg.plan.batch_size,
                cfg.plan.lr,
                cfg.plan.clip_norm,
                cfg.plan.local_noise,
            ),
            model=codec.vector_to_bytes(self.model),
            ledger_key=self._ledger_key,
            secagg_key=self._secagg_key if secure else b"",
            ddgauss=self._ddgauss_plan() if secure else None,
            dp=dp.record() if dp is not None else None,
            secagg_open=(
                sa.encode(opening.broadcast)
                if opening is not None and opening.broadcast is not None
                else b""
            ),
        )
        self._round, self._announce = rnd, codec.encode(announce)
        self._sitting_out = set()
        # Retained, so a meter that (re)connects mid-round learns of it at once. Not
        # awaited: the broker's acknowledgement queues behind this process's meters'
        # handling of the announcement, and a secure round whose meters all
        # advertised ahead can send its sharing requests at once (they follow the
        # announcement in order).
        self._send(self.topics.round, self._announce, retain=True)
        deadline = time.monotonic() + cfg.round_timeout_s
        if opening is not None:
            outcome = await self._secure_round(rnd, opening, started)
        else:
            while time.monotonic() < deadline:
                if not (rnd.pending() - self._gone()):
                    break
                await self._wait_changed(deadline - time.monotonic())
            outcome = rnd.close(noise=self._central_noise(rnd))
        self._round = None
        self._announce = None
        wall = time.perf_counter() - started
        self.model = outcome.model
        if train and cfg.dp is not None and outcome.participants:
            self.dp_released += 1
        if train and self.ledger is not None and outcome.participants:
            await self._record(outcome)
        cpu = (
            None
            if cpu_started is None or self.cpu_clock is None
            else self.cpu_clock() - cpu_started
        )
        loop_cpu = time.thread_time() - loop_started
        trained = None if self.trained_clock is None else self.trained_clock()
        train_done = None if trained is None or trained < started else trained - started
        await self._publish_result(
            outcome, wall, self._stage_times if secure else {}, cpu, loop_cpu, train_done
        )
        return outcome

    def _ddgauss_plan(self) -> codec.DDGaussPlan | None:
        c = self._ddgauss
        return None if c is None else codec.DDGaussPlan(**c.plan())

    def _central_noise(self, rnd: FedAvgRound) -> npt.NDArray[np.float64] | None:
        """Central DP: Gaussian noise of sd z*C for the round's sum (exact sampler)."""
        dp = self.config.dp
        if dp is None or dp.mode != "central" or not rnd.train:
            return None
        return gaussian_noise(dp.sigma, rnd.dim)

    def _publish_secagg(self, out: Outbox) -> None:
        """Publish a stage's requests without waiting for the broker's acknowledgements.

        A stage that is complete as it opens (every meter advertised ahead) moves on
        at once instead of after the acknowledgement, which waits behind the
        meters' handling of the round announcement (0.15 s for 500 meters). They
        are written in the order they were made (and, while disconnected, queued
        in tasks that start in that order), so each meter receives them in order.
        """
        if out.broadcast is not None:
            # Retained (and repeated after a reconnect), so a meter that reconnects
            # mid-stage, e.g. after a broker restart, still gets the stage's request.
            self._secagg_broadcast = sa.encode(out.broadcast)
            self._send(self.topics.secagg, self._secagg_broadcast, retain=True)
        self._secagg_direct = {meter: sa.encode(msg) for meter, msg in out.direct.items()}
        for meter, payload in self._secagg_direct.items():
            self._send(self.topics.secagg_to(meter), payload)

    def _send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish now; while disconnected, in a task of its own (kept until it ends)."""
        if self.connection.publish_nowait(topic, payload, retain=retain):
            return
        task = asyncio.get_running_loop().create_task(
            self.connection.publish(topic, payload, retain=retain)
        )
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _open_secure_round(self, rnd: FedAvgRound) -> Outbox:
        """Open the SecAgg+ round: its advertisement request, or why it cannot start."""
        server = self.secagg
        assert server is not None
        try:
            return server.start_round(rnd.round, rnd.selected, time.monotonic())
        except GridsimError as exc:
            return Outbox(abandoned=f"cannot start: {exc}")

    async def _secure_round(
        self, rnd: FedAvgRound, out: Outbox, stage_started: float
    ) -> RoundOutcome:
        """Drive the SecAgg+ stages of a round, then close it with the unmasked sum.

        ``out`` is what opening the round produced (:meth:`_open_secure_round`) at
        ``stage_started`` (perf_counter): its request went out in the announcement.
        """
        server = self.secagg
        assert server is not None
        stats = self.secagg_stats
        result = None
        self._stage_times = {}
        while out.abandoned is None:
            assert server.deadline is not None
            if not self._stage_done(server) and time.monotonic() < server.deadline:
                await self._wait_changed(server.deadline - time.monotonic())
                continue
            stage = server.stage
            elapsed = time.perf_counter() - stage_started
            if stage is not None:
                self._stage_times[stage.name.lower()] = elapsed
            log.debug(
                "round %d: secagg stage %s closed after %.3f s",
                rnd.round,
                stage.name if stage else None,
                elapsed,
            )
            stage_started = time.perf_counter()
            plaintext = None
            if self.plaintext is not None and server.stage is sa.Stage.UNMASK:
                plaintext = self.plaintext(rnd.round)
            out = server.close_stage(time.monotonic(), plaintext=plaintext, gone=self._gone())
            if out.abandoned is not None:
                break
            if out.result is not None:
                result = out.result
                if result.verified is not None:
                    stats.verified_rounds += 1
                    stats.verify_failures += int(not result.verified)
                break
            self._publish_secagg(out)
        self._secagg_broadcast, self._secagg_direct = b"", {}
        await self.connection.publish(self.topics.secagg, b"", retain=True)
        if result is None:
            stats.rounds_abandoned += 1
            stats.abandon_reasons.append(f"round {rnd.round}: {out.abandoned}")
            log.warning("round %d abandoned: %s", rnd.round, out.abandoned)
            return rnd.close(None)
        # Survivors' reports came inside their masked inputs (see _on_secagg).
        total = result.values
        if self._ddgauss is not None:
            # The noisy sum of the survivors' encodings: rotate back, rescale.
            signs = rotation_signs(self.config.session, rnd.round, self._ddgauss.padded)
            total = self._ddgauss.decode(result.total, signs)
        outcome = rnd.close(total, result.survivors, noise=self._central_noise(rnd))
        for meter, (digest, _) in outcome.contributions.items():
            if result.digests.get(meter) != digest:
                log.error("meter %d signed a payload other than its masked input", meter)
        stats.saturated_values += outcome.saturated
        return outcome

    def _secagg_params(self) -> dict[str, Any]:
        server = self.secagg
        if server is None or server.params is None:
            return {"enabled": False}
        p = server.params
        return {
            "enabled": True,
            "neighbors": p.neighbors,
            "threshold": p.threshold,
            "modulus_bits": p.bits,
            "clip": p.clip,
            "scale": p.scale,
        }

    async def _record(self, outcome: RoundOutcome) -> None:
        """Append the round's block to the ledger, then send each meter its receipt."""
        assert self.ledger is not None
        session = self.config.session
        dp = self.config.dp
        entries: list[MeterContribution | RoundRecord] = [
            MeterContribution(
                session=session,
                round=outcome.round,
                meter=m,
                payload_sha256=digest,
                signature=signature,
            )
            for m, (digest, signature) in sorted(outcome.contributions.items())
        ]
        entries.append(
            RoundRecord(
                session=session,
                round=outcome.round,
                participants=outcome.participants,
                dropouts=outcome.dropouts,
                secagg=self._secagg_params(),
                dp=dp.record() if dp else {"mode": "off"},
                epsilon_spent=dp.epsilon_after(self.dp_released) if dp else None,
                aggregate_sha256=outcome.aggregate_sha256,
                model_sha256=bytes.fromhex(model_hash(outcome.model)),
            )
        )
        ledger = self.ledger
        head = await asyncio.to_thread(ledger.append_block, entries)  # fsyncs
        note = head.note.decode()
        receipts = [
            codec.encode(
                codec.Proof(
                    v=codec.WIRE_VERSION,
                    session=session,
                    run=self.run_id,
                    round=outcome.round,
                    meter=m,
                    proof=json.dumps(ledger.inclusion_proof(m, outcome.round, session)),
                    head=note,
                )
            )
            for m in outcome.participants
        ]
        later = [
            (m, r)
            for m, r in zip(outcome.participants, receipts, strict=True)
            if not self.connection.publish_nowait(self.topics.proof(m), r)
        ]
        if later:  # disconnected: wait a little for the connection to come back
            await asyncio.gather(
                *(self.connection.publish(self.topics.proof(m), r, wait=10) for m, r in later)
            )

    async def _publish_result(
        self,
        outcome: RoundOutcome,
        wall: float,
        stages_s: dict[str, float],
        cpu_s: float | None = None,
        loop_cpu_s: float | None = None,
        train_done_s: float | None = None,
    ) -> None:
        metrics = outcome.eval.metrics() or {}
        result = codec.RoundResult(
            v=codec.WIRE_VERSION,
            session=self.config.session,
            run=self.run_id,
            round=outcome.round,
            train=outcome.train,
            selected=len(outcome.selected),
            participants=outcome.participants,
            dropouts=outcome.dropouts,
            rejected=outcome.rejected,
            train_loss=outcome.train_loss,
            mae=metrics.get("mae"),
            rmse=metrics.get("rmse"),
            nrmse=metrics.get("nrmse"),
            naive_rmse=metrics.get("naive_rmse"),
            model_hash=model_hash(outcome.model),
            wall_s=wall,
            train_s=outcome.train_s,
            aggregate_s=outcome.aggregate_s,
            stages_s=stages_s,
            cpu_s=cpu_s,
            loop_cpu_s=loop_cpu_s,
            train_done_s=train_done_s,
        )
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)
        await self.connection.publish(self.topics.results, codec.encode(result), retain=True)

    async def run(self) -> AggregatorReport:
        """Register meters, run the training rounds and a final evaluation, then stop meters."""
        outcomes: list[RoundOutcome] = []
        self.connection.start()
        try:
            # Clear what an earlier run of this session may have left retained.
            await self.connection.publish(self.topics.round, b"", retain=True)
            await self._register()
            first, last = self.first_round, self.first_round + self.config.rounds
            for number in range(first, last):
                if self._budget_spent():
                    last = number
                    break
                outcomes.append(await self._run_round(number, train=True))
            # A last round that only evaluates the final model on every meter.
            outcomes.append(await self._run_round(last, train=False))
            await self.connection.publish(self.topics.round, b"", retain=True, wait=10)
            stop = codec.Stop(v=codec.WIRE_VERSION, session=self.config.session, reason="done")
            await self.connection.publish(self.topics.control, codec.encode(stop), wait=10)
        finally:
            await self.connection.close()
            self.verifier.close()
        return AggregatorReport(
            outcomes=outcomes,
            results=self.results,
            registered=len(self.registered),
            rejected_messages=self.rejected_messages,
            model=self.model,
            reconnects=max(0, self.connection.connects - 1),
            secagg_stats=self.secagg_stats,
            dp_released=self.dp_released,
            dp_stopped=self.dp_stopped,
            secagg_params={k: v for k, v in self._secagg_params().items() if k != "enabled"},
        )
