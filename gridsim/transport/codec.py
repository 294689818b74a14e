"""The wire format: versioned, typed msgpack messages, validated on decode.

Every message is a msgspec ``Struct`` tagged with its type and carrying the
wire version ``v``. Decoding checks the size limit before parsing, the schema
while parsing, and value constraints after; anything that fails raises
:class:`~gridsim.exceptions.MessageError` with a one-line reason, so callers can
log and drop it without special cases. Messages hold plain data and never form
reference cycles, so the garbage collector does not track them (``gc=False``).
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
import numpy as np
import numpy.typing as npt

from gridsim.exceptions import MessageError

WIRE_VERSION: Final = 3
# The largest message we accept: a model of a few million float32 parameters.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

MeterId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
RoundNo = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Session = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]
# A fresh id per aggregator start: a restarted aggregator's round 0 is not the old round 0.
RunId = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]


class Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True, gc=False):
    v: int
    session: Session

    def __post_init__(self) -> None:
        if self.v != WIRE_VERSION:
            raise ValueError(f"unsupported wire version {self.v} (this side speaks {WIRE_VERSION})")


class Hello(Message, tag="hello", frozen=True):
    """A meter announces itself (and again after every reconnect)."""

    meter: MeterId
    n_train: Annotated[int, msgspec.Meta(ge=0)]
    # The meter's Ed25519 identity key (raw 32 bytes); the aggregator pins the first
    # key it sees for a meter and checks every later signature against it.
    public_key: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    # A meter that restarted in the middle of a round holds nothing of it (no keys,
    # no shares, no update): it names that round here and sits it out, so the
    # aggregator stops waiting for it at once. -1: none.
    sits_out: Annotated[int, msgspec.Meta(ge=-1)] = -1


class RollCall(Message, tag="rollcall", frozen=True):
    """The aggregator asks every meter to say hello (sent when an aggregator (re)starts)."""

    run: RunId


class TrainPlan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    local_epochs: Annotated[int, msgspec.Meta(ge=1, le=100)]
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=65536)]
    lr: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)]
    clip_norm: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    local_noise: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0


class DDGaussPlan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """How meters encode their update under distributed DP (DDGauss), per round.

    See :class:`gridsim.privacy.ddgauss.DDGaussCodec`: ``padded`` the rotated
    length (a power of two), ``gamma`` the quantisation step, ``l2_bound`` the
    rounded norm bound, ``sigma`` each meter's noise-share stddev (integer
    units), ``bits`` the modulus of the secure sum.
    """

    padded: Annotated[int, msgspec.Meta(ge=1, le=2**26)]
    clip_norm: Annotated[float, msgspec.Meta(gt=0.0)]
    gamma: Annotated[float, msgspec.Meta(gt=0.0)]
    l2_bound: Annotated[float, msgspec.Meta(gt=0.0)]
    sigma: Annotated[float, msgspec.Meta(ge=0.5)]
    bits: Annotated[int, msgspec.Meta(ge=2, le=32)]


class RoundAnnounce(Message, tag="announce", frozen=True):
    """The aggregator opens a round: the global model, who takes part, until when.

    ``train`` False asks only for an evaluation of ``model`` (the final round).
    """

    run: RunId
    round: RoundNo
    train: bool
    selected: list[MeterId]
    deadline_s: Annotated[float, msgspec.Meta(gt=0.0, le=86400.0)]
    plan: TrainPlan
    model: bytes  # float32 little-endian
    # The audit ledger's verifier key (a C2SP vkey line), "" when the run keeps no ledger.
    ledger_key: Annotated[str, msgspec.Meta(max_length=512)]
    # The aggregator's Ed25519 key for secure aggregation (raw 32 bytes); empty when
    # the round is not securely aggregated and updates travel in the clear.
    secagg_key: Annotated[bytes, msgspec.Meta(max_length=32)]
    # Distributed DP: how to encode the update before secure aggregation; None otherwise.
    ddgauss: DDGaussPlan | None = None
    # The round's DP parameters as its ledger record will carry them (None: DP off),
    # so a meter can account the session's spend itself before it takes part.
    dp: dict[str, str | int | float] | None = None
    # A secure round's first SecAgg+ request (the encoded, signed AdvertiseRequest),
    # carried here so that opening the round costs no second message to every meter;
    # empty when the round is not securely aggregated. The meter checks it as it
    # would the request on its own (gridsim.secagg.client.SecAggClient.advertise).
    secagg_open: Annotated[bytes, msgspec.Meta(max_length=MAX_MESSAGE_BYTES)] = b""


class EvalReport(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """Error sums of the announced model on the meter's held-out days (kW units)."""

    sse: NonNegFloat
    sae: NonNegFloat
    count: Annotated[int, msgspec.Meta(ge=0)]
    sum_y: NonNegFloat
    naive_sse: NonNegFloat
    naive_sae: NonNegFloat


