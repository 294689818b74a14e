"""Privacy accounting and noise calibration for the federated run.

Everything here is arithmetic on privacy parameters: no transport, no models,
no randomness. A run uses it twice: before the first round, to turn
``--epsilon E --delta D`` into noise (:func:`noise_multiplier_for`,
:func:`choose_ddgauss_parameters`), and during the run, to track what each
meter has spent (:class:`PrivacyLedger`).

Modes and what their guarantee covers (meter-level, add/remove one meter):

``central``
    DP-FedAvg (McMahan et al., ICLR 2018). Each round samples every meter
    independently with probability ``q`` (Poisson sampling), clips each update
    to L2 norm ``c`` and adds N(0, (z c)^2) to the sum. Accounted with Google's
    ``dp-accounting``: the privacy loss distribution (PLD) accountant is the
    primary, the Renyi (RDP) accountant the cross-check.
``local``
    Baseline: each meter adds N(0, (z c)^2) to its own clipped update. The
    guarantee is local: it protects a meter against whoever sees its message,
    for any two updates it might have sent (L2 distance up to 2c), so the
    Gaussian mechanism runs at multiplier z / 2. Sampling gives no
    amplification here: the message itself shows that the meter took part.
``distributed``
    DDGauss (Kairouz, Liu and Steinke, ICML 2021, arXiv:2102.06387): scale by
    1/gamma, rotate, conditionally round to integers, each of ``n`` meters adds
    discrete Gaussian noise N_Z(0, (sigma/gamma)^2) before secure aggregation.
    ``dp-accounting`` has no such mechanism; the paper's RDP bound is
    implemented below, amplified by Poisson sampling with the general bound
    of Zhu and Wang (ICML 2019) and converted to (epsilon, delta) with the
    conversion ``dp-accounting`` uses for RDP (Canonne, Kamath, Steinke 2020,
    Proposition 12).

The noise multiplier ``z`` is always "standard deviation of the noise on the
released quantity, in units of the clip norm": the central noise stddev over
``c`` in ``central``; a meter's own noise stddev over ``c`` in ``local``;
``sqrt(n) sigma / c`` (the stddev of the summed shares over ``c``) in
``distributed``.

References to the DDGauss paper are to the arXiv version (v4), which has the
proofs: Theorem 1 (privacy of the distributed discrete Gaussian), Proposition
14 / Eq. (17) (its RDP form), Proposition 22 (the norm after conditional
randomised rounding), Section 4.4 with Theorem 34 / Eq. (61) (choice of the
scale gamma for ``b`` bits), Lemma 29 (flatness ``rho`` of the rotation). The
numbering is the one the authors' own reference code cites
(google-research/federated, ``distributed_dp/accounting_utils.py``), whose
formulas this module follows; the implementation here is our own.

Every epsilon returned is an upper bound: calibration keeps the spend at or
under the budget and never rounds it down.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from typing import Any, Literal, TypeAlias

import dp_accounting  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

from gridsim.exceptions import InvalidInputError

Mode: TypeAlias = Literal["central", "local", "distributed"]
Accountant: TypeAlias = Literal["pld", "rdp"]
Semantics: TypeAlias = Literal["sampled", "participation"]
MeterId: TypeAlias = Hashable

MODES: tuple[Mode, ...] = ("central", "local", "distributed")
ACCOUNTANTS: tuple[Accountant, ...] = ("pld", "rdp")

DEFAULT_BETA = math.exp(-0.5)
"""The conditional-rounding constant the DDGauss paper uses in its experiments."""

DDGAUSS_ORDERS: tuple[int, ...] = tuple(range(2, 257))
"""Integer RDP orders for DDGauss: the Zhu-Wang sampling bound needs integers."""

MIN_LOCAL_SIGMA = 0.5
"""Theorem 1 of the DDGauss paper needs each share's stddev (integer units) >= 1/2."""

_PLD_DISCRETISATION = 1e-4
_SHARE_BLOCK = 2048
_MAX_NOISE_MULTIPLIER = 1e6


def default_accountant(mode: Mode) -> Accountant:
    """The primary accountant for ``mode``: PLD for the Gaussian modes, RDP for DDGauss.

    The DDGauss bound is an RDP bound, so ``distributed`` has no PLD.
    """
    _check_mode(mode)
    return "rdp" if mode == "distributed" else "pld"


# ---------------------------------------------------------------------------
# DDGauss: sensitivity after rounding, the per-round RDP bound, parameters
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DDGaussSetup:
    """What fixes the sensitivity of one DDGauss round.

    ``dimension`` is the length of the vector that is rotated and rounded
    (after padding to a power of two for the Hadamard rotation: see
    :func:`padded_dimension`). ``clip_norm`` is ``c``, ``gamma`` the
    quantisation step (values are scaled by ``1/gamma`` before rounding),
    ``beta`` the conditional-rounding constant in [0, 1) (0 turns the condition
    off), ``noise_shares`` the number of meters whose noise share is guaranteed
    to be in every released sum (surviving, honest meters: dropouts lower it
    and must be accounted with the lower value).

    With Poisson sampling the number of meters drawn varies from round to
    round, so plan ``noise_shares`` as the smallest count of contributors a
    round may release with (e.g. well below the expected q N), and book each
    round with its actual count (:meth:`PrivacyLedger.record_round`): a round
    with fewer shares costs more and is charged for it.
    """

    dimension: int
    clip_norm: float
    gamma: float
    beta: float
    noise_shares: int

    def __post_init__(self) -> None:
        _positive_int("dimension", self.dimension)
        _positive("clip_norm", self.clip_norm)
        _positive("gamma", self.gamma)
        if not (isinstance(self.beta, int | float) and 0.0 <= self.beta < 1.0):
            raise InvalidInputError(f"beta must be in [0, 1), got {self.beta!r}")
        _positive_int("noise_shares", self.noise_shares)

    def local_stddev(self, noise_multiplier: float) -> float:
        """Each meter's noise stddev (real units) for a central-equivalent multiplier."""
        return noise_multiplier * self.clip_norm / math.sqrt(self.noise_shares)

    def noise_multiplier(self, local_stddev: float) -> float:
        """The central-equivalent multiplier ``sqrt(n) sigma / c`` of a local stddev."""
        return local_stddev * math.sqrt(self.noise_shares) / self.clip_norm


