"""The entries of the audit ledger: typed, versioned, validated on decode.

An entry's bytes are ``type tag (1 byte) || version (1 byte) || msgpack body``;
those bytes are the Merkle leaf. In ``entries.log`` each entry is preceded by its
length as a 4-byte big-endian integer.

The encoding is canonical (struct fields in declaration order, dict keys sorted)
and :func:`decode_entry` re-encodes what it decoded and rejects anything that does
not come back byte for byte, so one entry has exactly one leaf hash.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Annotated, Any, ClassVar, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridsim import signatures
from gridsim.exceptions import IntegrityError, MessageError

MAX_ENTRY_BYTES: Final = 16 * 1024 * 1024
"""The largest entry accepted, tag and version included."""

LENGTH_PREFIX: Final = struct.Struct(">I")

MeterId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
RoundNo = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Session = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Sha256 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Ed25519Signature = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
ParamKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ParamValue = str | int | float | bool | None
Params = dict[ParamKey, ParamValue]

CONTRIBUTION_DOMAIN: Final = b"gridsim/ledger/meter-contribution/v1\x00"
"""Prefix of the message a meter signs, so the signature means nothing elsewhere."""


class MeterContribution(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A meter's commitment to the masked input it sent in one round.

    ``payload_sha256`` is SHA-256 of the masked payload as sent; ``signature`` is the
    meter's Ed25519 signature over :meth:`signed_message`.
    """

    session: Session
    round: RoundNo
    meter: MeterId
    payload_sha256: Sha256
    signature: Ed25519Signature

    TAG: ClassVar[int] = 0x01
    VERSION: ClassVar[int] = 1

    @staticmethod
    def message(session: str, round: int, meter: int, payload_sha256: bytes) -> bytes:
        """The domain-separated bytes a meter signs for this contribution."""
        encoded_session = session.encode()
        return (
            CONTRIBUTION_DOMAIN
            + struct.pack(">B", len(encoded_session))
            + encoded_session
            + struct.pack(">II", round, meter)
            + payload_sha256
        )

    @classmethod
    def sign(
        cls,
        key: Ed25519PrivateKey,
        *,
        session: str,
        round: int,
        meter: int,
        payload: bytes | None = None,
        payload_sha256: bytes | None = None,
    ) -> MeterContribution:
        """The contribution a meter makes for ``payload`` (or its SHA-256), signed with ``key``."""
        if (payload is None) == (payload_sha256 is None):
            raise MessageError("give exactly one of payload and payload_sha256")
        digest = hashlib.sha256(payload).digest() if payload is not None else payload_sha256
        assert digest is not None
        signature = signatures.sign(key, cls.message(session, round, meter, digest))
        contribution = cls(
            session=session, round=round, meter=meter, payload_sha256=digest, signature=signature
        )
        checked = decode_entry(encode_entry(contribution))  # constraints hold on build too
        assert isinstance(checked, MeterContribution)
        return checked

    def signed_message(self) -> bytes:
        return self.message(self.session, self.round, self.meter, self.payload_sha256)

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Raise :class:`IntegrityError` unless ``public_key`` made :attr:`signature`."""
        if not signatures.verify(public_key, self.signature, self.signed_message()):
            raise IntegrityError(
                f"meter {self.meter} round {self.round}: contribution signature does not verify"
            )


class RoundRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the aggregator did in one round.

    ``secagg`` and ``dp`` hold the secure-aggregation and differential-privacy
    parameters as flat dicts; ``epsilon_spent`` is the privacy spent by the whole
    run up to and including this round (``None`` when DP is off).
    """

    session: Session
    round: RoundNo
    participants: list[MeterId]
    dropouts: list[MeterId]
    secagg: Params
    dp: Params
    epsilon_spent: float | None
    aggregate_sha256: Sha256
    model_sha256: Sha256

    TAG: ClassVar[int] = 0x02
    VERSION: ClassVar[int] = 1


Entry = MeterContribution | RoundRecord

