"""Exact discrete Gaussian noise, N_Z(0, sigma^2), from the Rust core.

The sampler is Canonne, Kamath and Steinke's (NeurIPS 2020): rejection from
the discrete Laplace with exact Bernoulli(exp(-gamma)) coins, each coin an exact
comparison of AES-256-CTR keystream with a rational threshold (floating point settles
one only where a proven error bound makes the answer certain), so the samples
follow the exact distribution rather than a floating-point approximation of it
(Mironov, CCS 2012). ``sigma`` is taken at the exact binary value of the float
passed in. Rust side: ``rust_core/src/dgauss.rs``.

Noise is drawn from a fresh OS seed unless ``seed`` is given; pass a seed only
for a reproducible run, and record it, since anyone holding it can recompute
(and so subtract) the noise.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import numpy.typing as npt

from gridsim import _core
from gridsim.exceptions import InvalidInputError

SEED_BITS = 256
"""Seeds are integers in ``[0, 2**256)``; they are hashed into the AES-256 key."""

MIN_SIGMA = 2.0**-16
"""Smallest accepted sigma; at it a sample is nonzero with probability below 2 exp(-2**31)."""

MAX_SIGMA = 2.0**40
"""Largest accepted sigma (about 1.1e12)."""

# Beyond this many standard deviations a term of the normaliser is below
# exp(-800), far under the double-precision resolution of the sum.
_TAIL_SIGMAS = 40.0


def sample_discrete_gaussian(
    sigma: float,
    size: int,
    seed: int | None = None,
    *,
    threads: int = 0,
    out: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int64]:
    """Return ``size`` independent exact samples of N_Z(0, sigma^2) as int64.

    ``out``: a writable, C-contiguous int64 array of ``size`` elements to fill in
    place (no allocation, no copy) and return; with the same ``seed`` it receives
    exactly what a fresh array would.

    ``seed`` (an integer in ``[0, 2**256)``) makes the output reproducible: the
    same ``seed`` and ``size`` give the same array on any machine and with any
    number of threads, and an array drawn with the same seed but a larger size
    starts with the smaller one. ``threads`` = 0 uses every core; 1 runs on the
    calling thread.

    Raises :class:`~gridsim.exceptions.InvalidInputError` for a sigma that is not
    a finite number in ``[2**-16, 2**40]``, a negative size, or a bad seed.
    """
    sigma = _as_float("sigma", sigma)
    n = _as_count("size", size)
    workers = _as_count("threads", threads)
    key: bytes | None = None
    if seed is not None:
        value = _as_int("seed", seed)
        if not 0 <= value < 1 << SEED_BITS:
            raise InvalidInputError(f"seed must be an integer in [0, 2**256), got {value}")
        key = value.to_bytes(SEED_BITS // 8, "little")
    if out is None:
        return _core.sample_discrete_gaussian(sigma, n, key, workers)
    if not (
        isinstance(out, np.ndarray)
        and out.dtype == np.int64
        and out.ndim == 1
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise InvalidInputError("out must be a writable, contiguous 1-D int64 array")
    if out.size != n:
        raise InvalidInputError(f"out holds {out.size} values, not size={n}")
    _core.fill_discrete_gaussian(sigma, out, key, workers)
    return out


def discrete_gaussian_pmf(sigma: float, support: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The probability N_Z(0, sigma^2) gives each integer of ``support``.

    ``exp(-x^2 / (2 sigma^2)) / Z`` evaluated as one exponential of the
    difference of logs, so tiny probabilities do not underflow before they have
    to. ``Z`` is summed exactly enough to be correct to double precision: term by
    term (``math.fsum`` over ``|y| <= 40 sigma``) for sigma < 4, and for larger
    sigma by the Poisson summation (Jacobi theta) identity
    ``Z = sigma sqrt(2 pi) (1 + 2 sum_k exp(-2 pi^2 sigma^2 k^2))``, whose
    correction terms are then below exp(-315).
    """
    sigma = _as_float("sigma", sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise InvalidInputError(f"sigma must be a positive finite number, got {sigma}")
    x = np.asarray(support)
    if x.dtype.kind not in "iu":
        raise InvalidInputError(f"support must hold integers, got dtype {x.dtype}")
    log_z = _log_normaliser(sigma)
    xf = x.astype(np.float64)
    return np.exp(-(xf * xf) / (2.0 * sigma * sigma) - log_z)


def _log_normaliser(sigma: float) -> float:
    """log of sum over all integers y of exp(-y^2 / (2 sigma^2))."""
    if sigma >= 4.0:
        correction = math.fsum(math.exp(-2.0 * math.pi**2 * sigma**2 * k * k) for k in range(1, 4))
        return math.log(sigma) + 0.5 * math.log(2.0 * math.pi) + math.log1p(2.0 * correction)
    r = math.ceil(_TAIL_SIGMAS * sigma) + 1
    terms = [math.exp(-(y * y) / (2.0 * sigma * sigma)) for y in range(1, r + 1)]
    return math.log(1.0 + 2.0 * math.fsum(terms))


def _as_float(name: str, value: float) -> float:
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a number, got a bool")
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from exc


def _as_int(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(value)
    except TypeError as exc:
        raise InvalidInputError(f"{name} must be an integer, got {value!r}") from exc


def _as_count(name: str, value: int) -> int:
    count = _as_int(name, value)
    if count < 0:
        raise InvalidInputError(f"{name} must be non-negative, got {count}")
    return count


NOISE_GRID = 2**16
"""Real-valued noise is drawn as exact discrete Gaussian integers on this grid."""


def gaussian_noise(sigma: float, size: int) -> npt.NDArray[np.float64]:
    """Noise of standard deviation ``sigma`` for real-valued sums, with no floating-point sampler.

    Exact discrete Gaussian samples of scale ``sigma * NOISE_GRID`` divided by
    ``NOISE_GRID``: a discrete Gaussian on a grid of ``1/65536``, which satisfies the
    Gaussian mechanism's privacy bounds (Canonne, Kamath, Steinke 2020) without
    the leaks of floating-point Gaussian samplers (Mironov 2012).
    """
    if sigma <= 0:
        return np.zeros(size, dtype=np.float64)
    grid = sample_discrete_gaussian(sigma * NOISE_GRID, size)
    return grid.astype(np.float64) / NOISE_GRID
