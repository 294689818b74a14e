"""The exact discrete Gaussian sampler against the exact distribution.

Every statistical test uses a fixed seed, so it either always passes or always
fails; the false-alarm rate stated with each is the probability that a correct
sampler fails it for a seed picked at random (alpha = 1e-4 per assertion).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from gridsim.exceptions import InvalidInputError
from gridsim.privacy import discrete_gaussian_pmf, sample_discrete_gaussian

ALPHA = 1e-4
"""False-alarm rate of each statistical assertion."""

Z_TWO_SIDED = float(stats.norm.isf(ALPHA / 2))  # 3.89


def _bins(
    sigma: float, n: int, min_expected: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Contiguous integer bins covering Z with expected counts >= min_expected.

    Returns the left edges (the first bin also holds everything below, the last
    everything above) and the exact probability of each bin.
    """
    r = math.ceil(40 * sigma) + 2
    support = np.arange(-r, r + 1, dtype=np.int64)
    pmf = discrete_gaussian_pmf(sigma, support)
    edges: list[int] = []
    probs: list[float] = []
    acc = 0.0
    start = -r
    for x, p in zip(support.tolist(), pmf.tolist(), strict=True):
        acc += p
        if acc * n >= min_expected:
            edges.append(start)
            probs.append(acc)
            start, acc = x + 1, 0.0
    probs[-1] += acc  # the right tail too thin for a bin of its own
    return np.array(edges, dtype=np.int64), np.array(probs)


@pytest.mark.parametrize(
    ("sigma", "seed"),
    [(0.5, 11), (1.0, 12), (3.7, 13), (10.0, 14), (100.0, 15), (1e4, 16)],
)
def test_matches_exact_pmf_chi_square(sigma: float, seed: int) -> None:
    """Pearson chi-square on 10^6 samples, one bin per integer except in the
    tails, which are merged until each bin expects >= 5 samples. False alarm:
    ALPHA (asymptotic chi-square distribution of the statistic)."""
    n = 1_000_000
    samples = sample_discrete_gaussian(sigma, n, seed=seed)
    edges, probs = _bins(sigma, n, min_expected=5.0)
    assert len(edges) >= 2
    # Samples left of the first edge belong to the first bin.
    index = np.maximum(np.searchsorted(edges, samples, side="right") - 1, 0)
    observed = np.bincount(index, minlength=len(edges))
    expected = n * probs / probs.sum()
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    p_value = float(stats.chi2.sf(statistic, df=len(edges) - 1))
    assert p_value > ALPHA, f"sigma={sigma}: chi2={statistic:.1f} on {len(edges) - 1} df"


def _exact_variance(sigma: float) -> tuple[float, float]:
    """Variance and fourth moment of N_Z(0, sigma^2)."""
    r = math.ceil(40 * sigma) + 2
    x = np.arange(-r, r + 1, dtype=np.int64)
    p = discrete_gaussian_pmf(sigma, x)
    xf = x.astype(np.float64)
    return float(np.sum(xf**2 * p)), float(np.sum(xf**4 * p))


@pytest.mark.parametrize(("shares", "sigma", "m"), [(10, 10.0, 1_000_000), (100, 5.0, 100_000)])
def test_sum_of_noise_shares_has_the_intended_variance(shares: int, sigma: float, m: int) -> None:
    """Distributed noise: each of `shares` meters adds N_Z(0, s^2), s = sigma/sqrt(shares).

    The sum is not itself a discrete Gaussian, but its variance is exactly
    shares * Var(N_Z(0, s^2)), which is shares * s^2 = sigma^2 when s >= 1.
    Checked on m independent sums against a normal bound on the sample
    variance (standard error from the exact fourth moment), false alarm ALPHA.
    """
    s = sigma / math.sqrt(shares)
    total = np.zeros(m, dtype=np.int64)
    for i in range(shares):
        total += sample_discrete_gaussian(s, m, seed=1000 + i)
    var1, mu4_1 = _exact_variance(s)
    var = shares * var1
    mu4 = shares * mu4_1 + 3 * shares * (shares - 1) * var1**2
    se = math.sqrt((mu4 - var**2) / m)
    seen = float(np.var(total.astype(np.float64)))
    assert abs(seen - var) < Z_TWO_SIDED * se, f"variance {seen}, exact {var} +- {se}"
    if s >= 1.0:
        # Var(N_Z(0, s^2)) = s^2 to within 1e-7 once s >= 1 ...
        assert abs(var1 / s**2 - 1.0) < 1e-7
        assert abs(seen - sigma**2) < Z_TWO_SIDED * se
    else:
        # ... but not for small shares: at s = 0.5 it is 0.215, not 0.25, so the
        # sum falls 14% short of sigma^2 and a calibration must use the exact value.
        assert abs(var1 - 0.2150) < 1e-3
        assert seen < 0.9 * sigma**2


