"""The messages of one SecAgg+ round, typed, versioned and signed.

A round has four stages (:class:`Stage`); in each the server sends a request and
every meter still taking part answers:

=================  ==========================  ==============================
stage              server -> meter             meter -> server
=================  ==========================  ==============================
``ADVERTISE``      :class:`AdvertiseRequest`   :class:`AdvertiseKeys`
``SHARE``          :class:`ShareRequest`       :class:`ShareKeys`
``MASKED_INPUT``   :class:`MaskedInputRequest` :class:`MaskedInput`
``UNMASK``         :class:`UnmaskRequest`      :class:`UnmaskResponse`
=================  ==========================  ==============================

Every message names its session, round and stage and carries an Ed25519 signature
(``sig``) over :func:`signed_bytes`: a domain tag naming the signer's role, then the
msgpack encoding of the message with ``sig`` empty. msgspec encodes a struct's
fields in declaration order, so the encoding is canonical. A :class:`MaskedInput`
is signed with ``data`` empty too: its SHA-256 (``digest``) stands for it, and
:func:`verify_signature` checks the data against it first, so signing and
verifying hash a hundred bytes, not the whole masked vector twice over with
SHA-512. Meters sign with their
enrolment key, the server with its own; a signature never verifies as the other
role's or for another message type, round or session.

The server's per-meter requests of a stage (:class:`ShareRequest`,
:class:`MaskedInputRequest`) are signed as one batch (:func:`sign_batch`): the leaves
of an RFC 9162 Merkle tree are the requests' :func:`signed_bytes`, the server signs
the root and the number of leaves once, and each request carries that signature
and its own audit path (:class:`BatchProof`). A meter checks its request's path to
the root, then the root's signature: one signature a stage instead of one per
meter, and in a process that simulates many meters one verification for all.

Shamir shares travel inside :class:`EncryptedShare` ciphertexts (ChaCha20-Poly1305)
that only the sending and receiving meter can open; the server relays them.

Messages are plain data that cannot form reference cycles, so their structs are
not tracked by the garbage collector (``gc=False``): a 500-meter round creates
tens of thousands of them, and tracking them made collections a large share of
a round's CPU.
"""

from __future__ import annotations

import enum
import hashlib
import threading
from typing import Annotated, Final, TypeAlias, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridsim import _core, signatures
from gridsim.exceptions import MessageError, ProtocolError

SECAGG_WIRE_VERSION: Final = 4
MAX_SECAGG_MESSAGE_BYTES: Final = 64 * 1024 * 1024

METER_SIGNATURE_DOMAIN: Final = b"gridsim/secagg/v1/meter-message\x00"
SERVER_SIGNATURE_DOMAIN: Final = b"gridsim/secagg/v1/server-message\x00"
SERVER_BATCH_DOMAIN: Final = b"gridsim/secagg/v1/server-batch\x00"
MAX_BATCH_PATH: Final = 40
"""Hashes in a batch's audit path at most: a tree of up to 2^40 messages."""

MeterId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
RoundNo = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Session = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Signature = Annotated[bytes, msgspec.Meta(max_length=64)]


class Stage(enum.IntEnum):
    """The stages of a round, in order."""

    ADVERTISE = 0
    SHARE = 1
    MASKED_INPUT = 2
    UNMASK = 3


class RoundParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """What every party must agree on for a round (sent by the server, signed).

    ``meters`` are the selected meters, ``graph_seed`` the public seed of the
    neighbour graph of degree ``neighbors`` (already resolved: ``n - 1`` is classic
    SecAgg), ``threshold`` the Shamir threshold. Inputs are ``d`` values quantised
    with ``clip`` and ``scale`` into Z_{2^bits}.
    """

    meters: list[MeterId]
    graph_seed: Key32
    neighbors: Annotated[int, msgspec.Meta(ge=1)]
    threshold: Annotated[int, msgspec.Meta(ge=1)]
    d: Annotated[int, msgspec.Meta(ge=1, le=2**28)]
    bits: Annotated[int, msgspec.Meta(ge=1, le=64)]
    clip: Annotated[float, msgspec.Meta(gt=0.0)]
    scale: Annotated[float, msgspec.Meta(gt=0.0)]


class _Signed(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True, gc=False):
    v: int
    session: Session
    round: RoundNo
    stage: Stage
    sig: Signature

    def __post_init__(self) -> None:
        if self.v != SECAGG_WIRE_VERSION:
            raise ValueError(
                f"unsupported secagg version {self.v} (this side speaks {SECAGG_WIRE_VERSION})"
            )


