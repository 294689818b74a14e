"""Secure-aggregation primitives: masks, quantisation, packing, Shamir sharing.

The masks are checked three ways: against known-answer vectors in
``tests/data/secagg`` (written by ``make_kat.py`` from an independent reference on
hashlib and OpenSSL), against that reference on random inputs, and by the algebra
the protocol relies on (masks cancel, dropped meters' masks can be removed).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridsim.exceptions import IntegrityError, InvalidInputError
from gridsim.secagg import masking as sm

DATA = Path(__file__).resolve().parent.parent / "data" / "secagg"


def _load_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("secagg_kat_reference", DATA / "make_kat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()
seeds32 = st.binary(min_size=32, max_size=32)


def _kat(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / name).read_text())
    return doc


# ---- masks: known answers and the independent reference ---------------------------


@pytest.mark.parametrize("case", _kat("prg_kat.json")["vectors"])
def test_mask_matches_known_answer(case: dict[str, Any]) -> None:
    seed, session = bytes.fromhex(case["seed"]), bytes.fromhex(case["session"])
    dtype = np.uint32 if case["word_bits"] == 32 else np.uint64
    key = sm.derive_mask_key(
        seed,
        session,
        case["round"],
        stream=case["stream"],
        vector=case["vector"],
        word_bits=case["word_bits"],
    )
    assert key.hex() == case["key"]
    got = sm.mask(
        seed,
        session,
        case["round"],
        len(case["mask"]),
        stream=case["stream"],
        bits=case["bits"],
        vector=case["vector"],
        dtype=dtype,
    )
    assert got.tolist() == case["mask"]


def test_many_masks_in_one_call_match_known_answer() -> None:
    case = _kat("prg_kat.json")["expand"]
    acc = np.array(case["acc_in"], dtype=np.uint32)
    streams = case["streams"]
    sm.expand_masks(
        acc,
        [bytes.fromhex(s["seed"]) for s in streams],
        [s["sign"] for s in streams],
        bytes.fromhex(case["session"]),
        case["round"],
        streams=[s["stream"] for s in streams],
        bits=case["bits"],
    )
    assert acc.tolist() == case["acc_out"]


@settings(max_examples=60, deadline=None)
@given(
    seed=seeds32,
    session=st.binary(max_size=64),
    rnd=st.integers(0, 2**64 - 1),
    vector=st.integers(0, 2**32 - 1),
    stream=st.integers(0, 2**64 - 1),
    wide=st.booleans(),
    bits_frac=st.floats(0.0, 1.0),
    d=st.integers(0, 300),
)
def test_mask_equals_reference_aes_ctr(
    seed: bytes,
    session: bytes,
    rnd: int,
    vector: int,
    stream: int,
    wide: bool,
    bits_frac: float,
    d: int,
) -> None:
    word_bits = 64 if wide else 32
    bits = 1 + int(bits_frac * (word_bits - 1))
    got = sm.mask(
        seed,
        session,
        rnd,
        d,
        stream=stream,
        bits=bits,
        vector=vector,
        dtype=np.uint64 if wide else np.uint32,
    )
    want = ref.mask_words(seed, session, rnd, vector, stream, word_bits, bits, d)
    assert got.tolist() == want


def test_large_mask_equals_reference_across_thread_split() -> None:
    # 200,003 words: split over two workers, with a partial last block.
    seed = bytes(range(32))
    d = 200_003
    want = ref.mask_words(seed, b"s", 1, 0, 5, 32, 32, d)
    for threads in (0, 1, 2):
        acc = np.zeros(d, dtype=np.uint32)
        sm.expand_masks(acc, [seed], [1], b"s", 1, streams=[5], bits=32, threads=threads)
        assert acc.tolist() == want


def test_same_seed_gives_unrelated_masks_in_other_contexts() -> None:
    seed = bytes(32)
    base = sm.mask(seed, b"session", 1, 64, stream=7, bits=32)
    others = [
        sm.mask(seed, b"session2", 1, 64, stream=7, bits=32),
        sm.mask(seed, b"session", 2, 64, stream=7, bits=32),
        sm.mask(seed, b"session", 1, 64, stream=8, bits=32),
        sm.mask(seed, b"session", 1, 64, stream=7, bits=32, vector=1),
    ]
    for other in others:
        # Unrelated streams agree on a word with probability 2^-32.
        assert not np.any(base == other)


# ---- masks: the algebra of the protocol -------------------------------------------


@st.composite
def rounds(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 8))
    pairs = list(itertools.combinations(range(n), 2))
    edges = [p for p in pairs if draw(st.booleans())]
    dropped = {u for u in range(n) if draw(st.booleans())}
    if len(dropped) == n:
        dropped.discard(0)
    return {
        "n": n,
        "edges": edges,
        "dropped": dropped,
        "bits": draw(st.integers(1, 32)),
        "d": draw(st.integers(1, 200)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(max_examples=60, deadline=None)
@given(r=rounds())
def test_masks_cancel_for_any_graph_and_dropouts_can_be_unmasked(r: dict[str, Any]) -> None:
    """Meters mask with self masks and pairwise masks over any graph; after the
    aggregator removes the survivors' self masks and the dropped meters' pairwise
    masks, it holds exactly the survivors' sum modulo 2^bits."""
    rng = random.Random(r["seed"])
    n, bits, d = r["n"], r["bits"], r["d"]
    session, rnd = b"prop-session", 3
    self_seed = [rng.randbytes(32) for _ in range(n)]
    pair_seed = {e: rng.randbytes(32) for e in r["edges"]}
    inputs = np.array([[rng.randrange(2**bits) for _ in range(d)] for _ in range(n)], np.uint32)

    def neighbours(u: int) -> list[int]:
        return [b if a == u else a for (a, b) in r["edges"] if u in (a, b)]

    def pair(u: int, v: int) -> bytes:
        return pair_seed[(min(u, v), max(u, v))]

    survivors = [u for u in range(n) if u not in r["dropped"]]
    total = np.zeros(d, dtype=np.uint32)
    for u in survivors:
        masked = inputs[u].copy()
        nb = neighbours(u)
        sm.expand_masks(
            masked,
            [self_seed[u]] + [pair(u, v) for v in nb],
            [1] + [1 if u < v else -1 for v in nb],
            session,
            rnd,
            streams=[sm.self_stream_id(u)] + [sm.pair_stream_id(u, v) for v in nb],
            bits=bits,
        )
        total += masked

    seeds, signs, streams = [], [], []
    for u in survivors:
        seeds.append(self_seed[u])
        signs.append(-1)
        streams.append(sm.self_stream_id(u))
    for u in r["dropped"]:
        for v in neighbours(u):
            if v not in r["dropped"]:
                seeds.append(pair(u, v))
                signs.append(-1 if v < u else 1)  # undo what survivor v added
                streams.append(sm.pair_stream_id(u, v))
    sm.expand_masks(total, seeds, signs, session, rnd, streams=streams, bits=bits)

    want = inputs[survivors].sum(axis=0, dtype=np.uint64) % (1 << bits)
    assert total.tolist() == want.tolist()


