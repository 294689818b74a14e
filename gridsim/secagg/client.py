"""The meter's side of SecAgg+, a state machine with no I/O.

A :class:`SecAggClient` answers the four requests of a round, in order, each with
one method that takes the server's message and returns the meter's reply::

    keys    = client.advertise(advertise_request)        # AdvertiseKeys
    shares  = client.share_keys(share_request)           # ShareKeys
    masked  = client.masked_input(masked_request, x)     # MaskedInput (x: floats)
    reveal  = client.unmask(unmask_request)              # UnmaskResponse

A method that cannot accept its message raises :class:`ProtocolError` with the
reason and leaves the client as it was, so a forged or replayed message cannot
derail a round; forged, replayed and out-of-order requests are also logged (logger
``gridsim.secagg.client``), and the transport drops them. Every request must carry the
server's signature, this client's session, the round opened by the last accepted
:class:`AdvertiseRequest` and the stage the client is waiting for. A new
:class:`AdvertiseRequest` with a higher round number starts a new round at any
point (the server abandoned the old one); one with a round number not above the
last is a replay.

Cryptography, per round (Bonawitz et al. 2017, Bell et al. 2020): two fresh X25519
key pairs, one whose agreement key derives the pairwise mask seeds (HKDF-SHA256 with
:func:`pairwise_seed_info`), one whose agreement key derives the per-direction
ChaCha20-Poly1305 keys that encrypt Shamir shares (:func:`share_key_info`); a fresh
32-byte self-mask seed. The self-mask seed and the mask-agreement private key are
each Shamir-shared among the meter's neighbours with the round's threshold. A
meter's sharing stage (the sharings, its key agreements and the encryption of
every neighbour's shares) is one call to the Rust core, and so is the preparation
of its masked input (the shares it receives checked and decrypted, its masks
summed); :func:`derive_pair_keys` is the key schedule alone, for the server.

Advertising ahead: with its unmasking response a meter sends the advertisement of
fresh keys for the next round (``UnmaskResponse.next``, signed on its own and bound
to that round). The server lists the meters whose advertisement it holds as
``ready`` in the next :class:`AdvertiseRequest`; they take up those keys and do not
answer, so a round whose meters all took part in the last one opens at sharing. A
meter never advertises two sets of keys for one round: one the server did not list
as ready answers with the keys it sent ahead, and one listed as ready that holds no
such keys (it restarted) refuses the round and advertises afresh in the next.

The client answers one unmasking request per round and refuses any that names a
meter as both surviving and dropped, names a neighbour that never sent it shares or
leaves one out, or leaves fewer than ``t`` survivors: for each neighbour it reveals
the share of the self-mask seed (survivor) or of the key (dropped), never both.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import struct
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, NamedTuple, TypeVar, cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridsim import _core
from gridsim.exceptions import GridsimError, ProtocolError
from gridsim.secagg import masking
from gridsim.secagg.graph import min_degree, neighbor_graph, resolve_degree, threshold_for
from gridsim.secagg.messages import (
    SECAGG_WIRE_VERSION,
    STAGE_OF,
    AdvertiseKeys,
    AdvertiseRequest,
    EncryptedShare,
    MaskedInput,
    MaskedInputRequest,
    RevealedShare,
    RoundParams,
    SecAggMessage,
    ServerMessage,
    ShareKeys,
    ShareRequest,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    check_stage,
    sign,
    verify_signature,
)

log = logging.getLogger(__name__)

PAIRWISE_SEED_INFO: Final = b"gridsim/secagg/v1/pairwise-mask-seed\x00"
SHARE_KEY_INFO: Final = b"gridsim/secagg/v1/share-encryption-key\x00"
SHARE_AD: Final = b"gridsim/secagg/v1/share\x00"
SEED_COMMITMENT_DOMAIN: Final = b"gridsim/secagg/v1/self-mask-seed-commitment\x00"
NONCE_LEN: Final = 12


@functools.lru_cache(maxsize=64)
def _context(session: str, round: int) -> bytes:
    s = session.encode()
    return len(s).to_bytes(4, "little") + s + round.to_bytes(8, "little")


_IDS: Final = struct.Struct("<II")
"""Two meter ids, as the labels below end: 4 bytes each, little-endian."""


class _Labels(NamedTuple):
    """The prefixes of one round's HKDF infos and AEAD associated data: each a
    domain tag and the round's context (:func:`_context`). A pair's label is a
    prefix and two meter ids (:data:`_IDS`): :func:`pairwise_seed_info`,
    :func:`share_key_info` and :func:`share_ad` build them one at a time, and the
    Rust core (``secagg_share``, ``secagg_prepare``) a meter's all at once."""

    seed_prefix: bytes
    key_prefix: bytes
    ad_prefix: bytes


