"""Masking primitives of secure aggregation, over the Rust core.

Masks
    A mask is the AES-256-CTR keystream (128-bit big-endian counter from zero) under
    ``key = SHA-256(MASK_KEY_DOMAIN || u32le(len(session)) || session || u64le(round)
    || u32le(vector) || u64le(stream) || u8(word_bits) || seed)``, read as
    little-endian words of the accumulator's width (32 or 64 bits) and reduced
    modulo ``2**bits``. ``stream`` names the mask within the round:
    :func:`pair_stream_id` for the pairwise mask of two meters (both derive the same
    one), :func:`self_stream_id` for a meter's self mask. Every field is bound into
    the key, so one seed never yields the same mask in two contexts.
    :func:`expand_masks` adds or subtracts many masks into an accumulator in one
    pass, with the GIL released and the work split over the cores.

Quantisation
    :func:`quantize` clips to ``[-clip, clip]`` (and returns how many values it
    clipped), scales, rounds stochastically with a ChaCha20 CSPRNG and stores the
    integer modulo ``2**bits``. :func:`dequantize_sum` decodes the modular sum of
    ``n`` such vectors; the error per entry is below ``n / scale``.

Packing
    :func:`pack` writes each value in exactly ``bits`` bits, as one little-endian bit
    string (value ``i`` at bits ``i*bits`` onwards, least significant bit first,
    bit ``j`` of the string is bit ``j % 8`` of byte ``j // 8``), zero-padded to
    whole bytes.

Shamir sharing
    :func:`shamir_split` shares a 32-byte secret t-of-n over GF(2**127 - 1), as four
    8-byte little-endian chunks, each with its own polynomial; a share is
    :data:`SHARE_LEN` bytes: version (1), threshold (u32 LE), x (u32 LE), four
    y-coordinates (16 bytes LE each).

How a round uses them (Bonawitz et al. 2017, Bell et al. 2020)
    Meter ``u`` with quantised input ``q``, self-mask seed ``b_u`` and pairwise seeds
    ``s_uv`` (one per neighbour ``v``) sends
    ``q + mask(b_u) + sum_{v > u} mask(s_uv) - sum_{v < u} mask(s_uv)`` modulo
    ``2**bits``: one :func:`expand_masks` call with signs ``[+1] + [+1 if u < v else
    -1 ...]`` and streams ``[self_stream_id(u)] + [pair_stream_id(u, v) ...]``. The
    aggregator sums the survivors' vectors and removes, again in one call, each
    survivor's self mask (sign -1) and, for each dropped meter ``u`` and each
    surviving neighbour ``v``, the pairwise mask ``v`` added (sign ``-1 if v < u
    else +1``); what remains is the survivors' sum, bit for bit.

Errors are :class:`gridsim.exceptions.InvalidInputError` for bad arguments and
:class:`gridsim.exceptions.IntegrityError` for shares or packed data that fail to
verify.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from gridsim import _core
from gridsim.exceptions import InvalidInputError

SEED_LEN = 32
"""Bytes in a mask seed (a pairwise key or a self-mask seed)."""

MASK_KEY_DOMAIN = b"gridsim/secagg/mask-prg/v1/aes-256-ctr"
"""Domain-separation tag opening every mask-key derivation."""

SHAMIR_PRIME = 2**127 - 1
"""The prime of the field Shamir shares live in."""

SHARE_LEN = 73
"""Bytes in an encoded Shamir share."""

MaskArray: TypeAlias = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
SeedsLike: TypeAlias = Sequence[bytes] | npt.NDArray[np.uint8]


class Quantized(NamedTuple):
    """A quantised vector and the number of inputs clipped to ``[-clip, clip]``."""

    values: MaskArray
    saturated: int


class Dequantized(NamedTuple):
    """A decoded sum and the number of entries outside what ``n`` honest vectors give.

    A non-zero ``out_of_range`` means the sum did not come from ``n`` in-range
    quantised vectors: wrong unmasking, a wrong ``n``, or noise added on top.
    """

    values: npt.NDArray[np.float64]
    out_of_range: int


def pair_stream_id(a: int, b: int) -> int:
    """Stream id of the pairwise mask of meters ``a`` and ``b``: ``min << 32 | max``."""
    for m in (a, b):
        if not 0 <= m < 2**32:
            raise InvalidInputError(f"meter ids are 32-bit unsigned integers, got {m}")
    lo, hi = min(a, b), max(a, b)
    return (lo << 32) | hi


def self_stream_id(meter: int) -> int:
    """Stream id of ``meter``'s self mask: the pair ``(meter, meter)``."""
    return pair_stream_id(meter, meter)


def aes_hardware() -> bool:
    """True when masks are expanded with AES-NI (else a constant-time software AES)."""
    return _core.aes_hardware()


def _check_bits(bits: int, word_bits: int) -> None:
    if not 1 <= bits <= word_bits:
        raise InvalidInputError(f"bits must be in 1..={word_bits}, got {bits}")