def test_masked_vector_looks_uniform() -> None:
    """The aggregator's view of one meter: a constant input plus its masks. Chi-square
    on the 256 byte values of 4 x 100,000 bytes; the 1e-6 false-alarm threshold of
    chi-square with 255 degrees of freedom is about 368."""
    rng = random.Random(11)
    d = 100_000
    masked = np.full(d, 12345, dtype=np.uint32)
    sm.expand_masks(
        masked,
        [rng.randbytes(32) for _ in range(3)],
        [1, 1, -1],
        b"uniform",
        0,
        streams=[sm.self_stream_id(1), sm.pair_stream_id(1, 2), sm.pair_stream_id(0, 1)],
        bits=32,
    )
    counts = np.bincount(masked.view(np.uint8), minlength=256)
    expected = 4 * d / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 368.0


def test_rejected_call_leaves_accumulator_untouched() -> None:
    acc = np.arange(10, dtype=np.uint32)
    for bad in ([2], [0], [255], [-255], np.array([1, 257], dtype=np.int64)):  # no wrap to +-1
        with pytest.raises(InvalidInputError, match="sign"):
            sm.expand_masks(
                acc, [bytes(32)] * len(bad), bad, b"s", 0, streams=range(len(bad)), bits=32
            )
    with pytest.raises(InvalidInputError, match="bits"):
        sm.expand_masks(acc, [bytes(32)], [1], b"s", 0, streams=[0], bits=33)
    with pytest.raises(InvalidInputError, match="32 bytes"):
        sm.expand_masks(acc, [bytes(31)], [1], b"s", 0, streams=[0], bits=32)
    with pytest.raises(InvalidInputError, match="length mismatch"):
        sm.expand_masks(acc, [bytes(32)], [1, 1], b"s", 0, streams=[0], bits=32)
    with pytest.raises(InvalidInputError, match="uint32 or uint64"):
        sm.expand_masks(acc.astype(np.int64), [bytes(32)], [1], b"s", 0, streams=[0], bits=32)
    with pytest.raises(InvalidInputError, match="uint8"):
        sm.expand_masks(acc, np.zeros((1, 32), np.int64), [1], b"s", 0, streams=[0], bits=32)
    assert acc.tolist() == list(range(10))


