"""Ledger entries: canonical round trips, strict decoding, meter signatures."""

from __future__ import annotations

import hashlib
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridsim.exceptions import IntegrityError, MessageError
from gridsim.ledger import MeterContribution, RoundRecord, decode_entry, encode_entry
from gridsim.ledger.entries import frame, read_frames

from .conftest import meter_key, round_entries


def test_every_entry_round_trips_byte_for_byte() -> None:
    for entry in round_entries(4, meters=3):
        data = encode_entry(entry)
        assert data[0] == entry.TAG and data[1] == entry.VERSION
        assert decode_entry(data) == entry
        assert encode_entry(decode_entry(data)) == data


def test_dict_parameters_encode_the_same_whatever_their_order() -> None:
    record = round_entries(0, meters=2)[-1]
    assert isinstance(record, RoundRecord)
    shuffled = msgspec.structs.replace(record, dp=dict(reversed(list(record.dp.items()))))
    assert encode_entry(shuffled) == encode_entry(record)


def test_contribution_signature_verifies_only_for_its_own_content() -> None:
    entry = MeterContribution.sign(
        meter_key(7), session="s1", round=3, meter=7, payload=b"masked bytes"
    )
    assert entry.payload_sha256 == hashlib.sha256(b"masked bytes").digest()
    entry.verify(meter_key(7).public_key())
    with pytest.raises(IntegrityError, match="meter 7 round 3"):
        entry.verify(meter_key(8).public_key())
    # The same signature does not vouch for another round or payload.
    moved = msgspec.structs.replace(entry, round=4)
    with pytest.raises(IntegrityError):
        moved.verify(meter_key(7).public_key())


def test_signed_message_is_domain_separated() -> None:
    message = MeterContribution.message("s1", 3, 7, bytes(32))
    assert message.startswith(b"gridsim/ledger/meter-contribution/v1\x00")
    assert MeterContribution.message("s1", 3, 7, bytes(32)) != MeterContribution.message(
        "s13", 3, 7, bytes(32)
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: b"\x09" + d[1:], "unknown entry type 0x09"),
        (lambda d: d[:1] + b"\x02" + d[2:], "version 2 is not supported"),
        (lambda d: d[:2], "too short"),
        (lambda d: d[:-1], "MeterContribution"),
        (lambda d: d + b"\x00", "MeterContribution"),
    ],
)
def test_decode_rejects_malformed_entries_with_a_reason(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    data = encode_entry(round_entries(0, meters=1)[0])
    with pytest.raises(MessageError, match=reason):
        decode_entry(mutate(data))


def test_decode_rejects_wrong_field_sizes() -> None:
    good = round_entries(0, meters=1)[0]
    assert isinstance(good, MeterContribution)
    short_hash = msgspec.structs.replace(good, payload_sha256=bytes(31))
    with pytest.raises(MessageError, match="payload_sha256"):
        decode_entry(encode_entry(short_hash))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"participants": [0, 1, 1]}, "participant is listed twice"),
        ({"dropouts": [1]}, "meter 1 is both a participant and a dropout"),
        ({"epsilon_spent": math.nan}, "epsilon_spent nan"),
        ({"epsilon_spent": -1.0}, "epsilon_spent -1.0"),
        ({"dp": {"sigma": math.inf}}, "dp\\['sigma'\\]"),
    ],
)
def test_round_record_values_are_checked(change: dict[str, object], reason: str) -> None:
    record = round_entries(0, meters=2)[-1]
    with pytest.raises(MessageError, match=reason):
        encode_entry(msgspec.structs.replace(record, **change))


def test_frames_split_a_log_and_stop_at_an_incomplete_tail() -> None:
    datas = [encode_entry(e) for e in round_entries(0, meters=2)]
    log = b"".join(frame(d) for d in datas)
    frames, end = read_frames(log)
    assert [d for _, d in frames] == datas and end == len(log)
    frames, end = read_frames(log + frame(b"partial")[:-2])
    assert len(frames) == 3 and end == len(log)


params = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    max_size=4,
)
sessions = st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True)
meter_ids = st.integers(0, 2**31 - 1)


@settings(max_examples=200, deadline=None)
@given(
    session=sessions,
    round_no=meter_ids,
    meters=st.lists(meter_ids, max_size=8, unique=True),
    secagg=params,
    dp=params,
    eps=st.one_of(st.none(), st.floats(0.0, 1e6)),
    digest=st.binary(min_size=32, max_size=32),
)
def test_any_valid_round_record_round_trips(
    session: str,
    round_no: int,
    meters: list[int],
    secagg: dict[str, object],
    dp: dict[str, object],
    eps: float | None,
    digest: bytes,
) -> None:
    half = len(meters) // 2
    record = RoundRecord(
        session=session,
        round=round_no,
        participants=meters[:half],
        dropouts=meters[half:],
        secagg=secagg,  # type: ignore[arg-type]
        dp=dp,  # type: ignore[arg-type]
        epsilon_spent=eps,
        aggregate_sha256=digest,
        model_sha256=digest[::-1],
    )
    data = encode_entry(record)
    assert decode_entry(data) == record
    assert encode_entry(decode_entry(data)) == data