def padded_dimension(dimension: int) -> int:
    """The next power of two at or above ``dimension`` (the Hadamard rotation needs one)."""
    d = _positive_int("dimension", dimension)
    return 1 << (d - 1).bit_length()


def rounded_l2_sensitivity(clip_norm: float, gamma: float, beta: float, dimension: int) -> float:
    """L2 norm bound, in integer units, of a clipped vector after scaling and rounding.

    A vector of norm <= c is scaled by 1/gamma and randomly rounded to the
    integer grid, the rounding repeated until the result's norm is within the
    bound (conditional randomised rounding). The bound is Proposition 22 /
    Theorem 1 of the DDGauss paper: with x = c / gamma,

        Delta_2 = min( x + sqrt(d),
                       sqrt(x^2 + d/4 + sqrt(2 ln(1/beta)) (x + sqrt(d)/2)) ),

    the first term holding for any rounding (each coordinate moves by < 1), the
    second being the conditional bound, which fails a single rounding attempt
    with probability at most beta. ``beta = 0`` gives the unconditional bound.
    """
    _positive("clip_norm", clip_norm)
    _positive("gamma", gamma)
    d = _positive_int("dimension", dimension)
    if not 0.0 <= beta < 1.0:
        raise InvalidInputError(f"beta must be in [0, 1), got {beta!r}")
    x = clip_norm / gamma
    unconditional = x + math.sqrt(d)
    if beta == 0.0:
        return unconditional
    conditional_sq = (
        x * x + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (x + math.sqrt(d) / 2.0)
    )
    return min(unconditional, math.sqrt(conditional_sq))


def ddgauss_tau(local_sigma: float, noise_shares: int) -> float:
    """tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k/(k+1)) of Theorem 1 (DDGauss paper).

    ``local_sigma`` is s, one share's stddev in integer units. tau measures how
    far the sum of n discrete Gaussians N_Z(0, s^2) is from N_Z(0, n s^2); it
    vanishes quickly as s grows (about 10 (n-1) exp(-2 pi^2 s^2) for s >= 1).
    """
    _positive("local_sigma", local_sigma)
    n = _positive_int("noise_shares", noise_shares)
    k = np.arange(1, n, dtype=np.float64)
    terms = np.exp(-2.0 * math.pi**2 * local_sigma**2 * k / (k + 1.0))
    return 10.0 * math.fsum(terms.tolist())


def ddgauss_round_rdp(
    setup: DDGaussSetup, local_stddev: float, orders: Iterable[int] = DDGAUSS_ORDERS
) -> npt.NDArray[np.float64]:
    """RDP of one DDGauss round with every meter in it (no sampling), at each order.

    With s = sigma / gamma (a share's stddev in integer units), the summed noise
    has stddev sqrt(n) s; with Delta_2 from :func:`rounded_l2_sensitivity` and
    Delta_1 = Delta_2 min(sqrt(d), Delta_2) (an integer vector's L1 norm is at
    most its squared L2 norm), a = Delta_2 / (sqrt(n) s), b = Delta_1 / (sqrt(n) s),
    Proposition 14 / Eq. (17) of the DDGauss paper gives, at order alpha,

        eps(alpha) = min( alpha a^2 / 2 + tau d,
                          alpha (a^2 + 2 b tau + tau^2 d) / 2 ).

    (The paper's third form alpha (a + tau sqrt(d))^2 / 2 is never smaller than
    the second, since b <= sqrt(d) a.) Theorem 1 needs s >= 1/2; below that no
    bound is claimed and the result is infinite.

    n shares are at least as private as any m <= n of them (the other shares
    are independent noise added afterwards: post-processing), so the bound
    returned is, order by order, the smallest over m = 1..n. That only matters
    for narrow shares (s near 1/2), where tau grows with n faster than the
    Gaussian term shrinks; it also makes the bound never fall as meters drop.
    """
    order_array = np.asarray(list(orders), dtype=np.float64)
    if order_array.size == 0 or np.any(order_array <= 1.0):
        raise InvalidInputError("RDP orders must be greater than 1")
    _positive("local_stddev", local_stddev)
    s = local_stddev / setup.gamma
    if s < MIN_LOCAL_SIGMA:
        return np.full(order_array.shape, np.inf)
    d = setup.dimension
    l2 = rounded_l2_sensitivity(setup.clip_norm, setup.gamma, setup.beta, d)
    l1 = l2 * min(math.sqrt(d), l2)
    n = setup.noise_shares
    k = np.arange(1, n, dtype=np.float64)
    tau_all = np.concatenate(
        [[0.0], 10.0 * np.cumsum(np.exp(-2.0 * math.pi**2 * s * s * k / (k + 1.0)))]
    )
    best = np.full(order_array.shape, np.inf)
    for start in range(0, n, _SHARE_BLOCK):
        m = np.arange(start + 1, min(n, start + _SHARE_BLOCK) + 1, dtype=np.float64)[:, None]
        tau = tau_all[start : start + m.shape[0]][:, None]
        a_sq = l2 * l2 / (m * s * s)
        b = l1 / (np.sqrt(m) * s)
        first = order_array[None, :] * a_sq / 2.0 + tau * d
        second = order_array[None, :] * (a_sq + 2.0 * b * tau + tau * tau * d) / 2.0
        best = np.minimum(best, np.minimum(first, second).min(axis=0))
    return best