def test_stream_ids_are_symmetric() -> None:
    assert sm.pair_stream_id(9, 4) == sm.pair_stream_id(4, 9) == (4 << 32) | 9
    assert sm.self_stream_id(4) == (4 << 32) | 4
    with pytest.raises(InvalidInputError):
        sm.pair_stream_id(-1, 3)


# ---- quantisation ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 20),
    d=st.integers(1, 100),
    bits=st.integers(8, 64),
    clip=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantised_sum_round_trips_within_n_over_scale(
    n: int, d: int, bits: int, clip: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    scale = sm.max_scale(clip, bits, n)
    xs = rng.uniform(-1.5 * clip, 1.5 * clip, size=(n, d)).astype(np.float32)
    dtype = np.uint32 if bits <= 32 else np.uint64
    total = np.zeros(d, dtype=np.uint64)
    for i, x in enumerate(xs):
        q, saturated = sm.quantize(x, clip, bits, scale, seed=bytes([i]) * 32)
        assert q.dtype == dtype
        assert saturated == int(np.sum(np.abs(x.astype(np.float64)) > clip))
        total += q.astype(np.uint64)
    if bits < 64:  # uint64 addition already wraps modulo 2^64
        total %= np.uint64(2**bits)
    decoded, out_of_range = sm.dequantize_sum(total.astype(dtype), clip, bits, scale, n)
    assert out_of_range == 0
    exact = np.clip(xs.astype(np.float64), -clip, clip).sum(axis=0)
    assert np.all(np.abs(decoded - exact) < n / scale + 1e-9 * np.abs(exact))


def test_saturation_is_counted_not_silent() -> None:
    x = np.array([0.25, 1.0, 1.0001, -7.0, np.float32(-1.0), 3e38], dtype=np.float32)
    q, saturated = sm.quantize(x, 1.0, 16, 1000.0, seed=bytes(32))
    assert saturated == 3
    assert q[2] == 1000 and q[3] == 2**16 - 1000 and q[5] == 1000


def test_quantise_refuses_nan_and_unfit_parameters() -> None:
    with pytest.raises(InvalidInputError, match="input 1"):
        sm.quantize(np.array([0.0, np.nan], dtype=np.float32), 1.0, 16, 10.0)
    with pytest.raises(InvalidInputError, match="does not fit"):
        sm.quantize(np.zeros(3, dtype=np.float32), 1.0, 8, 1000.0)
    with pytest.raises(InvalidInputError, match="wrap"):
        sm.dequantize_sum(np.zeros(3, dtype=np.uint32), 1.0, 16, 1000.0, 100)


def test_stochastic_rounding_is_reproducible_and_unbiased() -> None:
    x = np.full(100_000, 0.123, dtype=np.float32)
    a, _ = sm.quantize(x, 1.0, 16, 10.0, seed=b"k" * 32)
    b, _ = sm.quantize(x, 1.0, 16, 10.0, seed=b"k" * 32)
    assert np.array_equal(a, b)
    # 1.23 -> 1 or 2; mean 1.23 with standard error 0.0013; 0.01 is ~7 sigma.
    assert set(np.unique(a).tolist()) == {1, 2}
    assert abs(a.mean() - 1.23) < 0.01


def test_out_of_range_sum_is_reported() -> None:
    # A sum that no 3 vectors clipped to 1.0 at scale 100 can give (e.g. wrong unmasking).
    total = np.array([300, 301, 2**16 - 300, 2**16 - 301], dtype=np.uint32)
    decoded, bad = sm.dequantize_sum(total, 1.0, 16, 100.0, 3)
    assert decoded.tolist() == [3.0, 3.01, -3.0, -3.01]
    assert bad == 2


# ---- packing -----------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 33))
def test_pack_round_trips_u32(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for d in (0, 1, 7, 8, 9, 1001):
        v = rng.integers(0, 2**bits, size=d, dtype=np.uint64).astype(np.uint32)
        data = sm.pack(v, bits)
        assert len(data) == sm.packed_len(d, bits) == (d * bits + 7) // 8
        back = sm.unpack(data, bits, d)
        assert back.dtype == np.uint32
        assert np.array_equal(back, v)


@pytest.mark.parametrize("bits", range(33, 65))
def test_pack_round_trips_u64(bits: int) -> None:
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 2**bits - 1, size=333, dtype=np.uint64, endpoint=True)
    assert np.array_equal(sm.unpack(sm.pack(v, bits), bits, 333), v)


def test_packed_bits_are_little_endian() -> None:
    assert sm.pack(np.array([0b101, 0b011, 0b111], dtype=np.uint32), 3) == bytes([0xDD, 0x01])
    assert sm.pack(np.array([0x123], dtype=np.uint32), 12) == bytes([0x23, 0x01])


def test_pack_and_unpack_refuse_malformed_input() -> None:
    with pytest.raises(InvalidInputError, match="does not fit"):
        sm.pack(np.array([8], dtype=np.uint32), 3)
    with pytest.raises(InvalidInputError, match="length mismatch"):
        sm.unpack(b"\x00\x00", 3, 2)
    with pytest.raises(IntegrityError, match="padding"):
        sm.unpack(b"\x80", 3, 2)


# ---- Shamir ------------------------------------------------------------------------


@pytest.mark.parametrize("case", _kat("shamir_kat.json")["vectors"])
def test_shamir_matches_known_answer(case: dict[str, Any]) -> None:
    secret = bytes.fromhex(case["secret"])
    shares = sm.shamir_split(
        secret, case["t"], len(case["xs"]), bytes.fromhex(case["rng_seed"]), xs=case["xs"]
    )
    assert [s.hex() for s in shares] == case["shares"]
    assert sm.shamir_combine([bytes.fromhex(s) for s in case["shares"][::-1]]) == secret


@settings(max_examples=50, deadline=None)
@given(data=st.data(), secret=seeds32, n=st.integers(1, 12))
def test_any_t_of_n_shares_reconstruct_and_t_minus_1_do_not(
    data: st.DataObject, secret: bytes, n: int
) -> None:
    t = data.draw(st.integers(1, n))
    shares = sm.shamir_split(secret, t, n)
    assert len(shares) == n and all(len(s) == sm.SHARE_LEN for s in shares)
    subset = data.draw(st.permutations(shares))[: data.draw(st.integers(t, n))]
    assert sm.shamir_combine(subset) == secret
    assert ref.shamir_combine(subset) == secret  # the independent reference agrees
    if t > 1:
        with pytest.raises(InvalidInputError, match=f"{t - 1} shares given, {t} needed"):
            sm.shamir_combine(subset[: t - 1])


def test_shamir_refuses_bad_shares() -> None:
    secret = b"s" * 32
    shares = sm.shamir_split(secret, 2, 4, seed=bytes(32))
    assert [sm.share_x(s) for s in shares] == [1, 2, 3, 4]
    assert sm.share_threshold(shares[0]) == 2
    with pytest.raises(InvalidInputError, match="twice"):
        sm.shamir_combine([shares[0], shares[0]])
    with pytest.raises(IntegrityError, match="malformed"):
        sm.shamir_combine([shares[0][:-1], shares[1]])
    zero_x = shares[0][:5] + bytes(4) + shares[0][9:]
    with pytest.raises(IntegrityError, match="x-coordinate 0"):
        sm.shamir_combine([zero_x, shares[1]])
    tampered = shares[3][:20] + bytes([shares[3][20] ^ 1]) + shares[3][21:]
    with pytest.raises(IntegrityError, match="inconsistent"):
        sm.shamir_combine([shares[0], shares[1], tampered])
    with pytest.raises(InvalidInputError):
        sm.shamir_split(secret, 0, 3)
    with pytest.raises(InvalidInputError):
        sm.shamir_split(secret, 4, 3)
    with pytest.raises(InvalidInputError, match="x-coordinate 0"):
        sm.shamir_split(secret, 2, 3, xs=[0, 1, 2])
    with pytest.raises(InvalidInputError, match="32 bytes"):
        sm.shamir_split(b"short", 2, 3)


def test_shamir_without_seed_uses_fresh_randomness() -> None:
    a = sm.shamir_split(b"x" * 32, 2, 2)
    b = sm.shamir_split(b"x" * 32, 2, 2)
    assert a != b
    assert sm.shamir_combine(a) == sm.shamir_combine(b) == b"x" * 32
