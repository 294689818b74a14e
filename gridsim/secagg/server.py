"""The aggregator's side of SecAgg+, a state machine with no I/O.

How a transport drives one round of a :class:`SecAggServer`::

    server.enroll(meter, ed25519_public_key)          # once per meter, at enrolment
    out = server.start_round(round, selected, now)    # out.broadcast: AdvertiseRequest
    # loop: deliver every meter message with server.receive(msg, now); it raises
    # ProtocolError (already logged and recorded in server.rejected) for bad ones.
    # When server.stage_complete or now >= server.deadline, or when every meter in
    # server.waiting_for is known to be gone (disconnected, restarted):
    out = server.close_stage(now, gone=gone)          # the next request(s), or the end
    #   out.broadcast  one signed message for every meter in server.waiting_for
    #   out.direct     signed messages addressed to single meters (relayed shares)
    #   out.result     the SecAggResult after the last stage
    #   out.abandoned  the reason, when the round was abandoned

Each meter hands every request to its :class:`~gridsim.secagg.client.SecAggClient`
(``advertise``, ``share_keys``, ``masked_input``, ``unmask``, by message type) and
publishes the reply. Messages cross the wire with
:func:`gridsim.secagg.messages.encode` and :func:`~gridsim.secagg.messages.decode`.
Meters need the server's public key and their neighbours' enrolment keys.

Stages and who the server waits for: ``ADVERTISE`` (the selected meters, less
those whose advertisement for the round came ahead in their last unmasking
response: they are listed as ``ready`` and do not answer, so when every selected
meter answered the last round, the stage is complete as it opens),
``SHARE`` (those that advertised keys), ``MASKED_INPUT`` (those that shared),
``UNMASK`` (those that sent a masked input). Each stage closes at its deadline
(``stage_timeout_s`` after it opened) with whoever answered; meters that did not
answer are dropouts. If fewer than ``min_survivors`` (at least the threshold ``t``)
remain, or a needed secret has fewer than ``t`` shares, the round is abandoned with
the reason recorded and no aggregate; the next :meth:`start_round` works as usual.

The last stage reconstructs each survivor's self-mask seed (checked against the
commitment it advertised) and each dropped meter's mask-agreement key (checked
against the public key it advertised) with
:func:`~gridsim.secagg.masking.shamir_combine`, re-derives the dropped meters'
pairwise seeds with their surviving neighbours, and removes every mask in one
:func:`~gridsim.secagg.masking.expand_masks` call. What is left is the modular sum
of the survivors' quantised inputs, decoded to floats with
:func:`~gridsim.secagg.masking.dequantize_sum`.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridsim import _core, signatures
from gridsim.exceptions import GridsimError, InvalidInputError, ProtocolError, RoundError
from gridsim.secagg import masking
from gridsim.secagg.client import (
    derive_pair_keys,
    pairwise_seed_info,
    seed_commitment,
    words_dtype,
)
from gridsim.secagg.graph import (
    GRAPH_SEED_LEN,
    Neighbors,
    default_degree,
    min_degree,
    neighbor_graph,
    resolve_degree,
    threshold_for,
)
from gridsim.secagg.messages import (
    SECAGG_WIRE_VERSION,
    AdvertiseKeys,
    AdvertiseRequest,
    EncryptedShare,
    MaskedInput,
    MaskedInputRequest,
    MeterMessage,
    RoundParams,
    SecAggMessage,
    ServerMessage,
    ShareKeys,
    ShareRequest,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    check_digest,
    check_stage,
    remember_verified,
    sign,
    sign_batch,
    signature_check,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecAggConfig:
    """Settings of the rounds of one session.

    ``neighbors``: the degree ``k`` of the neighbour graph, ``"all"`` for classic
    SecAgg, or None for :func:`~gridsim.secagg.graph.default_degree` at the expected
    ``dropout``. ``threshold``: None for the majority
    :func:`~gridsim.secagg.graph.threshold_for`. ``min_survivors``: the fewest meters
    a stage may end with (never below the threshold).
    """

    d: int
    bits: int = 32
    clip: float = 1.0
    scale: float = 1.0
    neighbors: Neighbors | None = None
    dropout: float = 0.1
    threshold: int | None = None
    min_survivors: int = 0
    stage_timeout_s: float = 30.0


class RoundState(enum.Enum):
    """Where the server is: no round, in a stage, finished or abandoned."""

    IDLE = "idle"
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    DONE = "done"
    ABANDONED = "abandoned"


_STAGE_STATE = {
    Stage.ADVERTISE: RoundState.ADVERTISE,
    Stage.SHARE: RoundState.SHARE,
    Stage.MASKED_INPUT: RoundState.MASKED_INPUT,
    Stage.UNMASK: RoundState.UNMASK,
}


@dataclass(frozen=True)
class Rejection:
    """A meter message the server refused, and why."""

    round: int | None
    meter: int | None
    kind: str
    reason: str


@dataclass(frozen=True)
class SecAggResult:
    """The outcome of a completed round.

    ``total`` is the modular sum in Z_{2^bits} of the survivors' quantised inputs,
    ``values`` its decoding (``out_of_range`` entries could not come from
    ``len(survivors)`` honest inputs). ``dropped`` shared their secrets but sent no
    masked input; ``absent`` were selected but never shared. ``digests`` are the
    SHA-256 of each survivor's packed masked input (for the ledger). ``verified`` is
    None unless plaintext inputs were given to :meth:`SecAggServer.close_stage`.
    """

    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    absent: tuple[int, ...]
    total: masking.MaskArray
    values: npt.NDArray[np.float64]
    out_of_range: int
    digests: Mapping[int, bytes]
    verified: bool | None = None


@dataclass
class Outbox:
    """What :meth:`SecAggServer.start_round` and ``close_stage`` hand the transport."""

    broadcast: ServerMessage | None = None
    direct: dict[int, ServerMessage] = field(default_factory=dict)
    result: SecAggResult | None = None
    abandoned: str | None = None


class SecAggServer:
    """The aggregator of one session's SecAgg+ rounds (see the module documentation).

    ``signing_key`` signs every request; meters hold its public key
    (:attr:`public_key`). ``random_bytes`` draws the public graph seeds.
    """

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        session: str,
        config: SecAggConfig,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if config.d < 1 or not 1 <= config.bits <= 64:
            raise InvalidInputError("d must be positive and bits in 1..=64")
        if not config.clip > 0 or not config.scale > 0 or not config.stage_timeout_s > 0:
            raise InvalidInputError("clip, scale and stage_timeout_s must be positive")
        self.session = session
        self.config = config
        self._key = signing_key
        self._random_bytes = random_bytes
        self._enrolled: dict[int, Ed25519PublicKey] = {}
        self.rejected: list[Rejection] = []
        """Every refused meter message, oldest first."""
        self.state = RoundState.IDLE
        self.round: int | None = None
        self.deadline: float | None = None
        """When the open stage closes, in the transport's clock."""
        self.result: SecAggResult | None = None
        self.abandon_reason: str | None = None
        self._last_round = -1
        # Advertisements for the round after the open one, sent ahead by meters in
        # their unmasking responses (checked and signed like any advertisement).
        self._next_adverts: dict[int, AdvertiseKeys] = {}
        self._reset_round()

    def _reset_round(self) -> None:
        self._params: RoundParams | None = None
        self._graph: Mapping[int, frozenset[int]] = {}
        self._min_live = 0
        self._expected: frozenset[int] = frozenset()
        self._adverts: dict[int, AdvertiseKeys] = {}
        self._shares: dict[int, ShareKeys] = {}
        self._inputs: dict[int, masking.MaskArray] = {}
        self._digests: dict[int, bytes] = {}
        self._responses: dict[int, UnmaskResponse] = {}
        self._survivors: tuple[int, ...] = ()
        self._dropped: tuple[int, ...] = ()

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def params(self) -> RoundParams | None:
        """The open round's parameters."""
        return self._params

    def enroll(self, meter: int, key: Ed25519PublicKey) -> None:
        """Register ``meter``'s Ed25519 enrolment key; its messages must verify under it."""
        if not 0 <= meter <= 2**31 - 1:
            raise InvalidInputError(f"meter ids are 0..2**31-1, got {meter}")
        self._enrolled[meter] = key

    @property
    def stage(self) -> Stage | None:
        """The open stage, None outside a round."""
        for stage, state in _STAGE_STATE.items():
            if state is self.state:
                return stage
        return None

    @property
    def waiting_for(self) -> frozenset[int]:
        """Meters whose answer to the open stage has not arrived."""
        return frozenset(self._expected - self._received().keys())

    @property
    def waiting_count(self) -> int:
        """How many meters the open stage still waits for, without building the set
        (a transport asks after every message: 500 set differences of up to 500
        meters per stage otherwise)."""
        # Only meters the stage expects get in (_accept; the advertisements held
        # ahead are the selected meters'), so counting is exact.
        return len(self._expected) - len(self._received())

    def only_gone_left(self, gone: Collection[int]) -> bool:
        """Whether every meter the open stage still waits for is in ``gone``: the
        count first, the sets only once so few are left that they could all be."""
        waiting = self.waiting_count
        return waiting == 0 or (waiting <= len(gone) and self.waiting_for.issubset(gone))

    @property
    def stage_complete(self) -> bool:
        """True when every meter expected in the open stage has answered."""
        return self.stage is not None and self.waiting_count == 0

    def _received(self) -> Mapping[int, object]:
        """The open stage's answers, by meter (the server's own dict: not to be changed)."""
        stage = self.stage
        if stage is Stage.ADVERTISE:
            return self._adverts
        if stage is Stage.SHARE:
            return self._shares
        if stage is Stage.MASKED_INPUT:
            return self._inputs
        if stage is Stage.UNMASK:
            return self._responses
        return {}

    def _request_fields(self, stage: Stage) -> tuple[int, str, int, Stage, bytes]:
        assert self.round is not None
        return SECAGG_WIRE_VERSION, self.session, self.round, stage, b""

    # ---- opening a round ------------------------------------------------------------

    def start_round(
        self, round: int, meters: Sequence[int], now: float, *, graph_seed: bytes | None = None
    ) -> Outbox:
        """Open ``round`` for the ``meters`` selected; a round still open is abandoned.

        ``round`` must be above every earlier round of the session (meters reject
        replays). ``graph_seed`` fixes the public graph seed (tests); by default it
        is fresh randomness.
        """
        if round <= self._last_round:
            raise RoundError(f"round {round} is not after round {self._last_round}")
        if self.stage is not None:
            self._abandon(f"superseded by round {round}")
        selected = sorted(set(meters))
        if len(selected) != len(meters):
            raise InvalidInputError("the selected meters repeat a meter")
        missing = [m for m in selected if m not in self._enrolled]
        if missing:
            raise InvalidInputError(f"meters {missing[:5]} are not enrolled")
        cfg = self.config
        n = len(selected)
        neighbors = cfg.neighbors
        k = resolve_degree(
            n, default_degree(n, dropout=cfg.dropout) if neighbors is None else neighbors
        )
        if k < min_degree(n):
            raise InvalidInputError(
                f"{k} neighbours is below the minimum {min_degree(n)} meters accept for n = {n}"
            )
        t = threshold_for(k) if cfg.threshold is None else cfg.threshold
        if not threshold_for(k) <= t <= k:
            raise InvalidInputError(f"threshold {t} must be a majority of the {k} neighbours")
        if cfg.scale > masking.max_scale(cfg.clip, cfg.bits, n):
            raise InvalidInputError(
                f"scale {cfg.scale} lets a sum of {n} inputs wrap modulo 2**{cfg.bits}"
            )
        seed = self._random_bytes(GRAPH_SEED_LEN) if graph_seed is None else graph_seed
        params = RoundParams(
            meters=selected,
            graph_seed=seed,
            neighbors=k,
            threshold=t,
            d=cfg.d,
            bits=cfg.bits,
            clip=cfg.clip,
            scale=cfg.scale,
        )
        ahead = {
            m: adv
            for m in selected
            if (adv := self._next_adverts.get(m)) is not None and adv.round == round
        }
        self._next_adverts = {}
        self._reset_round()
        self.round, self._last_round = round, round
        self.result, self.abandon_reason = None, None
        self._params = params
        self._graph = neighbor_graph(selected, k, seed)
        self._min_live = max(t, cfg.min_survivors)
        self._open(Stage.ADVERTISE, frozenset(selected), now)
        # Meters that advertised ahead are in already: when all did, the stage is
        # complete at once and the transport moves on to sharing.
        self._adverts = ahead
        v, s, r, st, sig = self._request_fields(Stage.ADVERTISE)
        request = AdvertiseRequest(
            v=v, session=s, round=r, stage=st, sig=sig, params=params, ready=sorted(ahead)
        )
        return Outbox(broadcast=sign(request, self._key))

    def _open(self, stage: Stage, expected: frozenset[int], now: float) -> None:
        self.state = _STAGE_STATE[stage]
        self._expected = expected
        self.deadline = now + self.config.stage_timeout_s

    def _abandon(self, reason: str) -> Outbox:
        log.warning("secagg round %s abandoned: %s", self.round, reason)
        self.state = RoundState.ABANDONED
        self.abandon_reason = reason
        self.deadline = None
        self._expected = frozenset()
        return Outbox(abandoned=reason)

    # ---- receiving ------------------------------------------------------------------

    def receive(self, msg: SecAggMessage, now: float, *, signatures_checked: bool = False) -> None:
        """Accept one meter message, or log, record and raise :class:`ProtocolError`.

        Messages arriving after the open stage's deadline (``now > deadline``) are late
        and refused, even before the transport has called :meth:`close_stage`.
        ``signatures_checked`` says that the caller verified every check of
        :meth:`signature_checks`, and a masked input's digest
        (:func:`~gridsim.secagg.messages.check_digest`), in a batch off the event
        loop: they are not repeated; everything else is.
        """
        try:
            if self.deadline is not None and now > self.deadline:
                raise ProtocolError(f"late: arrived at {now}, the stage closed at {self.deadline}")
            self._accept(msg, signatures_checked)
        except ProtocolError as exc:
            self.refuse(msg, str(exc))
            raise

    def refuse(self, msg: SecAggMessage, reason: str) -> None:
        """Log and record ``msg`` as rejected for ``reason`` (:meth:`receive`'s own
        refusals, and a caller's failed batched signature check)."""
        meter = msg.meter if isinstance(msg, MeterMessage) else None
        rejection = Rejection(self.round, meter, type(msg).__name__, reason)
        self.rejected.append(rejection)
        log.warning("secagg: rejected %s from meter %s: %s", rejection.kind, meter, reason)

    def signature_checks(self, msg: SecAggMessage) -> list[tuple[str, tuple[bytes, bytes, bytes]]]:
        """The Ed25519 checks :meth:`receive` makes of ``msg`` (each with what its
        failure means), for a caller that verifies them in a batch first. Empty when
        the sender is not enrolled: :meth:`receive` refuses it anyway.
        """
        key = self._enrolled.get(msg.meter) if isinstance(msg, MeterMessage) else None
        if key is None:
            return []
        checks = []
        own = signature_check(msg, key)
        if own is not None:
            checks.append((f"bad signature on {type(msg).__name__}", own))
        if isinstance(msg, UnmaskResponse) and msg.next is not None:
            ahead = signature_check(msg.next, key)
            if ahead is not None:
                checks.append(("bad signature on AdvertiseKeys", ahead))
        return checks

    def _accept(self, msg: SecAggMessage, signatures_checked: bool = False) -> None:
        if not isinstance(msg, MeterMessage):
            raise ProtocolError(f"{type(msg).__name__} is not a meter message")
        if msg.session != self.session:
            raise ProtocolError(f"session {msg.session!r}, not {self.session!r}")
        check_stage(msg)
        if self.round is None or msg.round != self.round:
            raise ProtocolError(f"replayed or out-of-round: round {msg.round}, open {self.round}")
        if msg.stage is not self.stage:
            open_stage = "no stage" if self.stage is None else self.stage.name
            raise ProtocolError(f"out of order: {msg.stage.name} message during {open_stage}")
        key = self._enrolled.get(msg.meter)
        if key is None:
            raise ProtocolError(f"meter {msg.meter} is not enrolled")
        if msg.meter not in self._expected:
            raise ProtocolError(f"meter {msg.meter} has no part in this stage")
        if msg.meter in self._received():
            raise ProtocolError(f"duplicate {type(msg).__name__} from meter {msg.meter}")
        if not signatures_checked:
            check_digest(msg)
        ahead = msg.next if isinstance(msg, UnmaskResponse) else None
        if ahead is not None and (ahead.session, ahead.round, ahead.stage, ahead.meter) != (
            self.session,
            self.round + 1,
            Stage.ADVERTISE,
            msg.meter,
        ):
            raise ProtocolError(
                f"meter {msg.meter}'s advertisement ahead is not its own for the next round"
            )
        if not signatures_checked:
            for reason, (raw, data, sig) in self.signature_checks(msg):
                if not signatures.verify(raw, sig, data):
                    raise ProtocolError(reason)
        remember_verified(msg, key)
        if ahead is not None:
            remember_verified(ahead, key)
        if isinstance(msg, AdvertiseKeys):
            self._adverts[msg.meter] = msg
        elif isinstance(msg, ShareKeys):
            self._accept_shares(msg)
        elif isinstance(msg, MaskedInput):
            self._accept_input(msg)
        else:
            self._accept_unmask(msg)

    def _accept_shares(self, msg: ShareKeys) -> None:
        u = msg.meter
        want = {v for v in self._graph[u] if v in self._adverts}
        got = [es.recipient for es in msg.shares]
        if any(es.sender != u for es in msg.shares) or set(got) != want or len(got) != len(want):
            raise ProtocolError(f"meter {u} must send one share to each of its live neighbours")
        self._shares[u] = msg

    def _accept_input(self, msg: MaskedInput) -> None:
        p = self._params
        assert p is not None
        if len(msg.data) != masking.packed_len(p.d, p.bits):
            raise ProtocolError(f"masked input of {len(msg.data)} bytes, expected {p.d} values")
        # _accept has checked the data against its digest.
        try:
            values = masking.unpack(msg.data, p.bits, p.d)
        except GridsimError as exc:
            raise ProtocolError(f"masked input does not unpack: {exc}") from None
        self._inputs[msg.meter] = values
        self._digests[msg.meter] = msg.digest

    def _accept_unmask(self, msg: UnmaskResponse) -> None:
        u = msg.meter
        mine = self._graph[u]
        # The unmasking stage expects exactly the survivors (a set built once).
        survivors, dropped = self._expected, frozenset(self._dropped)
        seed_owners = {r.owner for r in msg.seed_shares}
        key_owners = {r.owner for r in msg.key_shares}
        if len(seed_owners) != len(msg.seed_shares) or len(key_owners) != len(msg.key_shares):
            raise ProtocolError(f"meter {u} repeats a share")
        if not seed_owners <= (mine & survivors) or not key_owners <= (mine & dropped):
            raise ProtocolError(f"meter {u} reveals shares it was not asked for")
        # Its own shares: each the right length and evaluated at x = u + 1 (bytes
        # 5:9, see masking.share_x), compared as bytes, 24 of them per answer.
        x = (u + 1).to_bytes(4, "little")
        for r in (*msg.seed_shares, *msg.key_shares):
            if len(r.share) != masking.SHARE_LEN or r.share[5:9] != x:
                raise ProtocolError(f"meter {u} reveals a share that is not its own")
        self._responses[u] = msg
        if msg.next is not None:
            self._next_adverts[u] = msg.next

    # ---- closing stages -------------------------------------------------------------

    def close_stage(
        self,
        now: float,
        *,
        plaintext: Mapping[int, masking.MaskArray] | None = None,
        gone: Collection[int] = (),
    ) -> Outbox:
        """Close the open stage (at its deadline, or early once every answer is in).

        ``gone``: meters the transport knows will not answer (their connection
        dropped, or they restarted and hold nothing of the round); the stage also
        closes early when it waits for none but them, and they are dropouts.
        ``plaintext`` (simulation only): each meter's quantised input, to check the
        unmasked sum against their plain modular sum (:attr:`SecAggResult.verified`).
        """
        stage = self.stage
        if stage is None:
            raise RoundError(f"no stage is open (round state {self.state.value})")
        assert self.deadline is not None
        if now < self.deadline and not self.only_gone_left(gone):
            raise RoundError(
                f"stage {stage.name} is open until {self.deadline}; "
                f"{len(self.waiting_for)} meters have not answered"
            )
        if stage is Stage.ADVERTISE:
            return self._close_advertise(now)
        if stage is Stage.SHARE:
            return self._close_share(now)
        if stage is Stage.MASKED_INPUT:
            return self._close_masked(now)
        return self._close_unmask(plaintext)

    def _short(self, have: int, what: str) -> Outbox | None:
        if have < self._min_live:
            return self._abandon(f"only {have} meters {what}; at least {self._min_live} needed")
        return None

    def _close_advertise(self, now: float) -> Outbox:
        short = self._short(len(self._adverts), "advertised keys")
        if short:
            return short
        self._open(Stage.SHARE, frozenset(self._adverts), now)
        v, s, r, st, sig = self._request_fields(Stage.SHARE)
        # Each meter gets its own advertisement and its neighbours', not the whole
        # roster: a meter's work stays O(k), not O(n), however many meters take part.
        # One signature for all of them (a batch; see messages.sign_batch).
        meters = sorted(self._adverts)
        requests = []
        for u in meters:
            mine = sorted({u} | {v for v in self._graph[u] if v in self._adverts})
            roster = [self._adverts[m] for m in mine]
            requests.append(ShareRequest(v=v, session=s, round=r, stage=st, sig=sig, roster=roster))
        signed = sign_batch(requests, self._key)
        return Outbox(direct=dict(zip(meters, signed, strict=True)))

    def _close_share(self, now: float) -> Outbox:
        short = self._short(len(self._shares), "shared their secrets")
        if short:
            return short
        inbox: dict[int, list[EncryptedShare]] = {u: [] for u in self._shares}
        for u in sorted(self._shares):
            for es in self._shares[u].shares:
                if es.recipient in inbox:
                    inbox[es.recipient].append(es)
        self._open(Stage.MASKED_INPUT, frozenset(self._shares), now)
        v, s, r, st, sig = self._request_fields(Stage.MASKED_INPUT)
        requests = [
            MaskedInputRequest(
                v=v, session=s, round=r, stage=st, sig=sig, recipient=u, shares=shares
            )
            for u, shares in inbox.items()
        ]
        signed = sign_batch(requests, self._key)
        return Outbox(direct=dict(zip(inbox, signed, strict=True)))

    def _close_masked(self, now: float) -> Outbox:
        short = self._short(len(self._inputs), "sent a masked input")
        if short:
            return short
        self._survivors = tuple(sorted(self._inputs))
        self._dropped = tuple(sorted(set(self._shares) - set(self._inputs)))
        self._open(Stage.UNMASK, frozenset(self._survivors), now)
        v, s, r, st, sig = self._request_fields(Stage.UNMASK)
        request = UnmaskRequest(
            v=v,
            session=s,
            round=r,
            stage=st,
            sig=sig,
            survivors=list(self._survivors),
            dropped=list(self._dropped),
        )
        return Outbox(broadcast=sign(request, self._key))

    def _close_unmask(self, plaintext: Mapping[int, masking.MaskArray] | None) -> Outbox:
        p = self._params
        assert p is not None and self.round is not None
        seed_shares: dict[int, list[bytes]] = {u: [] for u in self._survivors}
        key_shares: dict[int, list[bytes]] = {u: [] for u in self._dropped}
        for resp in self._responses.values():
            for r in resp.seed_shares:
                seed_shares[r.owner].append(r.share)
            for r in resp.key_shares:
                key_shares[r.owner].append(r.share)
        seeds: list[bytes] = []
        signs: list[int] = []
        streams: list[int] = []
        try:
            for u in self._survivors:
                seed = self._recover(u, seed_shares[u], "self-mask seed")
                if seed_commitment(self.session, self.round, u, seed) != (
                    self._adverts[u].seed_commitment
                ):
                    raise RoundError(
                        f"the recovered self-mask seed of meter {u} does not match its commitment"
                    )
                seeds.append(seed)
                signs.append(-1)
                streams.append(masking.self_stream_id(u))
            # A dropped meter's masks with its surviving neighbours: its recovered key
            # agreed with theirs, all in one call to the Rust core.
            sks: list[bytes] = []
            publics: list[bytes] = []
            infos: list[list[bytes]] = []
            peers: list[int] = []
            for u in self._dropped:
                sk = self._recover(u, key_shares[u], "mask key")
                if _core.x25519_public_key(sk) != self._adverts[u].agree_key:
                    raise RoundError(f"the recovered mask key of meter {u} is not the one it sent")
                for v in sorted(self._graph[u] & set(self._survivors)):
                    sks.append(sk)
                    publics.append(self._adverts[v].agree_key)
                    infos.append([pairwise_seed_info(self.session, self.round, u, v)])
                    peers.append(v)
                    signs.append(-1 if v < u else 1)
                    streams.append(masking.pair_stream_id(u, v))
            seeds.extend(keys[0] for keys in derive_pair_keys(sks, publics, infos, peers))
        except (RoundError, ProtocolError) as exc:
            # A degenerate survivor key (honest neighbours refuse one, so only a
            # cheating pair gets here) loses the round, not the aggregator.
            return self._abandon(str(exc))
        dtype = words_dtype(p.bits)
        total = cast(masking.MaskArray, np.zeros(p.d, dtype=dtype))
        for u in self._survivors:
            total += self._inputs[u]  # wraps modulo the word size
        masking.expand_masks(
            total, seeds, signs, self.session.encode(), self.round, streams=streams, bits=p.bits
        )
        decoded = masking.dequantize_sum(total, p.clip, p.bits, p.scale, len(self._survivors))
        verified = None if plaintext is None else self._verify(total, plaintext)
        self.result = SecAggResult(
            round=self.round,
            survivors=self._survivors,
            dropped=self._dropped,
            absent=tuple(sorted(set(p.meters) - set(self._shares))),
            total=total,
            values=decoded.values,
            out_of_range=decoded.out_of_range,
            digests=dict(self._digests),
            verified=verified,
        )
        self.state = RoundState.DONE
        self.deadline = None
        self._expected = frozenset()
        return Outbox(result=self.result)

    def _recover(self, owner: int, shares: list[bytes], what: str) -> bytes:
        p = self._params
        assert p is not None
        if len(shares) < p.threshold:
            raise RoundError(
                f"cannot recover the {what} of meter {owner}: "
                f"{len(shares)} of {p.threshold} shares arrived"
            )
        try:
            return masking.shamir_combine(shares)
        except GridsimError as exc:
            raise RoundError(f"the shares of meter {owner}'s {what} disagree: {exc}") from None

    def _verify(self, total: masking.MaskArray, plaintext: Mapping[int, masking.MaskArray]) -> bool:
        p = self._params
        assert p is not None
        missing = [u for u in self._survivors if u not in plaintext]
        if missing:
            raise InvalidInputError(f"no plaintext input for surviving meters {missing[:5]}")
        expected = np.zeros(p.d, dtype=words_dtype(p.bits))
        for u in self._survivors:
            expected += plaintext[u]
        if p.bits < expected.dtype.itemsize * 8:
            expected &= np.array((1 << p.bits) - 1, dtype=expected.dtype)
        ok = bool(np.array_equal(expected, total))
        if not ok:
            log.error("secagg round %s: unmasked sum differs from the plaintext sum", self.round)
        return ok