def poisson_subsampled_rdp(
    rdp: npt.NDArray[np.float64], sampling_rate: float, orders: Iterable[int] = DDGAUSS_ORDERS
) -> npt.NDArray[np.float64]:
    """RDP after Poisson sampling at rate q, for a mechanism with RDP ``rdp`` at ``orders``.

    General upper bound of Zhu and Wang, "Poisson Subsampled Renyi Differential
    Privacy" (ICML 2019, the general upper bound, valid for any mechanism), at
    integer order alpha:

        (alpha-1) eps'(alpha) <= log( (1-q)^(alpha-1) (alpha q - q + 1)
                                      + C(alpha,2) q^2 (1-q)^(alpha-2) e^eps(2)
                                      + 3 sum_{l=3}^{alpha} C(alpha,l) q^l (1-q)^(alpha-l)
                                          e^((l-1) eps(l)) ),

    evaluated in log space, and never worse than the unsampled ``rdp``. The
    orders must be the consecutive integers 2..max, since every order up to
    alpha enters the sum.
    """
    order_list = [operator.index(a) for a in orders]
    if order_list != list(range(2, len(order_list) + 2)):
        raise InvalidInputError("the sampling bound needs the consecutive integer orders 2..K")
    eps = np.asarray(rdp, dtype=np.float64)
    if eps.shape != (len(order_list),):
        raise InvalidInputError("rdp must have one value per order")
    q = _rate("sampling_rate", sampling_rate)
    if q == 1.0 or not np.all(np.isfinite(eps)):
        return eps.copy()
    if q == 0.0:
        return np.zeros_like(eps)
    max_order = order_list[-1]
    log_comb = _log_binomial_table(max_order)
    alpha = np.arange(2, max_order + 1, dtype=np.float64)[:, None]
    ell = np.arange(0, max_order + 1, dtype=np.float64)[None, :]
    eps_at = np.zeros(max_order + 1)
    eps_at[2:] = eps
    log_q, log_1mq = math.log(q), math.log1p(-q)
    with np.errstate(invalid="ignore"):
        terms = (
            math.log(3.0)
            + log_comb[2:, :]
            + ell * log_q
            + (alpha - ell) * log_1mq
            + (ell - 1.0) * eps_at[None, :]
        )
    terms[:, :3] = -np.inf
    terms = np.where(ell <= alpha, terms, -np.inf)
    a = alpha[:, 0]
    first = (a - 1.0) * log_1mq + np.log(a * q - q + 1.0)
    second = log_comb[2:, 2] + 2.0 * log_q + (a - 2.0) * log_1mq + eps_at[2]
    stacked = np.concatenate([first[:, None], second[:, None], terms], axis=1)
    peak = np.max(stacked, axis=1)
    total = peak + np.log(np.sum(np.exp(stacked - peak[:, None]), axis=1))
    amplified = total / (a - 1.0)
    result: npt.NDArray[np.float64] = np.minimum(amplified, eps)
    return result


@functools.cache
def _log_binomial_table(max_order: int) -> npt.NDArray[np.float64]:
    n = np.arange(max_order + 1, dtype=np.float64)
    lg = np.array([math.lgamma(v + 1.0) for v in n])
    table: npt.NDArray[np.float64] = (
        lg[:, None] - lg[None, :] - lg[(n[:, None] - n[None, :]).clip(0).astype(int)]
    )
    table[n[None, :] > n[:, None]] = -np.inf
    return table


def rdp_to_epsilon(
    rdp: npt.NDArray[np.float64], delta: float, orders: Iterable[float] = DDGAUSS_ORDERS
) -> float:
    """Convert an RDP curve to epsilon at ``delta`` (the conversion ``dp-accounting`` uses)."""
    _rate("delta", delta)
    order_list = [float(a) for a in orders]
    values = np.asarray(rdp, dtype=np.float64)
    if not np.any(np.isfinite(values)):
        return math.inf
    eps, _ = rdp_privacy_accountant.compute_epsilon(order_list, values.tolist(), delta)
    return float(eps)


def ddgauss_rdp(
    setup: DDGaussSetup, local_stddev: float, sampling_rate: float, rounds: int
) -> npt.NDArray[np.float64]:
    """RDP (at :data:`DDGAUSS_ORDERS`) of ``rounds`` Poisson-sampled DDGauss rounds."""
    t = _count("rounds", rounds)
    per_round = poisson_subsampled_rdp(ddgauss_round_rdp(setup, local_stddev), sampling_rate)
    return per_round * t


def ddgauss_epsilon(
    setup: DDGaussSetup, local_stddev: float, sampling_rate: float, rounds: int, delta: float
) -> float:
    """Epsilon at ``delta`` of ``rounds`` DDGauss rounds, meters sampled at ``sampling_rate``."""
    if _count("rounds", rounds) == 0:
        return 0.0
    return rdp_to_epsilon(ddgauss_rdp(setup, local_stddev, sampling_rate, rounds), delta)


@dataclasses.dataclass(frozen=True)
class DDGaussParameters:
    """The outcome of :func:`choose_ddgauss_parameters`: everything a DDGauss run needs.

    ``gamma``: quantisation step; ``local_stddev``: each meter's noise stddev in
    real units (its shares are drawn at ``local_stddev / gamma`` in integer
    units); ``noise_multiplier``: ``sqrt(n) local_stddev / c``;
    ``l2_sensitivity``: the rounded norm bound in integer units (the
    conditional rounding's acceptance threshold); ``epsilon``: what the chosen
    parameters spend over the planned rounds (never above the target).
    """

    setup: DDGaussSetup
    bits: int
    k_stddevs: float
    local_stddev: float
    noise_multiplier: float
    l2_sensitivity: float
    epsilon: float
    delta: float
    sampling_rate: float
    rounds: int

    @property
    def gamma(self) -> float:
        return self.setup.gamma

    @property
    def integer_stddev(self) -> float:
        """Each share's stddev in integer units, the sigma passed to the sampler."""
        return self.local_stddev / self.setup.gamma

    def mechanism(self) -> DDGaussRounds:
        """The per-round mechanism to hand to :class:`PrivacyLedger`."""
        return DDGaussRounds(self.setup, self.local_stddev, self.sampling_rate)

    def summary(self) -> dict[str, str | float | int]:
        """The fields from which anyone can recompute ``epsilon`` with :func:`epsilon`.

        ``epsilon("distributed", noise_multiplier, sampling_rate, rounds, delta,
        "rdp", ddgauss=DDGaussSetup(dimension, clip_norm, gamma, beta,
        noise_shares))`` gives back ``epsilon`` (for a run without dropouts).
        """
        return {
            "mode": "distributed",
            "accountant": "rdp",
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.setup.clip_norm,
            "sampling_rate": self.sampling_rate,
            "rounds": self.rounds,
            "bits": self.bits,
            "beta": self.setup.beta,
            "gamma": self.setup.gamma,
            "dimension": self.setup.dimension,
            "noise_shares": self.setup.noise_shares,
            "k_stddevs": self.k_stddevs,
        }