@functools.lru_cache(maxsize=64)
def _labels(session: str, round: int) -> _Labels:
    ctx = _context(session, round)
    return _Labels(PAIRWISE_SEED_INFO + ctx, SHARE_KEY_INFO + ctx, SHARE_AD + ctx)


def pairwise_seed_info(session: str, round: int, a: int, b: int) -> bytes:
    """HKDF ``info`` of the mask seed of meters ``a`` and ``b`` (the unordered pair)."""
    return _labels(session, round).seed_prefix + _IDS.pack(min(a, b), max(a, b))


def derive_pair_keys(
    secrets: list[bytes], publics: list[bytes], infos: list[list[bytes]], peers: list[int]
) -> list[list[bytes]]:
    """X25519 of each ``secrets[i]`` and ``publics[i]``, stretched by HKDF-SHA256 into
    one key per string of ``infos[i]``, in one call to the Rust core (GIL released).

    The agreement is RFC 7748's X25519 and the HKDF has no salt (``tests/secagg/
    reference.py`` derives the same keys with OpenSSL); a low-order public key (an
    all-zero agreement) raises :class:`ProtocolError` naming ``peers[i]``.
    """
    derived = _core.x25519_derive(secrets, publics, infos)
    for peer, keys in zip(peers, derived, strict=True):
        if keys is None:
            raise ProtocolError(f"meter {peer} advertised a degenerate X25519 key")
    return cast(list[list[bytes]], derived)


def share_key_info(session: str, round: int, sender: int, recipient: int) -> bytes:
    """HKDF ``info`` of the key of shares sent from ``sender`` to ``recipient``."""
    return _labels(session, round).key_prefix + _IDS.pack(sender, recipient)


def share_ad(session: str, round: int, sender: int, recipient: int) -> bytes:
    """Associated data of a share ciphertext: who sent it to whom, in which round."""
    return _labels(session, round).ad_prefix + _IDS.pack(sender, recipient)


def seed_commitment(session: str, round: int, meter: int, seed: bytes) -> bytes:
    """SHA-256 commitment to ``meter``'s self-mask seed of a round (hiding: the seed is random)."""
    return hashlib.sha256(
        SEED_COMMITMENT_DOMAIN + _context(session, round) + meter.to_bytes(4, "little") + seed
    ).digest()


_RoundView = tuple[Mapping[int, frozenset[int]], frozenset[int], frozenset[int]]
_UnmaskView = tuple[frozenset[int], frozenset[int], frozenset[int]]

_R = TypeVar("_R", AdvertiseRequest, UnmaskRequest)
_Reply = TypeVar("_Reply", AdvertiseKeys, ShareKeys, MaskedInput, UnmaskResponse)
_V = TypeVar("_V")

_views: dict[bytes, tuple[ServerMessage, object]] = {}
"""What the last few broadcast requests checked in this process gave, by signature
(see _per_request). Only the event loop's thread touches it: :meth:`SecAggClient.
advertise` and :meth:`SecAggClient.unmask` are never offloaded to a worker thread
(the agents call them as they read the request)."""


def _per_request(request: _R, compute: Callable[[_R], _V]) -> _V:
    """``compute(request)``, once per process and request.

    A broadcast request names every meter of the round and every meter of a process
    gets the same one: work that grows with its size is done once, not by each
    meter (O(n) per meter would be O(n^2) per round). An equal request, the
    signature included, finds the first result; a failure is not remembered.
    """
    seen = _views.get(request.sig)
    if seen is not None and seen[0] == request:
        return cast(_V, seen[1])
    view = compute(request)
    if len(_views) >= 8:
        del _views[next(iter(_views))]
    _views[request.sig] = (request, view)
    return view


def _round_view(request: AdvertiseRequest) -> _RoundView:
    """Check a round opening's parameters and return its graph, selected meters and
    meters ready; raise :class:`ProtocolError` for parameters that weaken privacy
    (once per process and opening: see _per_request)."""
    return _per_request(request, _check_round)