def test_seeded_runs_are_reproducible() -> None:
    a = sample_discrete_gaussian(3.7, 50_000, seed=42)
    b = sample_discrete_gaussian(3.7, 50_000, seed=42, threads=1)
    assert a.dtype == np.int64
    assert a.shape == (50_000,)
    np.testing.assert_array_equal(a, b)
    # A longer array with the same seed extends a shorter one.
    np.testing.assert_array_equal(sample_discrete_gaussian(3.7, 80_000, seed=42)[:50_000], a)
    assert not np.array_equal(a, sample_discrete_gaussian(3.7, 50_000, seed=43))
    # Seeds use all 256 bits.
    assert not np.array_equal(
        sample_discrete_gaussian(3.7, 1000, seed=1 << 255),
        sample_discrete_gaussian(3.7, 1000, seed=(1 << 255) + 1),
    )


def test_unseeded_runs_differ() -> None:
    a = sample_discrete_gaussian(10.0, 1000)
    b = sample_discrete_gaussian(10.0, 1000)
    assert not np.array_equal(a, b)


def test_empty_and_noise_free_sizes() -> None:
    assert sample_discrete_gaussian(1.0, 0, seed=1).shape == (0,)
    # sigma = 2^-16: any nonzero sample has probability below 2 exp(-2^31).
    assert not sample_discrete_gaussian(2.0**-16, 10_000, seed=1).any()


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan, math.inf, -math.inf, 1e13, 1e300, 1e-9])
def test_invalid_sigma_raises(sigma: float) -> None:
    with pytest.raises(InvalidInputError, match="sigma"):
        sample_discrete_gaussian(sigma, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": -1}, "size"),
        ({"size": 1.5}, "size"),
        ({"size": 10, "seed": -1}, "seed"),
        ({"size": 10, "seed": 1 << 256}, "seed"),
        ({"size": 10, "seed": True}, "seed"),
        ({"size": 10, "threads": -2}, "threads"),
        ({"size": 10, "threads": 257}, "threads"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        sample_discrete_gaussian(1.0, **kwargs)  # type: ignore[arg-type]


def test_pmf_is_a_distribution() -> None:
    for sigma in [0.5, 1.0, 3.7, 3.999, 4.0, 10.0, 1e4]:
        r = math.ceil(40 * sigma) + 2
        p = discrete_gaussian_pmf(sigma, np.arange(-r, r + 1))
        assert abs(math.fsum(p.tolist()) - 1.0) < 1e-12, sigma
        np.testing.assert_allclose(p, p[::-1], rtol=0, atol=0)
    # The two ways of computing the normaliser agree where they meet.
    below = discrete_gaussian_pmf(np.nextafter(4.0, 0.0), np.array([0]))
    above = discrete_gaussian_pmf(4.0, np.array([0]))
    assert abs(below[0] / above[0] - 1.0) < 1e-12
    # Far tails stay representable instead of underflowing to nan.
    assert discrete_gaussian_pmf(1.0, np.array([30]))[0] == pytest.approx(
        math.exp(-450.0) / math.sqrt(2 * math.pi), rel=1e-7
    )


def test_pmf_rejects_non_integer_support() -> None:
    with pytest.raises(InvalidInputError, match="integers"):
        discrete_gaussian_pmf(1.0, np.array([0.5]))


def test_size_beyond_memory_raises_memory_error() -> None:
    with pytest.raises(MemoryError):
        sample_discrete_gaussian(1.0, 10**15)


def test_filling_a_given_array_equals_a_fresh_draw_and_refuses_unfit_arrays() -> None:
    fresh = sample_discrete_gaussian(7.5, 50_000, seed=5)
    buffer = np.zeros(50_000, dtype=np.int64)
    out = sample_discrete_gaussian(7.5, 50_000, seed=5, out=buffer, threads=1)
    assert out is buffer
    np.testing.assert_array_equal(buffer, fresh)
    for bad in (
        np.zeros(50_000, dtype=np.int32),
        np.zeros(100_000, dtype=np.int64)[::2],
        np.zeros((2, 25_000), dtype=np.int64),
        np.zeros(10, dtype=np.int64),
    ):
        with pytest.raises(InvalidInputError):
            sample_discrete_gaussian(7.5, 50_000, out=bad)
    frozen = np.zeros(50_000, dtype=np.int64)
    frozen.flags.writeable = False
    with pytest.raises(InvalidInputError, match="writable"):
        sample_discrete_gaussian(7.5, 50_000, out=frozen)
