import msgspec
import numpy as np
import pytest

from gridsim.exceptions import MessageError
from gridsim.transport import codec


def _update(**over: object) -> codec.Update:
    fields: dict[str, object] = dict(
        v=codec.WIRE_VERSION,
        session="s1",
        run="ab12",
        round=3,
        meter=7,
        n_samples=10,
        train_loss=0.5,
        train_s=0.1,
        delta=codec.vector_to_bytes(np.arange(4, dtype=np.float32)),
        eval=codec.EvalReport(1.0, 2.0, 3, 4.0, 5.0, 6.0),
        payload_sha256=b"\x00" * 32,
        signature=b"\x00" * 64,
    )
    fields.update(over)
    return codec.Update(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    msg = _update()
    assert codec.decode(codec.encode(msg)) == msg


def test_oversized_message_is_rejected_before_parsing() -> None:
    with pytest.raises(MessageError, match="exceeds the limit"):
        codec.decode(b"\x00" * 101, max_bytes=100)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xff",
        b"garbage that is not msgpack",
        msgspec.msgpack.encode({"type": "nope"}),
        msgspec.msgpack.encode([1, 2, 3]),
    ],
)
def test_malformed_payloads_raise_message_error(payload: bytes) -> None:
    with pytest.raises(MessageError, match="malformed"):
        codec.decode(payload)


def test_unknown_wire_version_is_rejected() -> None:
    raw = msgspec.msgpack.encode({**msgspec.structs.asdict(_update()), "type": "update", "v": 99})
    with pytest.raises(MessageError, match="unsupported wire version 99"):
        codec.decode(raw)


def test_unknown_fields_and_bad_values_are_rejected() -> None:
    base = {**msgspec.to_builtins(_update()), "type": "update"}
    with pytest.raises(MessageError):
        codec.decode(msgspec.msgpack.encode({**base, "extra": 1}))
    with pytest.raises(MessageError):
        codec.decode(msgspec.msgpack.encode({**base, "meter": -1}))
    with pytest.raises(MessageError):
        codec.decode(msgspec.msgpack.encode({**base, "session": "a/b#"}))


def test_vector_must_have_the_model_size_and_be_finite() -> None:
    good = np.array([1.0, -2.0, 3.5], dtype=np.float32)
    assert np.array_equal(codec.vector_from_bytes(codec.vector_to_bytes(good), 3), good)
    with pytest.raises(MessageError, match="expected 16"):
        codec.vector_from_bytes(codec.vector_to_bytes(good), 4)
    bad = good.copy()
    bad[1] = np.nan
    with pytest.raises(MessageError, match="NaN"):
        codec.vector_from_bytes(codec.vector_to_bytes(bad), 3)