def _check_round(request: AdvertiseRequest) -> _RoundView:
    p = request.params
    n = len(p.meters)
    selected = frozenset(p.meters)
    if len(selected) != n or not 1 <= p.neighbors <= n - 1:
        raise ProtocolError("round parameters: repeated meters or impossible degree")
    if resolve_degree(n, p.neighbors) != p.neighbors or p.neighbors < min_degree(n):
        raise ProtocolError(
            f"degree {p.neighbors} is not an even degree of at least {min_degree(n)} "
            f"or every pair, for {n} meters"
        )
    if not threshold_for(p.neighbors) <= p.threshold <= p.neighbors:
        raise ProtocolError(
            f"threshold {p.threshold} is not a majority of {p.neighbors} neighbours"
        )
    return neighbor_graph(p.meters, p.neighbors, p.graph_seed), selected, frozenset(request.ready)


def _unmask_view(request: UnmaskRequest) -> _UnmaskView:
    """An unmasking request's survivors, dropped meters and both together; raise
    :class:`ProtocolError` if it repeats a meter or names one as both (once per
    process and request: see _per_request)."""
    return _per_request(request, _check_unmask)


def _check_unmask(request: UnmaskRequest) -> _UnmaskView:
    survivors, dropped = frozenset(request.survivors), frozenset(request.dropped)
    if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
        raise ProtocolError("unmasking request repeats a meter")
    both = survivors & dropped
    if both:
        raise ProtocolError(
            f"unmasking request names meter {min(both)} as both surviving and dropped"
        )
    return survivors, dropped, survivors | dropped


Report = Callable[[bytes, int], bytes]
"""Builds a masked input's report from its SHA-256 and its count of clipped values."""


def words_dtype(bits: int) -> type[np.uint32] | type[np.uint64]:
    """The accumulator word of a modulus of ``bits`` bits."""
    return np.uint32 if bits <= 32 else np.uint64