def ddgauss_local_stddev_for(
    epsilon: float,
    delta: float,
    setup: DDGaussSetup,
    sampling_rate: float,
    rounds: int,
    *,
    rtol: float = 1e-6,
) -> float:
    """Smallest per-meter noise stddev (real units) whose DDGauss epsilon is <= ``epsilon``."""

    def spend(stddev: float) -> float:
        return ddgauss_epsilon(setup, stddev, sampling_rate, rounds, delta)

    lowest = MIN_LOCAL_SIGMA * setup.gamma
    return _smallest_passing(spend, epsilon, lowest, rtol=rtol)


def _ddgauss_signal_sq(
    dimension: int,
    clip_norm: float,
    bits: int,
    noise_shares: int,
    k_stddevs: float,
    rho: float,
    norm_growth: str,
) -> float:
    """Checks what both parameter choices share; the signal's per-coordinate variance.

    ``rho c^2 N / d`` with ``N = n^2`` (``linear``) or ``n`` (``sqrt``), see
    :func:`choose_ddgauss_parameters`. Refuses ``bits`` that cannot hold even
    the rounding term: ``2^b > k sqrt(n)``, whatever gamma.
    """
    d = _positive_int("dimension", dimension)
    c = _positive("clip_norm", clip_norm)
    b = _positive_int("bits", bits)
    n = _positive_int("noise_shares", noise_shares)
    _positive("k_stddevs", k_stddevs)
    _positive("rho", rho)
    if norm_growth not in ("linear", "sqrt"):
        raise InvalidInputError(f"norm_growth must be 'linear' or 'sqrt', got {norm_growth!r}")
    modulus = 2.0**b
    if modulus * modulus <= n * k_stddevs * k_stddevs:
        raise InvalidInputError(
            f"{b} bits cannot hold {k_stddevs} stddevs of the rounding error of {n} meters; "
            "use more bits, fewer meters per sum or a smaller k_stddevs"
        )
    return rho * c * c * (n * n if norm_growth == "linear" else n) / d


def _ddgauss_result(
    setup: DDGaussSetup,
    *,
    bits: int,
    k_stddevs: float,
    local_stddev: float,
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
) -> DDGaussParameters:
    return DDGaussParameters(
        setup=setup,
        bits=bits,
        k_stddevs=float(k_stddevs),
        local_stddev=local_stddev,
        noise_multiplier=noise_multiplier,
        l2_sensitivity=rounded_l2_sensitivity(
            setup.clip_norm, setup.gamma, setup.beta, setup.dimension
        ),
        epsilon=ddgauss_epsilon(setup, local_stddev, sampling_rate, rounds, delta),
        delta=delta,
        sampling_rate=sampling_rate,
        rounds=rounds,
    )


def choose_ddgauss_parameters(
    epsilon: float,
    delta: float,
    *,
    dimension: int,
    clip_norm: float,
    bits: int,
    noise_shares: int,
    sampling_rate: float,
    rounds: int,
    beta: float = DEFAULT_BETA,
    k_stddevs: float = 4.0,
    rho: float = 1.0,
    norm_growth: Literal["linear", "sqrt"] = "linear",
    rtol: float = 1e-6,
) -> DDGaussParameters:
    """Choose gamma and the per-meter noise as the DDGauss paper does.

    The paper (Section 4.4; Theorem 34 / Eq. (61)) picks the scale so that
    ``k_stddevs`` standard deviations of one coordinate of the noisy, rounded,
    rotated sum fit in the ``b``-bit modular range. Per coordinate the sum has
    variance at most rho c^2 N / d from the signal (the rotation flattens the
    vector, Lemma 29; N = n^2 for the worst case where all updates align,
    ``norm_growth="linear"``, or n for ``"sqrt"``), plus n gamma^2 / 4 from the
    rounding and n sigma^2 from the noise, all in real units, so the condition
    is

        2^b >= 2 k sqrt(rho c^2 N / d + n (gamma^2 / 4 + sigma(gamma)^2)) / gamma,

    where sigma(gamma) is the smallest noise meeting the target epsilon at that
    gamma (:func:`ddgauss_local_stddev_for`). The left side is fixed and the
    right does not grow with gamma, so the finest gamma (least rounding error)
    that fits is found by bisection in log gamma. With many coordinates and few
    bits the right side levels off above 2^b (a coarser grid inflates the
    rounded norm, which calls for proportionally more noise) and no gamma fits.
    ``dimension`` should already be padded (:func:`padded_dimension`).
    ``noise_shares`` is the number of meters guaranteed to add noise to each
    sum (plan for the surviving minimum).
    """
    _positive("epsilon", epsilon)
    _rate("delta", delta)
    signal_sq = _ddgauss_signal_sq(
        dimension, clip_norm, bits, noise_shares, k_stddevs, rho, norm_growth
    )
    d, c, b, n = dimension, clip_norm, bits, noise_shares
    modulus = 2.0**b

    def setup_at(gamma: float) -> DDGaussSetup:
        return DDGaussSetup(d, c, gamma, beta, n)

    def stddev_at(gamma: float) -> float:
        return ddgauss_local_stddev_for(
            epsilon, delta, setup_at(gamma), sampling_rate, rounds, rtol=rtol
        )

    def fits(gamma: float) -> bool:
        sigma = stddev_at(gamma)
        spread = 2.0 * k_stddevs * math.sqrt(signal_sq + n * (gamma**2 / 4.0 + sigma**2))
        return spread / gamma <= modulus

    # Bracket: gamma_hi fits, gamma_lo does not.
    gamma_hi = c
    while not fits(gamma_hi):
        gamma_hi *= 4.0
        if gamma_hi > c * 1e12:
            raise InvalidInputError(
                f"no quantisation step fits {b} bits: the rounding of {d} coordinates and the "
                "noise it calls for outgrow the range; use more bits or a larger epsilon"
            )
    gamma_lo = gamma_hi / 4.0
    while fits(gamma_lo):
        gamma_hi = gamma_lo
        gamma_lo /= 4.0
        if gamma_lo < c * 1e-30:
            break
    while gamma_hi / gamma_lo > 1.0 + rtol:
        mid = math.sqrt(gamma_lo * gamma_hi)
        if fits(mid):
            gamma_hi = mid
        else:
            gamma_lo = mid
    setup = setup_at(gamma_hi)
    sigma = stddev_at(gamma_hi)
    return _ddgauss_result(
        setup,
        bits=b,
        k_stddevs=k_stddevs,
        local_stddev=sigma,
        noise_multiplier=setup.noise_multiplier(sigma),
        sampling_rate=sampling_rate,
        rounds=rounds,
        delta=delta,
    )