class Update(Message, tag="update", frozen=True):
    """A meter's answer to a round: its model delta (empty for evaluation) and eval sums."""

    run: RunId
    round: RoundNo
    meter: MeterId
    n_samples: Annotated[int, msgspec.Meta(ge=0)]
    train_loss: NonNegFloat
    train_s: NonNegFloat
    # float32 little-endian; empty when the round did not train or when the delta
    # went through secure aggregation instead (then only its masked form exists).
    delta: bytes
    eval: EvalReport
    # SHA-256 of what the meter contributed: the delta above, or its masked input.
    payload_sha256: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    # Ed25519 over the ledger's MeterContribution message for payload_sha256:
    # it authenticates the update and is what the ledger records.
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
    # Inputs the quantiser clipped (secure aggregation); never silently saturated.
    saturated: Annotated[int, msgspec.Meta(ge=0)] = 0


class RoundResult(Message, tag="result", frozen=True):
    """What a completed round produced, published on the results topic."""

    run: RunId
    round: RoundNo
    train: bool
    selected: int
    participants: list[MeterId]
    dropouts: list[MeterId]
    rejected: int
    train_loss: float
    mae: float | None
    rmse: float | None
    nrmse: float | None
    naive_rmse: float | None
    model_hash: str
    wall_s: float
    train_s: float
    aggregate_s: float
    # Seconds each secure-aggregation stage stayed open ("advertise", "share",
    # "masked_input", "unmask"); empty for a round without secure aggregation.
    stages_s: dict[str, float] = msgspec.field(default_factory=dict)
    # CPU seconds the aggregator's process and the meters' training used during the
    # round, when the meters run in the aggregator's process (None otherwise).
    cpu_s: float | None = None
    # CPU seconds of the aggregator's event-loop thread during the round; when the
    # meters run in the aggregator's process their agents share that thread, and a
    # value near wall_s says the thread, not the cores, set the round's pace.
    loop_cpu_s: float | None = None
    # Seconds from the round's start until the meters' training batch finished,
    # when the meters train in the aggregator's process (None otherwise): what
    # follows is the round's part after training (uploads, SecAgg+ unmasking, ledger).
    train_done_s: float | None = None


class Proof(Message, tag="proof", frozen=True):
    """The aggregator's receipt to one meter: its contribution's inclusion proof and
    the signed tree head it is proven against (see ``gridsim.ledger.audit``)."""

    run: RunId
    round: RoundNo
    meter: MeterId
    proof: Annotated[str, msgspec.Meta(max_length=65536)]  # JSON of inclusion_proof_for
    head: Annotated[str, msgspec.Meta(max_length=8192)]  # the signed checkpoint note


class Stop(Message, tag="stop", frozen=True):
    """The run is over; meters disconnect and exit."""

    reason: str


AnyMessage = Hello | RollCall | RoundAnnounce | Update | RoundResult | Proof | Stop

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode(msg: AnyMessage) -> bytes:
    return _encoder.encode(msg)


def decode(payload: bytes | bytearray, *, max_bytes: int = MAX_MESSAGE_BYTES) -> AnyMessage:
    """Parse and validate one wire message; raise MessageError with the reason if it is bad."""
    if len(payload) > max_bytes:
        raise MessageError(f"message of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        msg: AnyMessage = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError(f"malformed message: {exc}") from None
    return msg


def vector_to_bytes(vec: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def vector_from_bytes(data: bytes, dim: int) -> npt.NDArray[np.float32]:
    """A float32 vector of exactly ``dim`` finite entries, or MessageError."""
    if len(data) != 4 * dim:
        raise MessageError(f"vector of {len(data)} bytes, expected {4 * dim} ({dim} float32)")
    vec = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vec)):
        raise MessageError("vector holds NaN or infinite values")
    return vec
