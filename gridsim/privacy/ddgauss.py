"""The distributed discrete Gaussian mechanism (DDGauss) on the meters and the aggregator.

Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation" (ICML 2021, arXiv:2102.06387),
Algorithm 1 and 2. A meter turns its clipped update ``x`` (L2 norm <= c) into
``b``-bit integers it then hands to secure aggregation:

1. pad ``x`` with zeros to ``D``, the next power of two, and rotate it:
   ``H S x / sqrt(D)`` with ``H`` the Walsh-Hadamard matrix and ``S`` a diagonal
   of random signs (:func:`rotation_signs`: public, the same for every meter of
   a round, and fresh each round). The rotation keeps the norm and spreads the
   vector evenly over the coordinates, so that no single coordinate wraps;
2. scale by ``1/gamma`` and round each coordinate up or down at random, with
   the probabilities that keep its mean; repeat until the rounded vector's
   norm is at most the bound :func:`~gridsim.privacy.accounting.rounded_l2_sensitivity`
   (conditional randomised rounding: the bound is what the privacy analysis uses);
3. add a discrete Gaussian noise share N_Z(0, s^2) per coordinate, from the
   exact sampler in the Rust core, and reduce modulo ``2**b``.

The aggregator only ever sees the modular sum of the survivors' vectors (secure
aggregation unmasks nothing else), so it never holds an un-noised sum. It
decodes that sum (:meth:`DDGaussCodec.decode`): lift each coordinate to the
signed range ``[-2**(b-1), 2**(b-1))``, multiply by ``gamma``, rotate back and
drop the padding. The result is the survivors' clipped sum plus the summed
noise (stddev ``sqrt(n) s gamma`` per coordinate) and the rounding error.

The privacy parameters (``gamma``, ``s``, the norm bound) come from
:func:`~gridsim.privacy.accounting.choose_ddgauss_parameters`; this module is
the arithmetic only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from gridsim.exceptions import InvalidInputError
from gridsim.privacy.discrete_gaussian import sample_discrete_gaussian

ROTATION_DOMAIN = b"gridsim/ddgauss/rotation-signs/v1"
"""Domain-separation tag of :func:`rotation_signs`."""

MAX_ROUNDING_TRIES = 1000
"""Conditional rounding fails a try with probability at most beta (about 0.6): this
many failures in a row happen with probability below 1e-200."""


def rotation_signs(session: str, round_: int, padded: int) -> npt.NDArray[np.float64]:
    """The public random signs ``S`` of a round's rotation, as +1.0 / -1.0.

    Bit ``i`` (least significant first within each byte) of
    ``SHAKE-256(ROTATION_DOMAIN || u32le(len(session)) || session || u64le(round))``
    read to ``padded / 8`` bytes is 1 for a negative sign. Anyone can recompute
    them; they need not be secret (the privacy analysis holds for any rotation).
    """
    if padded < 1 or padded & (padded - 1):
        raise InvalidInputError(f"padded dimension must be a power of two, got {padded}")
    name = session.encode()
    seed = ROTATION_DOMAIN + len(name).to_bytes(4, "little") + name + round_.to_bytes(8, "little")
    stream = np.frombuffer(hashlib.shake_256(seed).digest(max(1, padded // 8)), dtype=np.uint8)
    bits = np.unpackbits(stream, bitorder="little")[:padded]
    return 1.0 - 2.0 * bits.astype(np.float64)


@functools.cache
def _sylvester(m: int) -> npt.NDArray[np.float64]:
    """The Sylvester-ordered Hadamard matrix of order ``m``: H[i, j] = (-1)^popcount(i & j)."""
    i = np.arange(m)
    both = i[:, None] & i[None, :]
    parity = np.zeros((m, m), dtype=np.int64)
    while both.any():
        parity ^= both & 1
        both >>= 1
    out: npt.NDArray[np.float64] = 1.0 - 2.0 * parity.astype(np.float64)
    return out


def hadamard(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The orthonormal Walsh-Hadamard transform ``H x / sqrt(D)`` of each row of ``x``.

    ``x`` is ``(rows, D)`` with ``D`` a power of two; the transform is its own
    inverse. ``H_D`` is the Kronecker product ``H_A (x) H_B`` with ``A B = D``, so
    on each row read as an ``A x B`` matrix ``X`` (row-major) it is
    ``H_A X H_B``: two matrix products (BLAS) instead of ``log2 D`` strided passes.
    """
    rows, n = x.shape
    if n < 1 or n & (n - 1):
        raise InvalidInputError(f"the Hadamard transform needs a power-of-two length, got {n}")
    k = n.bit_length() - 1
    a, b = 1 << (k // 2), 1 << (k - k // 2)
    blocks = np.asarray(x, dtype=np.float64).reshape(rows, a, b)
    y = np.matmul(np.matmul(_sylvester(a), blocks), _sylvester(b))
    y *= 1.0 / math.sqrt(n)
    out: npt.NDArray[np.float64] = y.reshape(rows, n)
    return out


def conditional_round(
    scaled: npt.NDArray[np.float64], bound: float, rng: np.random.Generator | None = None
) -> tuple[npt.NDArray[np.int64], int]:
    """Round each row up or down at random (unbiased), until its L2 norm is <= ``bound``.

    Coordinate ``y`` becomes ``floor(y) + 1`` with probability ``y - floor(y)``,
    else ``floor(y)``; a row whose rounded norm exceeds ``bound`` is rounded
    afresh. Returns the rounded rows and the number of attempts over all rows.
    """
    rng = rng if rng is not None else np.random.default_rng()
    rows, width = scaled.shape
    floor = np.floor(scaled)
    frac = scaled - floor
    base = floor.astype(np.int64)
    rounded = np.empty((rows, width), dtype=np.int64)
    todo = np.arange(rows)
    tries = 0
    bound_sq = bound * bound
    for _ in range(MAX_ROUNDING_TRIES):
        if todo.size == 0:
            return rounded, tries
        tries += int(todo.size)
        trial = base[todo] + (rng.random((todo.size, width)) < frac[todo])
        as_float = trial.astype(np.float64)
        accept = np.einsum("ij,ij->i", as_float, as_float) <= bound_sq
        rounded[todo[accept]] = trial[accept]
        todo = todo[~accept]
    if todo.size == 0:
        return rounded, tries
    raise InvalidInputError(
        f"conditional rounding failed {MAX_ROUNDING_TRIES} times in a row: "
        f"the norm bound {bound:g} is too tight for these vectors"
    )


@dataclasses.dataclass(frozen=True)
class EncodedBatch:
    """Meters' vectors ready for secure aggregation, and what encoding them took."""

    values: npt.NDArray[np.uint32]  # (meters, padded), each below 2**bits
    rounding_tries: int  # rounding attempts over all meters (>= meters)


@dataclasses.dataclass(frozen=True)
class DDGaussCodec:
    """One DDGauss configuration: encode on the meters, decode on the aggregator.

    ``dim``: the real vector length; ``padded``: ``dim`` rounded up to a power of
    two (the length that is rotated, noised and securely summed); ``gamma``:
    the quantisation step; ``l2_bound``: the rounded vector's norm bound in
    integer units; ``sigma``: each meter's noise-share stddev in integer units;
    ``bits``: the modulus ``2**bits`` of the sum.
    """

    dim: int
    padded: int
    clip_norm: float
    gamma: float
    l2_bound: float
    sigma: float
    bits: int

    PLAN_FIELDS: ClassVar[tuple[str, ...]] = (
        "padded",
        "clip_norm",
        "gamma",
        "l2_bound",
        "sigma",
        "bits",
    )
    """What a round announcement carries of a codec (the meters know ``dim``)."""

    @classmethod
    def from_plan(cls, dim: int, plan: Mapping[str, Any]) -> DDGaussCodec:
        """The codec an announced plan (:attr:`PLAN_FIELDS`) describes for ``dim`` values."""
        return cls(dim, **{name: plan[name] for name in cls.PLAN_FIELDS})

    def plan(self) -> dict[str, Any]:
        """The fields a round announcement carries (:attr:`PLAN_FIELDS`)."""
        return {name: getattr(self, name) for name in self.PLAN_FIELDS}

    def __post_init__(self) -> None:
        if self.dim < 1 or self.padded < self.dim or self.padded & (self.padded - 1):
            raise InvalidInputError(
                f"padded dimension {self.padded} must be a power of two >= {self.dim}"
            )
        if not 2 <= self.bits <= 32:
            raise InvalidInputError(f"DDGauss needs 2 to 32 bits, got {self.bits}")
        for name in ("clip_norm", "gamma", "l2_bound", "sigma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidInputError(f"{name} must be positive and finite, got {value!r}")
        if self.sigma < 0.5:
            raise InvalidInputError(
                f"noise shares of stddev {self.sigma:g} < 1/2 carry no DDGauss guarantee"
            )

    def encode(
        self,
        updates: npt.NDArray[np.floating],
        signs: npt.NDArray[np.float64],
        *,
        rng: np.random.Generator | None = None,
        noise_seed: int | None = None,
    ) -> EncodedBatch:
        """Clip, rotate, scale, round conditionally, add noise shares, reduce mod 2**bits.

        ``updates`` is ``(meters, dim)``; each row is one meter's update, clipped
        here to ``clip_norm`` (again, if the caller already did). ``rng`` drives
        the rounding (default: seeded from the OS); the noise comes from the Rust
        core's CSPRNG (seeded from the OS unless ``noise_seed`` is given, for
        reproducible simulations only).
        """
        x = np.asarray(updates, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidInputError(f"updates must be (meters, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise InvalidInputError("updates must be finite")
        if signs.shape != (self.padded,):
            raise InvalidInputError(f"signs must have length {self.padded}")
        rows = x.shape[0]
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x * np.minimum(1.0, self.clip_norm / np.maximum(norms, 1e-300))
        padded = np.zeros((rows, self.padded), dtype=np.float64)
        padded[:, : self.dim] = x
        scaled = hadamard(padded * signs) / self.gamma
        rounded, tries = conditional_round(scaled, self.l2_bound, rng)
        noise = sample_discrete_gaussian(self.sigma, rows * self.padded, seed=noise_seed)
        total = rounded + noise.reshape(rows, self.padded)
        mask = (1 << self.bits) - 1
        return EncodedBatch((total & mask).astype(np.uint32), tries)

    def decode(
        self, total: npt.NDArray[np.unsignedinteger], signs: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """The real-valued sum from the modular sum of encoded vectors (``padded`` words)."""
        if total.shape != (self.padded,):
            raise InvalidInputError(f"the sum must have {self.padded} words, got {total.shape}")
        if signs.shape != (self.padded,):
            raise InvalidInputError(f"signs must have length {self.padded}")
        modulus = 1 << self.bits
        words = total.astype(np.int64) & (modulus - 1)
        signed = np.where(words >= modulus // 2, words - modulus, words).astype(np.float64)
        rotated_back = hadamard((signed * self.gamma)[None, :])[0] * signs
        out: npt.NDArray[np.float64] = rotated_back[: self.dim]
        return out