class _FromMeter(_Signed, frozen=True):
    meter: MeterId


# ---- meters -> server ------------------------------------------------------------
# (AdvertiseKeys comes first because ShareRequest relays it.)


class AdvertiseKeys(_FromMeter, tag="sa.advertise", frozen=True):
    """A meter's fresh X25519 public keys for this round (share encryption, mask agreement).

    ``seed_commitment`` is SHA-256 of the round's self-mask seed (see
    :func:`gridsim.secagg.client.seed_commitment`): the server checks the seed it
    reconstructs against it, so a wrong share cannot silently corrupt the sum.
    """

    enc_key: Key32
    agree_key: Key32
    seed_commitment: Key32


# ---- server -> meters ------------------------------------------------------------


class AdvertiseRequest(_Signed, tag="sa.advertise_req", frozen=True):
    """The server opens a round: its parameters.

    ``ready``: the selected meters whose advertisement for this round the server
    already holds (each sent it ahead, in its last :class:`UnmaskResponse`); they
    take it up and do not answer.
    """

    params: RoundParams
    ready: list[MeterId] = msgspec.field(default_factory=list)


class BatchProof(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """Where a request sits in the batch whose Merkle root the server signed:
    leaf ``index`` of ``size``, its audit path (RFC 9162) and the root."""

    root: Key32
    index: Annotated[int, msgspec.Meta(ge=0, le=2**40)]
    size: Annotated[int, msgspec.Meta(ge=1, le=2**40)]
    path: Annotated[list[Key32], msgspec.Meta(max_length=MAX_BATCH_PATH)]


class ShareRequest(_Signed, tag="sa.share_req", frozen=True):
    """The meters whose keys arrived, each advertisement as its meter signed it."""

    roster: list[AdvertiseKeys]
    batch: BatchProof | None = None


class EncryptedShare(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """Shares of ``sender``'s two secrets for ``recipient``: nonce || ChaCha20-Poly1305."""

    sender: MeterId
    recipient: MeterId
    ciphertext: Annotated[bytes, msgspec.Meta(max_length=1024)]


class MaskedInputRequest(_Signed, tag="sa.masked_req", frozen=True):
    """Addressed to one meter: the shares its neighbours sent it (they shared)."""

    recipient: MeterId
    shares: list[EncryptedShare]
    batch: BatchProof | None = None


class UnmaskRequest(_Signed, tag="sa.unmask_req", frozen=True):
    """Who sent a masked input (``survivors``) and who shared but did not (``dropped``)."""

    survivors: list[MeterId]
    dropped: list[MeterId]


# ---- meters -> server, continued -------------------------------------------------


class ShareKeys(_FromMeter, tag="sa.share", frozen=True):
    """One encrypted share bundle for each neighbour whose keys were advertised."""

    shares: list[EncryptedShare]


MAX_REPORT_BYTES: Final = 4096
"""Largest application report a masked input may carry."""


class MaskedInput(_FromMeter, tag="sa.masked", frozen=True):
    """The masked, quantised input packed at ``bits`` bits, with its SHA-256.

    ``report`` is opaque to secure aggregation: whatever the application sends
    alongside its input (gridsim's meters: their signed round report, with its
    evaluation sums), covered by the message's signature, so it costs no message
    of its own.
    """

    data: bytes
    digest: Key32
    report: Annotated[bytes, msgspec.Meta(max_length=MAX_REPORT_BYTES)] = b""


class RevealedShare(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """A Shamir share (73 bytes, see :mod:`gridsim.secagg.masking`) of ``owner``'s secret."""

    owner: MeterId
    share: Annotated[bytes, msgspec.Meta(min_length=73, max_length=73)]


class UnmaskResponse(_FromMeter, tag="sa.unmask", frozen=True):
    """Shares of surviving neighbours' self-mask seeds and dropped neighbours' keys.

    ``next``: the meter's advertisement for the next round (``round + 1``), signed
    on its own, sent ahead so that round opens without waiting for it.
    """

    seed_shares: list[RevealedShare]
    key_shares: list[RevealedShare]
    next: AdvertiseKeys | None = None


ServerMessage: TypeAlias = AdvertiseRequest | ShareRequest | MaskedInputRequest | UnmaskRequest
MeterMessage: TypeAlias = AdvertiseKeys | ShareKeys | MaskedInput | UnmaskResponse
SecAggMessage: TypeAlias = ServerMessage | MeterMessage

STAGE_OF: Final[dict[type[SecAggMessage], Stage]] = {
    AdvertiseRequest: Stage.ADVERTISE,
    AdvertiseKeys: Stage.ADVERTISE,
    ShareRequest: Stage.SHARE,
    ShareKeys: Stage.SHARE,
    MaskedInputRequest: Stage.MASKED_INPUT,
    MaskedInput: Stage.MASKED_INPUT,
    UnmaskRequest: Stage.UNMASK,
    UnmaskResponse: Stage.UNMASK,
}
"""The stage each message type belongs to."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SecAggMessage)


def encode(msg: SecAggMessage) -> bytes:
    """The wire bytes of a message."""
    return _encoder.encode(msg)


def decode(
    payload: bytes | bytearray, *, max_bytes: int = MAX_SECAGG_MESSAGE_BYTES
) -> SecAggMessage:
    """Parse and validate one message; :class:`MessageError` with the reason if bad."""
    if len(payload) > max_bytes:
        raise MessageError(f"message of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        msg: SecAggMessage = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError(f"malformed secagg message: {exc}") from None
    return msg


def signed_bytes(msg: SecAggMessage) -> bytes:
    """The bytes ``msg``'s signature covers: role domain || msgpack(msg with empty sig).

    For a request signed in a batch, the leaf of the batch's tree (its ``batch``
    left out too); :func:`batch_statement` is what the signature covers.
    """
    domain = METER_SIGNATURE_DOMAIN if isinstance(msg, _FromMeter) else SERVER_SIGNATURE_DOMAIN
    if isinstance(msg, MaskedInput):
        # The digest covers the data (verify_signature checks it).
        return domain + _encoder.encode(msgspec.structs.replace(msg, sig=b"", data=b""))
    if isinstance(msg, _BATCHED_TYPES) and msg.batch is not None:
        return domain + _encoder.encode(msgspec.structs.replace(msg, sig=b"", batch=None))
    return domain + _encoder.encode(msgspec.structs.replace(msg, sig=b""))


def batch_statement(root: bytes, size: int) -> bytes:
    """The bytes the server signs for a batch: domain || root || size (8 bytes LE)."""
    return SERVER_BATCH_DOMAIN + root + size.to_bytes(8, "little")


M = TypeVar(
    "M",
    AdvertiseRequest,
    ShareRequest,
    MaskedInputRequest,
    UnmaskRequest,
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    UnmaskResponse,
)


def sign(msg: M, key: Ed25519PrivateKey) -> M:
    """``msg`` with ``sig`` set to the signer's Ed25519 signature of :func:`signed_bytes`
    (signed on its own: a request's ``batch``, if any, is dropped)."""
    if isinstance(msg, _BATCHED_TYPES) and msg.batch is not None:
        msg = msgspec.structs.replace(msg, batch=None)
    return msgspec.structs.replace(msg, sig=signatures.sign(key, signed_bytes(msg)))


B = TypeVar("B", ShareRequest, MaskedInputRequest)


def sign_batch(msgs: list[B], key: Ed25519PrivateKey) -> list[B]:
    """``msgs`` signed as one batch: one signature of their Merkle root (see the
    module notes), each message with its :class:`BatchProof`."""
    if not msgs:
        return []
    leaves = [signed_bytes(m) for m in msgs]
    root, paths = _core.merkle_root_and_inclusion_proofs(leaves)
    sig = signatures.sign(key, batch_statement(root, len(msgs)))
    return [
        msgspec.structs.replace(
            m, sig=sig, batch=BatchProof(root=root, index=i, size=len(msgs), path=path)
        )
        for i, (m, path) in enumerate(zip(msgs, paths, strict=True))
    ]


VERIFIED_MEMO_SIZE: Final = 16384
"""How many verified messages a process remembers (see :func:`verify_signature`)."""

_MEMO_TYPES: Final = (AdvertiseKeys, AdvertiseRequest, UnmaskRequest)
"""The messages a process checks more than once: a meter's advertisement (by each of
its neighbours, and the server) and the broadcast requests (by every meter). A
batch's root signature is remembered too (every meter of the process checks it)."""

_BATCHED_TYPES: Final = (ShareRequest, MaskedInputRequest)

_verified: dict[tuple[bytes, bytes], SecAggMessage | bytes] = {}
_verified_lock = threading.Lock()

_raw_keys: dict[int, tuple[Ed25519PublicKey, bytes]] = {}
"""Raw bytes of the public keys checked against, by the key object's id (the entry
holds the object, so the id stays its own): a memo lookup needs them, and asking
the key each time (``public_bytes_raw``) cost a third of a lookup's time."""


def _raw(key: Ed25519PublicKey) -> bytes:
    seen = _raw_keys.get(id(key))
    if seen is not None and seen[0] is key:
        return seen[1]
    raw = key.public_bytes_raw()
    if len(_raw_keys) >= VERIFIED_MEMO_SIZE:
        _raw_keys.clear()
    _raw_keys[id(key)] = (key, raw)
    return raw


def verify_signature(msg: SecAggMessage, key: Ed25519PublicKey) -> None:
    """Raise :class:`ProtocolError` unless ``msg.sig`` is ``key``'s signature of it.

    Verification is a pure function of the key, the message and the signature, so
    a process remembers the advertisements and broadcast requests that verified (the
    last :data:`VERIFIED_MEMO_SIZE`, by key and signature): when the meters of one
    process check the same neighbour's advertisement or the same broadcast request,
    only the first pays for the Ed25519 verification; the others find an equal
    message (every field, the signature included) remembered under the same key and
    signature. Failures are never remembered.
    A :class:`MaskedInput` whose data does not hash to its ``digest`` is refused
    before its signature is looked at.
    """
    check_digest(msg)
    pending = signature_check(msg, key)
    if pending is None:
        return
    raw, data, sig = pending
    if not signatures.verify(raw, sig, data):
        raise ProtocolError(f"bad signature on {type(msg).__name__}")
    remember_verified(msg, key)


def check_digest(msg: SecAggMessage) -> None:
    """Raise :class:`ProtocolError` if ``msg`` is a :class:`MaskedInput` whose data
    does not hash to its ``digest`` (which its signature covers instead of the data)."""
    if isinstance(msg, MaskedInput) and hashlib.sha256(msg.data).digest() != msg.digest:
        raise ProtocolError("masked input does not match its SHA-256")


def signature_check(msg: SecAggMessage, key: Ed25519PublicKey) -> tuple[bytes, bytes, bytes] | None:
    """What verifying ``msg``'s signature takes (raw public key, signed bytes,
    signature), or None when it verified already (see :func:`verify_signature`).
    For a request signed in a batch, its audit path is checked here (raising
    :class:`ProtocolError` if it does not lead to the root) and the signed bytes
    are the batch's statement. The digest of a :class:`MaskedInput` is
    :func:`check_digest`'s."""
    raw = _raw(key)
    if isinstance(msg, _MEMO_TYPES):
        return None if _verified.get((raw, msg.sig)) == msg else (raw, signed_bytes(msg), msg.sig)
    if isinstance(msg, _BATCHED_TYPES) and msg.batch is not None:
        b = msg.batch
        leaf = _core.merkle_leaf_hash(signed_bytes(msg))
        if not _core.merkle_verify_inclusion(leaf, b.index, b.size, b.path, b.root):
            raise ProtocolError(
                f"bad signature on {type(msg).__name__}: not in the batch its signature covers"
            )
        statement = batch_statement(b.root, b.size)
        return None if _verified.get((raw, msg.sig)) == statement else (raw, statement, msg.sig)
    return raw, signed_bytes(msg), msg.sig


def remember_verified(msg: SecAggMessage, key: Ed25519PublicKey) -> None:
    """Record that ``msg``'s signature verified under ``key`` (only call it then)."""
    if isinstance(msg, _BATCHED_TYPES) and msg.batch is not None:
        value: SecAggMessage | bytes = batch_statement(msg.batch.root, msg.batch.size)
    elif isinstance(msg, _MEMO_TYPES):
        value = msg
    else:
        return
    with _verified_lock:
        if len(_verified) >= VERIFIED_MEMO_SIZE:
            del _verified[next(iter(_verified))]
        _verified[(_raw(key), msg.sig)] = value


def check_stage(msg: SecAggMessage) -> None:
    """Raise :class:`ProtocolError` when ``msg.stage`` is not its type's stage."""
    if msg.stage != STAGE_OF[type(msg)]:
        raise ProtocolError(
            f"{type(msg).__name__} claims stage {msg.stage!r}, "
            f"belongs to {STAGE_OF[type(msg)].name}"
        )