def ddgauss_parameters_for_noise(
    noise_multiplier: float,
    delta: float,
    *,
    dimension: int,
    clip_norm: float,
    bits: int,
    noise_shares: int,
    sampling_rate: float,
    rounds: int,
    beta: float = DEFAULT_BETA,
    k_stddevs: float = 4.0,
    rho: float = 1.0,
    norm_growth: Literal["linear", "sqrt"] = "linear",
) -> DDGaussParameters:
    """DDGauss parameters for a given noise multiplier ``z`` (``--noise-multiplier``).

    The noise is fixed (each meter's stddev ``z c / sqrt(n)``), so the finest
    scale that keeps ``k_stddevs`` stddevs of a coordinate in range has a
    closed form: with ``M = 2^b / (2 k)`` the condition of
    :func:`choose_ddgauss_parameters` reads ``M^2 gamma^2 >= S + n gamma^2 / 4
    + n sigma^2``, so ``gamma = sqrt((S + n sigma^2) / (M^2 - n / 4))``. The
    ``epsilon`` returned is what the planned rounds spend.
    """
    z = _positive("noise_multiplier", noise_multiplier)
    _rate("delta", delta)
    signal_sq = _ddgauss_signal_sq(
        dimension, clip_norm, bits, noise_shares, k_stddevs, rho, norm_growth
    )
    n = noise_shares
    half_range = 2.0**bits / (2.0 * k_stddevs)
    sigma = z * clip_norm / math.sqrt(n)
    gamma = math.sqrt((signal_sq + n * sigma * sigma) / (half_range * half_range - n / 4.0))
    if sigma / gamma < MIN_LOCAL_SIGMA:
        raise InvalidInputError(
            f"noise multiplier {z:g} gives each meter a share of {sigma / gamma:.3g} integer "
            f"units at {bits} bits, below the 1/2 DDGauss needs; use more bits or more noise"
        )
    return _ddgauss_result(
        DDGaussSetup(dimension, clip_norm, gamma, beta, n),
        bits=bits,
        k_stddevs=k_stddevs,
        local_stddev=sigma,
        noise_multiplier=z,
        sampling_rate=sampling_rate,
        rounds=rounds,
        delta=delta,
    )


# ---------------------------------------------------------------------------
# The Gaussian modes through dp-accounting, and the common entry points
# ---------------------------------------------------------------------------


def _gaussian_event(noise_multiplier: float, sampling_rate: float, rounds: int) -> object:
    if sampling_rate == 1.0:
        # T unsampled Gaussian rounds are exactly one Gaussian at z / sqrt(T);
        # saying so spares the PLD accountant T convolutions.
        return dp_accounting.GaussianDpEvent(noise_multiplier / math.sqrt(rounds))
    one_round = dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    return dp_accounting.SelfComposedDpEvent(one_round, rounds)


def _gaussian_epsilon(
    noise_multiplier: float, sampling_rate: float, rounds: int, delta: float, accountant: Accountant
) -> float:
    event = _gaussian_event(noise_multiplier, sampling_rate, rounds)
    if accountant == "pld":
        pld = pld_privacy_accountant.PLDAccountant(
            value_discretization_interval=_PLD_DISCRETISATION
        )
        pld.compose(event)
        return float(pld.get_epsilon(delta))
    rdp = rdp_privacy_accountant.RdpAccountant()
    rdp.compose(event)
    return float(rdp.get_epsilon(delta))


def epsilon(
    mode: Mode,
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    accountant: Accountant = "pld",
    *,
    ddgauss: DDGaussSetup | None = None,
) -> float:
    """Epsilon at ``delta`` spent by ``rounds`` rounds of ``mode``.

    ``central``: Poisson sampling at ``sampling_rate`` (expected meters per
    round / population), Gaussian noise ``noise_multiplier * c`` on the sum.
    ``local``: each meter's guarantee after ``rounds`` contributions of its own
    noised update (``sampling_rate`` is checked but gives no amplification).
    ``distributed``: needs ``ddgauss`` (the quantisation set-up; each meter's
    noise stddev is ``noise_multiplier * c / sqrt(n)``) and ``accountant="rdp"``.

    Infinite when ``noise_multiplier`` is 0 (or, for ``distributed``, when a
    share's integer stddev is below 1/2); 0 for zero rounds.
    """
    return _mode_epsilon(mode, noise_multiplier, sampling_rate, rounds, delta, accountant, ddgauss)


def _mode_epsilon(
    mode: Mode,
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    accountant: Accountant,
    ddgauss: DDGaussSetup | None,
) -> float:
    _check_mode(mode)
    _check_accountant(accountant)
    z = _non_negative("noise_multiplier", noise_multiplier)
    q = _rate("sampling_rate", sampling_rate)
    t = _count("rounds", rounds)
    _rate("delta", delta)
    if delta == 0.0:
        raise InvalidInputError("delta must be positive for the Gaussian mechanisms")
    if mode != "distributed" and ddgauss is not None:
        raise InvalidInputError(f"ddgauss applies to mode 'distributed', not {mode!r}")
    if t == 0 or q == 0.0:
        return 0.0
    if z == 0.0:
        return math.inf
    if mode == "central":
        return _gaussian_epsilon(z, q, t, delta, accountant)
    if mode == "local":
        # Any two updates of one meter differ by up to 2c in L2: multiplier z/2.
        return _gaussian_epsilon(z / 2.0, 1.0, t, delta, accountant)
    if ddgauss is None:
        raise InvalidInputError("mode 'distributed' needs ddgauss=DDGaussSetup(...)")
    if accountant != "rdp":
        raise InvalidInputError(
            "the DDGauss bound is an RDP bound: mode 'distributed' needs accountant='rdp'"
        )
    return ddgauss_epsilon(ddgauss, ddgauss.local_stddev(z), q, t, delta)