def _seed_matrix(seeds: SeedsLike) -> npt.NDArray[np.uint8]:
    if isinstance(seeds, np.ndarray):
        if seeds.dtype != np.uint8:
            raise InvalidInputError(f"a seed array must be uint8, got {seeds.dtype}")
        arr = np.ascontiguousarray(seeds)
        if arr.ndim != 2 or arr.shape[1] != SEED_LEN:
            raise InvalidInputError(f"seeds must have shape (m, {SEED_LEN}), got {arr.shape}")
        return arr
    for i, s in enumerate(seeds):
        if not isinstance(s, bytes | bytearray) or len(s) != SEED_LEN:
            raise InvalidInputError(f"seed {i} is not {SEED_LEN} bytes")
    if not seeds:
        return np.zeros((0, SEED_LEN), dtype=np.uint8)
    return np.frombuffer(b"".join(seeds), dtype=np.uint8).reshape(len(seeds), SEED_LEN)


def expand_masks(
    acc: MaskArray,
    seeds: SeedsLike,
    signs: Sequence[int] | npt.NDArray[np.int8],
    session: bytes,
    round: int,
    *,
    streams: Sequence[int] | npt.NDArray[np.uint64],
    bits: int,
    vector: int = 0,
    threads: int = 0,
) -> None:
    """Add (sign +1) or subtract (sign -1) each seed's mask into ``acc``, in place.

    ``acc`` is a contiguous 1-D ``uint32`` (``bits <= 32``) or ``uint64`` array; it
    ends reduced modulo ``2**bits``. ``seeds[i]``, ``signs[i]`` and ``streams[i]``
    describe mask ``i``. ``threads`` splits the work over that many workers (0: all
    cores, 1: the calling thread only). A rejected call leaves ``acc`` untouched.
    """
    if not isinstance(acc, np.ndarray) or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise InvalidInputError("acc must be a contiguous 1-D numpy array")
    seed_arr = _seed_matrix(seeds)
    sign_arr = np.asarray(signs)
    if sign_arr.dtype != np.int8:
        # (np.isin costs more than the check for a meter's few dozen signs.)
        if sign_arr.size and not ((sign_arr == 1) | (sign_arr == -1)).all():
            raise InvalidInputError("signs must be +1 or -1")
        sign_arr = sign_arr.astype(np.int8)
    stream_arr = np.ascontiguousarray(np.asarray(streams, dtype=np.uint64))
    if not 0 <= round < 2**64 or not 0 <= vector < 2**32 or threads < 0:
        raise InvalidInputError("round must fit u64, vector u32, and threads be >= 0")
    if acc.dtype == np.uint32:
        _check_bits(bits, 32)
        _core.expand_masks_u32(
            cast(npt.NDArray[np.uint32], acc),
            seed_arr,
            stream_arr,
            sign_arr,
            session,
            round,
            vector,
            bits,
            threads,
        )
    elif acc.dtype == np.uint64:
        _check_bits(bits, 64)
        _core.expand_masks_u64(
            cast(npt.NDArray[np.uint64], acc),
            seed_arr,
            stream_arr,
            sign_arr,
            session,
            round,
            vector,
            bits,
            threads,
        )
    else:
        raise InvalidInputError(f"acc must be uint32 or uint64, got {acc.dtype}")


def mask(
    seed: bytes,
    session: bytes,
    round: int,
    d: int,
    *,
    stream: int,
    bits: int,
    vector: int = 0,
    dtype: type[np.uint32] | type[np.uint64] = np.uint32,
) -> MaskArray:
    """The mask of one seed as an array of ``d`` words (for tests and tools)."""
    out = cast(MaskArray, np.zeros(d, dtype=dtype))
    expand_masks(out, [seed], [1], session, round, streams=[stream], bits=bits, vector=vector)
    return out


def derive_mask_key(
    seed: bytes, session: bytes, round: int, *, stream: int, vector: int = 0, word_bits: int = 32
) -> bytes:
    """The AES-256 key of one mask stream (see the module documentation)."""
    return _core.derive_mask_key(seed, session, round, vector, stream, word_bits)


def quantize(
    x: npt.ArrayLike, clip: float, bits: int, scale: float, seed: bytes | None = None
) -> Quantized:
    """Clip ``x`` to ``[-clip, clip]``, scale, round stochastically, reduce mod ``2**bits``.

    Returns ``uint32`` residues for ``bits <= 32``, else ``uint64``, and the count of
    clipped inputs. ``seed`` (32 bytes) makes the rounding reproducible; without it
    the CSPRNG is seeded from the OS. NaN or infinite inputs raise
    :class:`InvalidInputError`.
    """
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 1:
        raise InvalidInputError(f"x must be 1-D, got shape {arr.shape}")
    if bits <= 32:
        q32, sat = _core.quantize_u32(arr, clip, scale, bits, seed)
        return Quantized(q32, sat)
    q64, sat = _core.quantize_u64(arr, clip, scale, bits, seed)
    return Quantized(q64, sat)