class SecAggClient:
    """One meter in SecAgg+ rounds of one session (see the module documentation).

    ``signing_key`` is the meter's Ed25519 enrolment key, ``server_key`` the
    server's public key, ``peer_keys`` the enrolment public keys of the other
    meters (at least of every possible neighbour), used to check that the server
    relayed their key advertisements unchanged. ``random_bytes`` is the source of
    all key material and seeds; leave it at :func:`secrets.token_bytes` except in
    reproducible tests.
    """

    def __init__(
        self,
        meter: int,
        signing_key: Ed25519PrivateKey,
        server_key: Ed25519PublicKey,
        peer_keys: Mapping[int, Ed25519PublicKey],
        *,
        session: str,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.meter = meter
        self.session = session
        self._signing_key = signing_key
        self._server_key = server_key
        self._peer_keys = peer_keys
        self._random_bytes = random_bytes
        self._last_round = -1
        self._expect: Stage | None = None
        self._params: RoundParams | None = None
        self._neighbors: frozenset[int] = frozenset()
        self._enc_sk = b""  # this round's X25519 secrets (share keys, mask seeds)
        self._agree_sk = b""
        self._self_seed = b""
        self._advert: AdvertiseKeys | None = None
        # Keys for the next round, advertised ahead in the last unmasking response:
        # (their advertisement, the 96 secret bytes); see unmask.
        self._pending: tuple[AdvertiseKeys, bytes] | None = None
        # Keys for the next round made ahead of the unmasking response that sends
        # them (see prepare_next_keys); never sent until then.
        self._next: tuple[AdvertiseKeys, bytes] | None = None
        self._inbound_keys: dict[int, bytes] = {}
        self._pair_seeds: dict[int, bytes] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}
        # The masked-input request already prepared for (its signature), the shares it
        # carried and this meter's summed masks; see prepare_masked_input.
        self._prepared: tuple[bytes, dict[int, tuple[bytes, bytes]], masking.MaskArray] | None = (
            None
        )
        self._verified_request: ServerMessage | None = None  # the last request verified
        # The unmasking answer for a round in which no neighbour dropped, built and
        # signed ahead (see prepare_unmask_answer), with the held shares it reveals.
        self._answer_ahead: tuple[dict[int, tuple[bytes, bytes]], UnmaskResponse] | None = None
        self.quantized: masking.MaskArray | None = None
        """This round's quantised input (for ``--verify`` in simulation)."""
        self.saturated = 0
        """How many inputs this round's quantisation clipped."""

    # ---- state ----------------------------------------------------------------------

    @property
    def round(self) -> int | None:
        """The round in progress (or last finished), None before the first."""
        return self._last_round if self._last_round >= 0 else None

    @property
    def expecting(self) -> Stage | None:
        """The stage whose request the client waits for; None when the round is over."""
        return self._expect

    @property
    def neighbors(self) -> frozenset[int]:
        """This round's neighbours in the SecAgg+ graph."""
        return self._neighbors

    @property
    def params(self) -> RoundParams:
        if self._params is None:
            raise ProtocolError("no round in progress")
        return self._params

    def _check(self, msg: ServerMessage, expected: type[ServerMessage], stage: Stage) -> None:
        try:
            self._check_envelope(msg, expected, stage)
        except ProtocolError as exc:
            log.warning("secagg meter %s: rejected %s: %s", self.meter, type(msg).__name__, exc)
            raise

    def _check_envelope(
        self, msg: ServerMessage, expected: type[ServerMessage], stage: Stage
    ) -> None:
        if not isinstance(msg, expected):
            raise ProtocolError(
                f"out of order: got {type(msg).__name__}, waiting for {expected.__name__}"
            )
        if msg.session != self.session:
            raise ProtocolError(f"message of session {msg.session!r}, not {self.session!r}")
        check_stage(msg)
        if stage is not Stage.ADVERTISE:
            if msg.round != self._last_round:
                raise ProtocolError(
                    f"replayed or out-of-round: round {msg.round}, current {self._last_round}"
                )
            if self._expect is not stage:
                now = "no stage" if self._expect is None else self._expect.name
                raise ProtocolError(f"out of order: {stage.name} request while waiting for {now}")
        elif msg.round <= self._last_round:
            raise ProtocolError(
                f"replayed round: round {msg.round} not after round {self._last_round}"
            )
        # The masked-input request is checked when the meter prepares its masks and
        # again when it sends its input: the second time it equals (every field, the
        # signature included) the request already verified.
        if msg != self._verified_request:
            verify_signature(msg, self._server_key)
            self._verified_request = msg

    def answered(self, msg: SecAggMessage) -> bool:
        """Whether ``msg`` is a genuine request of this round's that the client has
        answered already: the server asks again after a reconnect (its own, or the
        meter's) when the answer may have been lost. Its session and round are the
        current ones, its stage is behind the one awaited, and the server's
        signature verifies; anything else, a forged copy included, is False, and
        the request takes the usual path (where it is refused and logged).
        """
        if (
            not isinstance(msg, (ShareRequest, MaskedInputRequest, UnmaskRequest))
            or self._last_round < 0
            or msg.session != self.session
            or msg.round != self._last_round
        ):
            return False
        if self._expect is not None and msg.stage >= self._expect:
            return False
        try:
            check_stage(msg)
            if msg != self._verified_request:
                verify_signature(msg, self._server_key)
        except ProtocolError:
            return False
        return True

    # ---- stage 0: advertise keys ------------------------------------------------------

    def advertise(self, request: AdvertiseRequest) -> AdvertiseKeys | None:
        """Start the round ``request`` opens: fresh keys and self-mask seed, signed public keys.

        Keys already advertised for this round (in the last unmasking response) are
        used, not replaced; None when ``request`` lists this meter as ``ready`` (the
        server holds that advertisement, nothing to send).
        """
        self._check(request, AdvertiseRequest, Stage.ADVERTISE)
        p = request.params
        graph, selected, ready_ones = _round_view(request)
        if self.meter not in selected:
            raise ProtocolError(f"meter {self.meter} is not selected in round {request.round}")
        pending = self._pending
        ready = self.meter in ready_ones
        if pending is not None and pending[0].round == request.round:
            advert, fresh = pending  # sent ahead: the same keys, never a second set
        elif ready:
            raise ProtocolError(
                f"the server holds an advertisement of this meter for round {request.round}, "
                "but this meter sent none"
            )
        else:
            advert, fresh = self._new_keys(request.round)
        self._pending = self._next = None
        enc_sk, agree_sk, self_seed = fresh[:32], fresh[32:64], fresh[64:]
        self._last_round = request.round
        self._params = p
        self._neighbors = graph[self.meter]
        self._enc_sk, self._agree_sk, self._self_seed = enc_sk, agree_sk, self_seed
        self._pair_seeds, self._held, self._inbound_keys = {}, {}, {}
        self._prepared = self._answer_ahead = None
        self.quantized, self.saturated = None, 0
        self._expect = Stage.SHARE
        self._advert = advert
        return None if ready else advert

    def _new_keys(self, round: int) -> tuple[AdvertiseKeys, bytes]:
        """Fresh key pairs and self-mask seed for ``round``, and their signed advertisement."""
        fresh = self._random_bytes(64 + masking.SEED_LEN)
        advert = self._signed(
            AdvertiseKeys,
            round,
            enc_key=_core.x25519_public_key(fresh[:32]),
            agree_key=_core.x25519_public_key(fresh[32:64]),
            seed_commitment=seed_commitment(self.session, round, self.meter, fresh[64:]),
        )
        return advert, fresh

    def _signed(self, kind: type[_Reply], round: int, **fields: Any) -> _Reply:
        """This meter's message of ``kind`` (in that kind's stage) for ``round``, signed."""
        msg = kind(
            v=SECAGG_WIRE_VERSION,
            session=self.session,
            round=round,
            stage=STAGE_OF[kind],
            sig=b"",
            meter=self.meter,
            **fields,
        )
        return sign(msg, self._signing_key)

    # ---- stage 1: share keys ----------------------------------------------------------

    def share_keys(self, request: ShareRequest) -> ShareKeys:
        """Shamir-share the self-mask seed and mask key among the neighbours that advertised."""
        self._check(request, ShareRequest, Stage.SHARE)
        p = self.params
        adverts: dict[int, AdvertiseKeys] = {}
        for adv in request.roster:
            if adv.meter in adverts:
                raise ProtocolError(f"roster lists meter {adv.meter} twice")
            adverts[adv.meter] = adv
        if adverts.get(self.meter) != self._advert:
            raise ProtocolError("roster does not carry this meter's advertisement unchanged")
        live = sorted(v for v in self._neighbors if v in adverts)
        this_round = (self.session, self._last_round, Stage.ADVERTISE)
        for v in live:
            adv = adverts[v]
            if (adv.session, adv.round, adv.stage) != this_round:
                raise ProtocolError(f"advertisement of meter {v} is not for this round")
            enrolment = self._peer_keys.get(v)
            if enrolment is None:
                raise ProtocolError(f"meter {v} is not enrolled")
            verify_signature(adv, enrolment)
        if len(live) < p.threshold:
            raise ProtocolError(
                f"only {len(live)} neighbours advertised keys, threshold is {p.threshold}"
            )
        # One draw for the round's Shamir coefficients and nonces: each draw is a
        # system call, and under a busy GIL every call costs a hand-over.
        fresh = self._random_bytes(64 + NONCE_LEN * len(live))
        # In one call to the Rust core (GIL released): the self-mask seed and the
        # mask key Shamir-shared at x = id + 1 (coefficients from ChaCha20 seeded by
        # fresh[:32] and fresh[32:64]); with each neighbour, the pairwise mask seed
        # and from one share-key agreement the keys of both directions (this meter's
        # shares for v, v's shares for this meter), labelled as _Labels says; each
        # neighbour's two shares sealed under the next 12 bytes of fresh as nonce. A
        # degenerate advertised key raises ProtocolError naming its owner.
        u = self.meter
        labels = _labels(self.session, self._last_round)
        seeds, inbound, sealed = _core.secagg_share(
            u,
            p.threshold,
            labels.seed_prefix,
            labels.key_prefix,
            labels.ad_prefix,
            self._enc_sk,
            self._agree_sk,
            self._self_seed,
            live,
            [adverts[v].enc_key for v in live],
            [adverts[v].agree_key for v in live],
            fresh,
        )
        out = [
            EncryptedShare(sender=u, recipient=v, ciphertext=ct)
            for v, ct in zip(live, sealed, strict=True)
        ]
        pair_seeds = dict(zip(live, seeds, strict=True))
        inbound_keys = dict(zip(live, inbound, strict=True))
        self._pair_seeds, self._inbound_keys = pair_seeds, inbound_keys
        self._expect = Stage.MASKED_INPUT
        return self._signed(ShareKeys, self._last_round, shares=out)

    # ---- stage 2: masked input --------------------------------------------------------

    def masked_input(
        self, request: MaskedInputRequest, x: npt.ArrayLike, report: Report | None = None
    ) -> MaskedInput:
        """Quantise ``x`` with the round's clip, scale and bits, then mask and send it.

        The clipped-value count is kept in :attr:`saturated`. ``report``, if given,
        is called with the masked input's SHA-256 and the clipped-value count; what
        it returns travels in :attr:`MaskedInput.report`.
        """
        self._check(request, MaskedInputRequest, Stage.MASKED_INPUT)
        p = self.params
        try:
            q = masking.quantize(x, p.clip, p.bits, p.scale)
        except GridsimError as exc:
            raise ProtocolError(f"cannot quantise the input: {exc}") from None
        if q.values.shape != (p.d,):
            raise ProtocolError(f"input has {q.values.shape[0]} values, the round sums {p.d}")
        return self._masked(request, q.values, q.saturated, report)

    def masked_input_quantized(
        self, request: MaskedInputRequest, values: masking.MaskArray, report: Report | None = None
    ) -> MaskedInput:
        """Mask and send an input already quantised into Z_{2^bits} (``d`` words)."""
        self._check(request, MaskedInputRequest, Stage.MASKED_INPUT)
        p = self.params
        dtype = words_dtype(p.bits)
        if values.dtype != dtype or values.shape != (p.d,):
            raise ProtocolError(f"input must be {p.d} values of {np.dtype(dtype).name}")
        if p.bits < 64 and int(values.max(initial=0)) >> p.bits:
            raise ProtocolError(f"input values must be below 2**{p.bits}")
        return self._masked(request, values, 0, report)

    def prepare_masked_input(self, request: MaskedInputRequest) -> None:
        """Check and decrypt the shares ``request`` relays and expand this meter's masks.

        None of it depends on the input: a meter calls this when the request arrives,
        while it is still training, so that masking its input afterwards is one
        addition. Raises :class:`ProtocolError` (and keeps nothing) when a share is
        forged, repeated, for another meter or round, or too few neighbours shared.
        Calling it again for the same request does nothing; the masked-input methods
        call it themselves when it has not run.
        """
        self._check(request, MaskedInputRequest, Stage.MASKED_INPUT)
        if self._prepared is not None and self._prepared[0] == request.sig:
            return
        p = self.params
        if request.recipient != self.meter:
            raise ProtocolError(f"masked-input request addressed to meter {request.recipient}")
        # In one call to the Rust core (GIL released), with the checks in this
        # order: each share comes from a distinct neighbour, to this meter, long
        # enough to be a ciphertext; it authenticates under the key agreed with its
        # sender and the associated data naming both (share_ad); both shares inside
        # have the round's threshold and this meter's x; at least threshold
        # neighbours shared. Then the masks: the self mask plus one pairwise mask
        # per neighbour that shared (added when this meter has the lower id,
        # subtracted otherwise), summed modulo 2^bits. A refusal raises
        # ProtocolError naming the first offending sender.
        shares = request.shares
        ids = list(self._inbound_keys)
        held_ids, seed_shares, key_shares, mask = _core.secagg_prepare(
            self.meter,
            p.threshold,
            _labels(self.session, self._last_round).ad_prefix,
            ids,
            list(self._inbound_keys.values()),
            [self._pair_seeds[v] for v in ids],
            [es.sender for es in shares],
            [es.recipient for es in shares],
            [es.ciphertext for es in shares],
            self._self_seed,
            self.session.encode(),
            self._last_round,
            p.d,
            p.bits,
        )
        held = dict(zip(held_ids, zip(seed_shares, key_shares, strict=True), strict=True))
        self._prepared = (request.sig, held, mask)

    def _masked(
        self,
        request: MaskedInputRequest,
        values: masking.MaskArray,
        saturated: int,
        report: Report | None,
    ) -> MaskedInput:
        p = self.params
        self.prepare_masked_input(request)
        assert self._prepared is not None
        _, held, mask = self._prepared
        acc = cast(masking.MaskArray, values + mask)  # wraps modulo the word size
        if p.bits < acc.dtype.itemsize * 8:
            acc &= acc.dtype.type((1 << p.bits) - 1)
        data = masking.pack(acc, p.bits)
        digest = hashlib.sha256(data).digest()
        extra = b"" if report is None else report(digest, saturated)
        self._held, self._prepared = held, None
        self.saturated = saturated
        self.quantized = cast(masking.MaskArray, np.array(values, copy=True))
        self._expect = Stage.UNMASK
        return self._signed(MaskedInput, self._last_round, data=data, digest=digest, report=extra)

    def prepare_next_keys(self) -> AdvertiseKeys | None:
        """Make the keys the unmasking response will send ahead for the next round,
        and return their advertisement (None outside a round).

        Optional: :meth:`unmask` makes them itself otherwise. A meter calls this while
        it trains, so that its answer to the unmasking request, which the whole
        round waits for, need not generate keys (two X25519 key pairs and a
        signature, 40 us). They stay here, unsent, until that answer; a round that
        ends without one throws them away.
        """
        if self._expect is None:
            return None
        if self._next is None:
            self._next = self._new_keys(self._last_round + 1)
        return self._next[0]

    def prepare_unmask_answer(self) -> None:
        """Build and sign, before the unmasking request, the answer for a round in
        which every neighbour that shared this meter its secrets also sent its
        masked input: the self-mask-seed share of each, and the next round's keys
        (made here if :meth:`prepare_next_keys` has not made them).

        Optional, once the masked input is prepared for (or sent): a meter calls it
        while it trains, so that its answer to the request the whole round waits
        for is a lookup and its signature is already made. Nothing leaves the
        meter until :meth:`unmask` accepts a request that names all of those
        neighbours as survivors; any other request gets an answer built then.
        """
        held = self._prepared[1] if self._prepared is not None else self._held
        if self._expect is None or not held:
            return
        if self._answer_ahead is not None and self._answer_ahead[0] is held:
            return
        ahead = self.prepare_next_keys()
        assert ahead is not None
        self._answer_ahead = (held, self._unmask_answer(held, set(), ahead))

    def _unmask_answer(
        self,
        held: Mapping[int, tuple[bytes, bytes]],
        dropped: Collection[int],
        ahead: AdvertiseKeys,
    ) -> UnmaskResponse:
        """The signed answer revealing, for each neighbour in ``held``, its key share
        if it is in ``dropped`` and its self-mask-seed share otherwise."""
        seed_shares: list[RevealedShare] = []
        key_shares: list[RevealedShare] = []
        for v, (s_share, k_share) in sorted(held.items()):
            if v in dropped:
                key_shares.append(RevealedShare(owner=v, share=k_share))
            else:
                seed_shares.append(RevealedShare(owner=v, share=s_share))
        return self._signed(
            UnmaskResponse,
            self._last_round,
            seed_shares=seed_shares,
            key_shares=key_shares,
            next=ahead,
        )

    # ---- stage 3: unmask --------------------------------------------------------------

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal, per neighbour, the self-mask-seed share (survivor) or key share (dropped)."""
        self._check(request, UnmaskRequest, Stage.UNMASK)
        p = self.params
        survivors, dropped, named = _unmask_view(request)
        if self.meter not in survivors:
            raise ProtocolError("unmasking request does not count this meter as surviving")
        if len(survivors) < p.threshold:
            raise ProtocolError(
                f"only {len(survivors)} survivors, fewer than the threshold {p.threshold}"
            )
        held = self._held
        for v in sorted(self._neighbors & named):
            if v not in held:
                raise ProtocolError(f"unmasking request names meter {v}, which did not share")
        for v in held:
            if v not in named:
                raise ProtocolError(f"unmasking request leaves out neighbour {v}")
        # The next round's keys go out now, so that round need not wait for them.
        # (Made while training, if the meter did: advertise drops older ones.)
        ahead = self._next if self._next is not None else self._new_keys(self._last_round + 1)
        built = self._answer_ahead
        if (
            built is not None
            and built[0] is held
            and built[1].next is ahead[0]
            and (survivors.issuperset(held))
        ):
            reply = built[1]  # every neighbour that shared survived: built while training
        else:
            reply = self._unmask_answer(held, dropped, ahead[0])
        self._expect = None
        self._held, self._answer_ahead = {}, None
        self._self_seed = self._agree_sk = self._enc_sk = b""
        self._pending, self._next = ahead, None
        return reply