def noise_multiplier_for(
    epsilon: float,
    delta: float,
    sampling_rate: float,
    rounds: int,
    accountant: Accountant = "pld",
    *,
    mode: Mode = "central",
    ddgauss: DDGaussSetup | None = None,
    rtol: float = 1e-4,
) -> float:
    """The smallest noise multiplier (to relative precision ``rtol``) spending <= ``epsilon``.

    Bisection in log z on :func:`epsilon`, which decreases as the noise grows;
    the value returned is the upper end of the final bracket, so its epsilon is
    within the budget (checked, never assumed), while ``z (1 - rtol)`` would
    already be over it. Without sampling, the Gaussian modes with the PLD
    accountant start from a narrow bracket around the exact answer for one
    Gaussian mechanism (:func:`_analytic_gaussian_sigma`), which the PLD's
    pessimistic discretisation moves only slightly: a handful of PLD
    evaluations instead of about fifteen (each takes up to a second). ``mode``
    and ``ddgauss`` are as for :func:`epsilon` (for ``distributed`` the
    quantisation step is held fixed: to choose it as well use
    :func:`choose_ddgauss_parameters`).
    """
    budget = _positive("epsilon", epsilon)
    _positive("rtol", rtol)

    def spend(z: float) -> float:
        return _mode_epsilon(mode, z, sampling_rate, rounds, delta, accountant, ddgauss)

    if _count("rounds", rounds) == 0 or sampling_rate == 0.0:
        raise InvalidInputError("nothing is released: no noise multiplier to calibrate")
    lowest = 0.0
    if mode == "distributed":
        if ddgauss is None:
            raise InvalidInputError("mode 'distributed' needs ddgauss=DDGaussSetup(...)")
        lowest = ddgauss.noise_multiplier(MIN_LOCAL_SIGMA * ddgauss.gamma)
    guess = None
    if mode != "distributed" and accountant == "pld" and sampling_rate == 1.0:
        # T unsampled rounds are one Gaussian at z / sqrt(T) (z / 2 for local).
        sigma = _analytic_gaussian_sigma(budget, delta)
        guess = sigma * math.sqrt(rounds) * (2.0 if mode == "local" else 1.0)
    return _smallest_passing(spend, budget, lowest, rtol=rtol, guess=guess)