def dequantize_sum(total: MaskArray, clip: float, bits: int, scale: float, n: int) -> Dequantized:
    """Decode the modular sum of ``n`` vectors quantised with ``clip``, ``bits``, ``scale``.

    Raises :class:`InvalidInputError` when a sum of ``n`` such vectors can wrap
    modulo ``2**bits`` (then no decoding is unique).
    """
    if n < 1:
        raise InvalidInputError(f"n must be at least 1, got {n}")
    if total.dtype == np.uint32:
        vals, bad = _core.dequantize_sum_u32(np.ascontiguousarray(total), clip, scale, bits, n)
    elif total.dtype == np.uint64:
        vals, bad = _core.dequantize_sum_u64(np.ascontiguousarray(total), clip, scale, bits, n)
    else:
        raise InvalidInputError(f"total must be uint32 or uint64, got {total.dtype}")
    return Dequantized(vals, bad)


def max_scale(clip: float, bits: int, n: int) -> float:
    """Largest scale at which the sum of ``n`` vectors clipped to ``clip`` cannot wrap."""
    return _core.max_scale(clip, bits, n)


def packed_len(d: int, bits: int) -> int:
    """Bytes taken by ``d`` values packed at ``bits`` bits: ``ceil(d * bits / 8)``."""
    return (d * bits + 7) // 8


def pack(values: MaskArray, bits: int) -> bytes:
    """Pack ``values`` (each below ``2**bits``) at exactly ``bits`` bits each."""
    if values.ndim != 1:
        raise InvalidInputError(f"values must be 1-D, got shape {values.shape}")
    if values.dtype == np.uint32:
        return _core.pack_u32(np.ascontiguousarray(values), bits)
    if values.dtype == np.uint64:
        return _core.pack_u64(np.ascontiguousarray(values), bits)
    raise InvalidInputError(f"values must be uint32 or uint64, got {values.dtype}")


def unpack(
    data: bytes,
    bits: int,
    d: int,
    *,
    dtype: type[np.uint32] | type[np.uint64] | None = None,
) -> MaskArray:
    """Unpack ``d`` values of ``bits`` bits; ``uint32`` up to 32 bits unless ``dtype``.

    Raises :class:`InvalidInputError` if ``data`` has the wrong length and
    :class:`gridsim.exceptions.IntegrityError` if its padding bits are not zero.
    """
    if d < 0:
        raise InvalidInputError(f"d must be non-negative, got {d}")
    if dtype is None:
        dtype = np.uint32 if bits <= 32 else np.uint64
    if dtype is np.uint32:
        return _core.unpack_u32(bytes(data), bits, d)
    return _core.unpack_u64(bytes(data), bits, d)


def shamir_split(
    secret: bytes,
    t: int,
    n: int,
    seed: bytes | None = None,
    *,
    xs: Sequence[int] | None = None,
) -> list[bytes]:
    """Share a 32-byte ``secret`` so that any ``t`` of the ``n`` shares reconstruct it.

    Share ``i`` is evaluated at x-coordinate ``xs[i]`` (default ``1..n``; non-zero,
    distinct, 32-bit). ``seed`` (32 bytes) makes the shares reproducible; without it
    the coefficients come from a CSPRNG seeded by the OS.
    """
    points = list(range(1, n + 1)) if xs is None else list(xs)
    if len(points) != n:
        raise InvalidInputError(f"{len(points)} x-coordinates given for n = {n}")
    if any(not 0 <= x < 2**32 for x in points) or not 0 <= t < 2**32:
        raise InvalidInputError("x-coordinates and t must be 32-bit unsigned integers")
    return _core.shamir_split(secret, t, points, seed)


def shamir_combine(shares: Sequence[bytes]) -> bytes:
    """Reconstruct the secret from at least ``t`` shares of one sharing.

    Fewer than ``t`` shares or a repeated x-coordinate raise
    :class:`InvalidInputError`; malformed bytes, shares of different sharings or a
    surplus share inconsistent with the rest raise
    :class:`gridsim.exceptions.IntegrityError`.
    """
    return _core.shamir_combine([bytes(s) for s in shares])


def share_x(share: bytes) -> int:
    """The x-coordinate a share was evaluated at (no verification)."""
    if len(share) != SHARE_LEN:
        raise InvalidInputError(f"a share is {SHARE_LEN} bytes, got {len(share)}")
    return int.from_bytes(share[5:9], "little")


def share_threshold(share: bytes) -> int:
    """The threshold t of the sharing a share belongs to (no verification)."""
    if len(share) != SHARE_LEN:
        raise InvalidInputError(f"a share is {SHARE_LEN} bytes, got {len(share)}")
    return int.from_bytes(share[1:5], "little")