_TYPES: Final[dict[int, type[MeterContribution] | type[RoundRecord]]] = {
    MeterContribution.TAG: MeterContribution,
    RoundRecord.TAG: RoundRecord,
}
_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_DECODERS: Final[dict[int, msgspec.msgpack.Decoder[Any]]] = {
    MeterContribution.TAG: msgspec.msgpack.Decoder(MeterContribution),
    RoundRecord.TAG: msgspec.msgpack.Decoder(RoundRecord),
}


def _check_values(entry: Entry) -> None:
    if isinstance(entry, RoundRecord):
        if len(set(entry.participants)) != len(entry.participants):
            raise MessageError(f"round {entry.round}: a participant is listed twice")
        if len(set(entry.dropouts)) != len(entry.dropouts):
            raise MessageError(f"round {entry.round}: a dropout is listed twice")
        both = set(entry.participants) & set(entry.dropouts)
        if both:
            raise MessageError(
                f"round {entry.round}: meter {min(both)} is both a participant and a dropout"
            )
        eps = entry.epsilon_spent
        if eps is not None and not (math.isfinite(eps) and eps >= 0.0):
            raise MessageError(f"round {entry.round}: epsilon_spent {eps!r} is not finite and >= 0")
        for name, params in (("secagg", entry.secagg), ("dp", entry.dp)):
            for key, value in params.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise MessageError(f"round {entry.round}: {name}[{key!r}] is {value!r}")


def encode_entry(entry: Entry) -> bytes:
    """The canonical bytes of ``entry``: tag, version, msgpack body (the Merkle leaf)."""
    _check_values(entry)
    body = _ENCODER.encode(entry)
    data = bytes((entry.TAG, entry.VERSION)) + body
    if len(data) > MAX_ENTRY_BYTES:
        raise MessageError(f"entry of {len(data)} bytes exceeds the {MAX_ENTRY_BYTES} byte limit")
    return data


def decode_entry(data: bytes) -> Entry:
    """Parse and validate one entry; :class:`MessageError` with a one-line reason if bad."""
    if len(data) > MAX_ENTRY_BYTES:
        raise MessageError(f"entry of {len(data)} bytes exceeds the {MAX_ENTRY_BYTES} byte limit")
    if len(data) < 3:
        raise MessageError(f"entry of {len(data)} bytes is too short")
    tag, version = data[0], data[1]
    kind = _TYPES.get(tag)
    if kind is None:
        raise MessageError(f"unknown entry type 0x{tag:02x}")
    if version != kind.VERSION:
        raise MessageError(
            f"{kind.__name__} version {version} is not supported (this side reads {kind.VERSION})"
        )
    try:
        entry: Entry = _DECODERS[tag].decode(data[2:])
    except msgspec.ValidationError as exc:
        raise MessageError(f"{kind.__name__}: {exc}") from None
    except (msgspec.DecodeError, ValueError) as exc:  # invalid UTF-8 is a ValueError
        raise MessageError(f"{kind.__name__}: malformed msgpack ({exc})") from None
    _check_values(entry)
    if encode_entry(entry) != data:
        raise MessageError(f"{kind.__name__}: not in canonical encoding")
    return entry


def frame(data: bytes) -> bytes:
    """``data`` with its 4-byte big-endian length in front, as stored in ``entries.log``."""
    return LENGTH_PREFIX.pack(len(data)) + data


def read_frames(log: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """Split ``entries.log`` bytes into ``(offset, entry bytes)`` frames.

    Returns the frames and the offset where parsing stopped: ``len(log)`` when the
    log ends on a frame boundary, else the start of an incomplete or oversized frame.
    """
    frames: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(log):
        if offset + LENGTH_PREFIX.size > len(log):
            break
        (length,) = LENGTH_PREFIX.unpack_from(log, offset)
        end = offset + LENGTH_PREFIX.size + length
        if length > MAX_ENTRY_BYTES or end > len(log):
            break
        frames.append((offset, log[offset + LENGTH_PREFIX.size : end]))
        offset = end
    return frames, offset


def describe(entry: Entry) -> str:
    """A short name of ``entry`` for messages, e.g. ``meter 7's contribution to round 3``."""
    if isinstance(entry, MeterContribution):
        return f"meter {entry.meter}'s contribution to round {entry.round}"
    return f"record of round {entry.round}"