def _analytic_gaussian_sigma(epsilon: float, delta: float) -> float:
    """The noise stddev (sensitivity 1) at which one Gaussian mechanism is exactly
    (epsilon, delta)-DP: Balle and Wang (ICML 2018), Theorem 8,
    delta = Phi(1/(2 s) - epsilon s) - e^epsilon Phi(-1/(2 s) - epsilon s),
    decreasing in s; solved by bisection in log s, in log space throughout.
    """
    from scipy.special import log_ndtr  # type: ignore[import-untyped]

    def log_delta(s: float) -> float:
        a = float(log_ndtr(0.5 / s - epsilon * s))
        b = epsilon + float(log_ndtr(-0.5 / s - epsilon * s))
        return -math.inf if b >= a else a + math.log1p(-math.exp(b - a))

    target = math.log(delta)
    lo, hi = 1e-3, 1.0
    while log_delta(hi) > target:
        lo, hi = hi, hi * 2.0
    while log_delta(lo) <= target:
        lo, hi = lo / 2.0, lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if log_delta(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def _smallest_passing(
    spend: Callable[[float], float],
    budget: float,
    lowest: float,
    *,
    rtol: float,
    guess: float | None = None,
) -> float:
    """Smallest x >= lowest (to relative ``rtol``) with spend(x) <= budget; spend decreasing.

    Keeps the invariant spend(hi) <= budget < spend(lo) and returns ``hi``. A
    ``guess`` near the answer is tried first with brackets of relative width
    8 rtol and 64 rtol around it; when neither holds the answer, the search
    starts over from scratch.
    """
    if guess is not None and guess > lowest:
        for width in (4.0 * rtol, 32.0 * rtol):
            hi, lo = guess * (1.0 + width), guess * (1.0 - width)
            if lo > lowest and spend(hi) <= budget and spend(lo) > budget:
                return _bisect(spend, budget, lo, hi, rtol)
    hi = max(1.0, 2.0 * lowest)
    while spend(hi) > budget:
        hi *= 2.0
        if hi > _MAX_NOISE_MULTIPLIER * max(1.0, lowest):
            raise InvalidInputError(f"no noise level reaches epsilon <= {budget}")
    lo = hi / 2.0
    while True:
        if lo <= lowest:
            if lowest > 0.0 and spend(lowest) <= budget:
                return lowest
            lo = lowest
            break
        if spend(lo) > budget:
            break
        hi, lo = lo, lo / 2.0
        if hi < 1e-12:
            return hi
    return _bisect(spend, budget, lo, hi, rtol)


def _bisect(
    spend: Callable[[float], float], budget: float, lo: float, hi: float, rtol: float
) -> float:
    """Narrows spend(hi) <= budget < spend(lo) to ``hi - lo <= rtol hi``; returns ``hi``."""
    while hi - lo > rtol * hi:
        mid = math.sqrt(lo * hi) if lo > 0.0 else hi / 2.0
        if spend(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------
# Per-meter budget tracking during a run
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianRounds:
    """Per-round mechanism of a ``central`` or ``local`` run."""

    mode: Literal["central", "local"]
    noise_multiplier: float
    sampling_rate: float
    accountant: Accountant = "pld"

    def __post_init__(self) -> None:
        if self.mode not in ("central", "local"):
            raise InvalidInputError(
                f"GaussianRounds is for 'central' or 'local', not {self.mode!r}"
            )
        _positive("noise_multiplier", self.noise_multiplier)
        _rate("sampling_rate", self.sampling_rate)
        _check_accountant(self.accountant)


@dataclasses.dataclass(frozen=True)
class DDGaussRounds:
    """Per-round mechanism of a ``distributed`` run (``setup.noise_shares`` is the plan)."""

    setup: DDGaussSetup
    local_stddev: float
    sampling_rate: float

    def __post_init__(self) -> None:
        _positive("local_stddev", self.local_stddev)
        _rate("sampling_rate", self.sampling_rate)

    @property
    def mode(self) -> Mode:
        return "distributed"


@dataclasses.dataclass(frozen=True)
class RoundSpend:
    """What :meth:`PrivacyLedger.record_round` booked for one round."""

    round_index: int
    participants: frozenset[MeterId]
    noise_shares: int | None
    epsilon_spent: float
    """The largest epsilon any meter has spent after this round (what the run reports)."""


class PrivacyLedger:
    """Tracks every meter's privacy spend across rounds and stops meters at their budget.

    Two semantics, chosen at construction:

    ``"sampled"`` (the standard DP-FedAvg / DDGauss guarantee; default for
    ``central`` and ``distributed``): every round counts against every meter at
    the Poisson rate q, whether or not the meter was drawn, because the
    amplification comes from nobody outside learning who was drawn. All meters
    therefore spend alike; once the next round would take the spend over the
    budget, no meter may take part and the run is over. This guarantee covers
    observers of the released model only: anyone who learns the participant
    list of a round (the aggregator, a published ledger) gets no amplification
    against it, and for them ``"participation"`` is the statement that holds.

    ``"participation"`` (the only one for ``local``): a meter is charged only
    for the rounds it actually contributed to, each at the full, unsampled
    cost of a round; rounds without it cost it nothing (its data did not enter
    them, and who is drawn never depends on the data). Meters then spend at
    different rates and each stops on its own when its next contribution would
    exceed the budget.

    For ``distributed`` rounds, :meth:`record_round` takes the number of noise
    shares actually in the released sum (survivors after dropouts); a round
    with fewer shares costs more, and the ledger refuses to book a round that
    would take anyone over the budget, so the aggregator must ask
    :meth:`admissible` before releasing a sum and withhold it if not.
    """

    def __init__(
        self,
        meters: Iterable[MeterId],
        mechanism: GaussianRounds | DDGaussRounds,
        *,
        epsilon_budget: float,
        delta: float,
        semantics: Semantics | None = None,
    ) -> None:
        self._meters: frozenset[MeterId] = frozenset(meters)
        if not self._meters:
            raise InvalidInputError("the ledger needs at least one meter")
        self._mechanism = mechanism
        self._budget = _positive("epsilon_budget", epsilon_budget)
        self._delta = _rate("delta", delta)
        if delta == 0.0:
            raise InvalidInputError("delta must be positive")
        if semantics is None:
            semantics = "participation" if mechanism.mode == "local" else "sampled"
        if semantics not in ("sampled", "participation"):
            raise InvalidInputError(f"unknown semantics {semantics!r}")
        if semantics == "sampled" and mechanism.mode == "local":
            raise InvalidInputError("local noise gets no amplification: use 'participation'")
        self._semantics: Semantics = semantics
        # Gaussian rounds are identical, so a count describes a history; DDGauss
        # rounds differ by their noise shares, so their RDP curves are summed.
        self._rounds = 0
        self._participations: dict[MeterId, int] = dict.fromkeys(self._meters, 0)
        self._global_rdp = np.zeros(len(DDGAUSS_ORDERS))
        self._meter_rdp: dict[MeterId, npt.NDArray[np.float64]] = {}
        self._history: list[RoundSpend] = []

    # -- queries ----------------------------------------------------------

    @property
    def semantics(self) -> Semantics:
        return self._semantics

    @property
    def epsilon_budget(self) -> float:
        return self._budget

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def rounds_recorded(self) -> int:
        return self._rounds

    @property
    def history(self) -> tuple[RoundSpend, ...]:
        return tuple(self._history)

    def participations(self, meter: MeterId) -> int:
        """How many released rounds ``meter`` contributed to."""
        return self._participations[self._known(meter)]

    def spent(self, meter: MeterId) -> float:
        """Epsilon (at the ledger's delta) that ``meter`` has spent so far."""
        m = self._known(meter)
        if self._semantics == "sampled":
            return self._sampled_epsilon(self._rounds, self._global_rdp)
        return self._meter_epsilon(m, self._participations[m], self._meter_rdp.get(m))

    def max_spent(self) -> float:
        """The largest spend of any meter: the epsilon a run reports."""
        if self._semantics == "sampled":
            return self.spent(next(iter(self._meters)))
        return max(self.spent(m) for m in self._meters)

    def can_participate(self, meter: MeterId) -> bool:
        """Whether ``meter`` may contribute to the next round (planned noise shares)."""
        m = self._known(meter)
        return self._next_spend(m, self._planned_shares()) <= self._budget

    def eligible(self) -> frozenset[MeterId]:
        """The meters that may contribute to the next round."""
        return frozenset(m for m in self._meters if self.can_participate(m))

    def admissible(
        self, participants: Collection[MeterId], noise_shares: int | None = None
    ) -> bool:
        """Whether a round with these participants (and noise shares) fits everyone's budget."""
        shares = self._shares(noise_shares)
        members = {self._known(m) for m in participants}
        if self._semantics == "sampled":
            return self._next_spend(None, shares) <= self._budget
        return all(self._next_spend(m, shares) <= self._budget for m in members)

    # -- updates ----------------------------------------------------------

    def record_round(
        self, participants: Collection[MeterId], noise_shares: int | None = None
    ) -> RoundSpend:
        """Book one released round. Raises, booking nothing, if it would exceed a budget.

        ``noise_shares``: for ``distributed`` only, the number of meters whose
        noise is in the released sum (defaults to the planned number).
        """
        members = frozenset(self._known(m) for m in participants)
        shares = self._shares(noise_shares)
        if not self.admissible(members, shares):
            raise InvalidInputError(
                f"round {self._rounds + 1} would exceed the epsilon budget {self._budget}"
            )
        self._rounds += 1
        round_rdp = self._round_rdp(shares, amplified=self._semantics == "sampled")
        if round_rdp is not None and self._semantics == "sampled":
            self._global_rdp = self._global_rdp + round_rdp
        for m in members:
            self._participations[m] += 1
            if round_rdp is not None and self._semantics == "participation":
                self._meter_rdp[m] = (
                    self._meter_rdp.get(m, np.zeros(len(DDGAUSS_ORDERS))) + round_rdp
                )
        booked = RoundSpend(self._rounds, members, shares, self.max_spent())
        self._history.append(booked)
        return booked

    # -- internals --------------------------------------------------------

    def _known(self, meter: MeterId) -> MeterId:
        if meter not in self._meters:
            raise InvalidInputError(f"unknown meter {meter!r}")
        return meter

    def _planned_shares(self) -> int | None:
        if isinstance(self._mechanism, DDGaussRounds):
            return self._mechanism.setup.noise_shares
        return None

    def _shares(self, noise_shares: int | None) -> int | None:
        if not isinstance(self._mechanism, DDGaussRounds):
            if noise_shares is not None:
                raise InvalidInputError("noise_shares applies to distributed rounds only")
            return None
        if noise_shares is None:
            return self._mechanism.setup.noise_shares
        return _positive_int("noise_shares", noise_shares)

    def _round_rdp(self, shares: int | None, *, amplified: bool) -> npt.NDArray[np.float64] | None:
        mech = self._mechanism
        if not isinstance(mech, DDGaussRounds) or shares is None:
            return None
        return _ddgauss_round_curve(
            mech.setup, shares, mech.local_stddev, mech.sampling_rate if amplified else 1.0
        )

    def _next_spend(self, meter: MeterId | None, shares: int | None) -> float:
        nxt = self._round_rdp(shares, amplified=self._semantics == "sampled")
        if self._semantics == "sampled":
            curve = None if nxt is None else self._global_rdp + nxt
            return self._sampled_epsilon(self._rounds + 1, curve)
        assert meter is not None
        base = self._meter_rdp.get(meter)
        curve = None
        if nxt is not None:
            curve = nxt if base is None else base + nxt
        return self._meter_epsilon(meter, self._participations[meter] + 1, curve)

    def _sampled_epsilon(self, rounds: int, curve: npt.NDArray[np.float64] | None) -> float:
        mech = self._mechanism
        if rounds == 0:
            return 0.0
        if isinstance(mech, DDGaussRounds):
            assert curve is not None
            return rdp_to_epsilon(curve, self._delta)
        return _cached_gaussian_epsilon(
            mech.mode,
            mech.noise_multiplier,
            mech.sampling_rate,
            rounds,
            self._delta,
            mech.accountant,
        )

    def _meter_epsilon(
        self, meter: MeterId, count: int, curve: npt.NDArray[np.float64] | None
    ) -> float:
        mech = self._mechanism
        if count == 0:
            return 0.0
        if isinstance(mech, DDGaussRounds):
            assert curve is not None
            return rdp_to_epsilon(curve, self._delta)
        # Charged only for its own contributions, each unsampled.
        return _cached_gaussian_epsilon(
            mech.mode, mech.noise_multiplier, 1.0, count, self._delta, mech.accountant
        )


@functools.lru_cache(maxsize=4096)
def _cached_gaussian_epsilon(
    mode: Mode, z: float, q: float, rounds: int, delta: float, accountant: Accountant
) -> float:
    return epsilon(mode, z, q, rounds, delta, accountant)


@functools.lru_cache(maxsize=1024)
def _ddgauss_round_curve_cached(
    setup: DDGaussSetup, local_stddev: float, sampling_rate: float
) -> tuple[float, ...]:
    curve = poisson_subsampled_rdp(ddgauss_round_rdp(setup, local_stddev), sampling_rate)
    return tuple(float(v) for v in curve)


def _ddgauss_round_curve(
    setup: DDGaussSetup, shares: int, local_stddev: float, sampling_rate: float
) -> npt.NDArray[np.float64]:
    actual = dataclasses.replace(setup, noise_shares=shares)
    return np.array(_ddgauss_round_curve_cached(actual, local_stddev, sampling_rate))


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise InvalidInputError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def _number(name: str, value: float) -> float:
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a number, got a bool")
    try:
        x = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from exc
    if math.isnan(x):
        raise InvalidInputError(f"{name} must be a number, got NaN")
    return x


def _positive(name: str, value: float) -> float:
    x = _number(name, value)
    if not (x > 0.0 and math.isfinite(x)):
        raise InvalidInputError(f"{name} must be a positive finite number, got {value!r}")
    return x


def _non_negative(name: str, value: float) -> float:
    x = _number(name, value)
    if not (x >= 0.0 and math.isfinite(x)):
        raise InvalidInputError(f"{name} must be a non-negative finite number, got {value!r}")
    return x


def _rate(name: str, value: float) -> float:
    x = _number(name, value)
    if not 0.0 <= x <= 1.0:
        raise InvalidInputError(f"{name} must be in [0, 1], got {value!r}")
    return x


def _count(name: str, value: int) -> int:
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be an integer, got a bool")
    try:
        n = operator.index(value)
    except TypeError as exc:
        raise InvalidInputError(f"{name} must be an integer, got {value!r}") from exc
    if n < 0:
        raise InvalidInputError(f"{name} must be non-negative, got {n}")
    return n


def _positive_int(name: str, value: int) -> int:
    n = _count(name, value)
    if n == 0:
        raise InvalidInputError(f"{name} must be positive")
    return n


def epsilon_from_record(dp: Mapping[str, Any], rounds: int) -> float:
    """Epsilon spent after ``rounds`` rounds, recomputed from a ledger's DP parameters.

    ``dp`` is a round record's ``dp`` dict: ``{"mode": "off"}`` spends nothing;
    ``central`` and ``local`` need ``noise_multiplier``, ``sampling_rate``, ``delta``
    (and optionally ``accountant``); ``distributed`` also needs the DDGauss setup
    (``dimension``, ``clip_norm``, ``gamma``, ``beta``, ``noise_shares``). This is
    what ``python -m gridsim audit`` uses to check the epsilon each record claims.
    """
    try:
        key = tuple(sorted(dp.items()))
        hash(key)
    except TypeError:
        raise ValueError("DP parameters must be flat scalars") from None
    return _epsilon_from_items(key, rounds)


@functools.lru_cache(maxsize=4096)
def _epsilon_from_items(items: tuple[tuple[str, Any], ...], rounds: int) -> float:
    dp = dict(items)
    mode = dp.get("mode", "off")
    if mode == "off":
        return 0.0
    if mode not in ("central", "local", "distributed"):
        raise ValueError(f"unknown DP mode {mode!r}")
    setup = None
    if mode == "distributed":
        setup = DDGaussSetup(
            dimension=int(dp["dimension"]),
            clip_norm=float(dp["clip_norm"]),
            gamma=float(dp["gamma"]),
            beta=float(dp["beta"]),
            noise_shares=int(dp["noise_shares"]),
        )
    accountant = dp.get("accountant") or default_accountant(mode)
    return epsilon(
        mode,
        float(dp["noise_multiplier"]),
        float(dp["sampling_rate"]),
        rounds,
        float(dp["delta"]),
        accountant,
        ddgauss=setup,
    )
