"""Privacy accounting: reproduced reference values, calibration, DDGauss bound, budgets."""

from __future__ import annotations

import math
from typing import Any

import dp_accounting  # type: ignore[import-untyped]
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from gridsim.exceptions import InvalidInputError
from gridsim.privacy import accounting
from gridsim.privacy.accounting import (
    DDGAUSS_ORDERS,
    DEFAULT_BETA,
    DDGaussRounds,
    DDGaussSetup,
    GaussianRounds,
    PrivacyLedger,
    _analytic_gaussian_sigma,
    _smallest_passing,
    choose_ddgauss_parameters,
    ddgauss_epsilon,
    ddgauss_tau,
    default_accountant,
    epsilon,
    noise_multiplier_for,
    padded_dimension,
    poisson_subsampled_rdp,
    rdp_to_epsilon,
    rounded_l2_sensitivity,
)

# The classic DP-SGD example (Abadi et al. 2016; TF Privacy's tutorial): MNIST,
# 60000 examples, batch 256, noise 1.1, 60 epochs, delta 1e-5.
DPSGD_Q = 256 / 60000
DPSGD_STEPS = 60 * 60000 // 256
DPSGD_DELTA = 1e-5


# --------------------------------------------------------------------------- Gaussian modes


def test_dpsgd_case_reproduces_dp_accounting_pld_and_rdp() -> None:
    pld = epsilon("central", 1.1, DPSGD_Q, DPSGD_STEPS, DPSGD_DELTA, "pld")
    rdp = epsilon("central", 1.1, DPSGD_Q, DPSGD_STEPS, DPSGD_DELTA, "rdp")
    assert DPSGD_STEPS == 14062
    assert pld == pytest.approx(2.38, abs=0.01)
    assert rdp == pytest.approx(2.60, abs=0.01)
    # PLD is the tighter accountant, and both beat TF Privacy's older RDP
    # conversion, which published 3.01 for the same run.
    assert pld < rdp < 3.01


def test_central_without_sampling_is_the_composed_gaussian_mechanism() -> None:
    # T unsampled Gaussian rounds at multiplier z are one Gaussian at z / sqrt(T).
    composed = epsilon("central", 2.0, 1.0, 16, 1e-6, "pld")
    single = epsilon("central", 0.5, 1.0, 1, 1e-6, "pld")
    assert composed == pytest.approx(single, rel=1e-3)


def test_local_mode_charges_the_replacement_sensitivity_and_no_amplification() -> None:
    # A meter's two possible updates differ by up to 2c: local z is central z / 2,
    # and being sampled rarely does not help a meter whose message is seen.
    local = epsilon("local", 4.0, 0.01, 10, 1e-5, "pld")
    assert local == pytest.approx(epsilon("central", 2.0, 1.0, 10, 1e-5, "pld"), rel=1e-9)
    assert local == epsilon("local", 4.0, 1.0, 10, 1e-5, "pld")
    assert local > 10 * epsilon("central", 4.0, 0.01, 10, 1e-5, "pld")


def test_edge_values() -> None:
    assert epsilon("central", 1.0, 0.1, 0, 1e-5) == 0.0
    assert epsilon("central", 1.0, 0.0, 10, 1e-5) == 0.0
    assert epsilon("central", 0.0, 0.1, 10, 1e-5) == math.inf
    assert default_accountant("central") == "pld"
    assert default_accountant("local") == "pld"
    assert default_accountant("distributed") == "rdp"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "centre"}, "mode"),
        ({"accountant": "moments"}, "accountant"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"rounds": -3}, "rounds"),
        ({"rounds": 2.5}, "rounds"),
        ({"delta": 0.0}, "delta"),
        ({"mode": "distributed"}, "ddgauss"),
    ],
)
def test_invalid_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "mode": "central",
        "noise_multiplier": 1.0,
        "sampling_rate": 0.1,
        "rounds": 10,
        "delta": 1e-5,
        "accountant": "pld",
    }
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=message):
        epsilon(**args)  # type: ignore[arg-type]


def test_distributed_mode_refuses_the_pld_accountant() -> None:
    setup = DDGaussSetup(
        dimension=64, clip_norm=1.0, gamma=1e-3, beta=DEFAULT_BETA, noise_shares=10
    )
    with pytest.raises(InvalidInputError, match="rdp"):
        epsilon("distributed", 1.0, 0.1, 10, 1e-5, "pld", ddgauss=setup)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize(
    ("budget", "q", "rounds"),
    [(1.0, 0.05, 100), pytest.param(4.0, 0.01, 1000, marks=pytest.mark.slow)],
)
def test_calibration_round_trips(accountant: str, budget: float, q: float, rounds: int) -> None:
    z = noise_multiplier_for(budget, 1e-5, q, rounds, accountant)  # type: ignore[arg-type]
    assert epsilon("central", z, q, rounds, 1e-5, accountant) <= budget  # type: ignore[arg-type]
    # Only just: 0.1% less noise is already over the budget.
    assert epsilon("central", z * 0.999, q, rounds, 1e-5, accountant) > budget  # type: ignore[arg-type]


def test_calibration_for_the_dpsgd_case_gives_back_its_noise() -> None:
    budget = epsilon("central", 1.1, DPSGD_Q, DPSGD_STEPS, DPSGD_DELTA, "rdp")
    z = noise_multiplier_for(budget, DPSGD_DELTA, DPSGD_Q, DPSGD_STEPS, "rdp")
    assert z == pytest.approx(1.1, rel=1e-3)


def test_analytic_gaussian_matches_balle_and_wang_and_the_pld() -> None:
    """One Gaussian mechanism: the exact noise at (1, 1e-5) is sigma = 3.73 (Balle
    and Wang 2018, against 4.84 from the classic bound), and the PLD accountant,
    pessimistic by its discretisation only, spends epsilon 1 within 0.1% of it."""
    sigma = _analytic_gaussian_sigma(1.0, 1e-5)
    assert sigma == pytest.approx(3.73, abs=0.005)
    assert epsilon("central", sigma * 1.001, 1.0, 1, 1e-5, "pld") <= 1.0
    assert epsilon("central", sigma * 0.999, 1.0, 1, 1e-5, "pld") > 1.0


def test_unsampled_calibration_starts_near_the_answer_and_keeps_its_contract(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without sampling the PLD search starts from the analytic answer: the
    multiplier is within budget, 0.1% less is over it, it agrees with the search
    from scratch to the same precision, and it takes a third of the accountant
    calls (each up to a second)."""
    calls = 0
    inner = accounting._mode_epsilon

    def counted(*args: Any) -> float:
        nonlocal calls
        calls += 1
        return inner(*args)

    monkeypatch.setattr(accounting, "_mode_epsilon", counted)
    z = noise_multiplier_for(8.0, 1e-5, 1.0, 10, "pld")
    shortcut, calls = calls, 0
    scratch = _smallest_passing(
        lambda x: accounting._mode_epsilon("central", x, 1.0, 10, 1e-5, "pld", None),
        8.0,
        0.0,
        rtol=1e-4,
    )
    assert epsilon("central", z, 1.0, 10, 1e-5, "pld") <= 8.0
    assert epsilon("central", z * 0.999, 1.0, 10, 1e-5, "pld") > 8.0
    assert z == pytest.approx(scratch, rel=2e-4)
    assert shortcut * 3 <= calls, (shortcut, calls)


@pytest.mark.slow
def test_calibration_for_local_mode() -> None:
    z = noise_multiplier_for(8.0, 1e-5, 1.0, 20, "pld", mode="local")
    assert epsilon("local", z, 1.0, 20, 1e-5, "pld") <= 8.0
    assert epsilon("local", z * 0.999, 1.0, 20, 1e-5, "pld") > 8.0


@settings(max_examples=30, deadline=None)
@given(
    # Below z = 0.5 dp-accounting's RDP series stop converging at small orders and
    # it drops those orders, which can make epsilon fall (slightly) with less
    # noise: a limit of the library, far from the noise runs use.
    z=st.floats(0.5, 5.0),
    q=st.floats(0.001, 1.0),
    rounds=st.integers(1, 2000),
    extra=st.integers(1, 2000),
    less=st.floats(0.5, 0.99),
)
def test_rdp_epsilon_grows_with_rounds_and_with_less_noise(
    z: float, q: float, rounds: int, extra: int, less: float
) -> None:
    base = epsilon("central", z, q, rounds, 1e-5, "rdp")
    assert epsilon("central", z, q, rounds + extra, 1e-5, "rdp") >= base
    assert epsilon("central", z * less, q, rounds, 1e-5, "rdp") >= base


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(
    z=st.floats(0.5, 3.0),
    q=st.floats(0.005, 0.5),
    rounds=st.integers(1, 100),
    extra=st.integers(1, 100),
    less=st.floats(0.5, 0.95),
)
def test_pld_epsilon_grows_with_rounds_and_with_less_noise(
    z: float, q: float, rounds: int, extra: int, less: float
) -> None:
    base = epsilon("central", z, q, rounds, 1e-5, "pld")
    assert epsilon("central", z, q, rounds + extra, 1e-5, "pld") >= base
    assert epsilon("central", z * less, q, rounds, 1e-5, "pld") >= base
    # The PLD accountant is the tighter one, up to its discretisation.
    assert base <= epsilon("central", z, q, rounds, 1e-5, "rdp") + 1e-3


# --------------------------------------------------------------------------- DDGauss


def test_rounded_sensitivity_follows_the_paper() -> None:
    # Unconditional: every coordinate moves by less than 1, so c/gamma + sqrt(d).
    assert rounded_l2_sensitivity(1.0, 0.01, 0.0, 400) == pytest.approx(100.0 + 20.0)
    # Conditional rounding with beta = exp(-0.5): sqrt(2 ln(1/beta)) = 1, so the
    # squared bound is x^2 + d/4 + x + sqrt(d)/2 with x = c/gamma.
    x, d = 100.0, 400
    expected = math.sqrt(x * x + d / 4 + x + math.sqrt(d) / 2)
    assert rounded_l2_sensitivity(1.0, 0.01, DEFAULT_BETA, d) == pytest.approx(expected)
    assert expected < x + math.sqrt(d)
    # With a small beta (a strict condition rarely met) the unconditional bound
    # is the smaller one: c/gamma = 1 and d = 1 give 2.
    assert rounded_l2_sensitivity(1.0, 1.0, 1e-6, 1) == pytest.approx(2.0)


def test_tau_matches_its_definition() -> None:
    assert ddgauss_tau(1.0, 1) == 0.0
    assert ddgauss_tau(1.0, 2) == pytest.approx(10 * math.exp(-(math.pi**2)))
    three = 10 * (math.exp(-(math.pi**2)) + math.exp(-2 * math.pi**2 * 2 / 3))
    assert ddgauss_tau(1.0, 3) == pytest.approx(three)
    assert ddgauss_tau(2.0, 1000) < ddgauss_tau(1.0, 1000) < ddgauss_tau(0.5, 1000)


def test_padded_dimension() -> None:
    assert [padded_dimension(d) for d in (1, 2, 3, 1000, 1024, 1025)] == [
        1,
        2,
        4,
        1024,
        1024,
        2048,
    ]
    assert padded_dimension(1_018_174) == 2**20  # EMNIST CNN of the DDGauss paper


def _gaussian_rdp_epsilon(z: float, q: float, rounds: int, delta: float) -> float:
    """Continuous Gaussian, exact sampled RDP from dp-accounting, at the DDGauss orders."""
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(DDGAUSS_ORDERS))
    gaussian = dp_accounting.GaussianDpEvent(z)
    event = gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize("dimension", [1, 2**10, 2**20])
def test_ddgauss_tends_to_the_continuous_gaussian_as_the_grid_gets_fine(dimension: int) -> None:
    z, rounds, delta = 1.1, 50, 1e-5
    gaussian = _gaussian_rdp_epsilon(z, 1.0, rounds, delta)
    gaps = []
    for gamma in (1e-2, 1e-4, 1e-6):
        setup = DDGaussSetup(dimension, 1.0, gamma, DEFAULT_BETA, noise_shares=100)
        dd = epsilon("distributed", z, 1.0, rounds, delta, "rdp", ddgauss=setup)
        assert dd >= gaussian * (1 - 1e-9)  # never better than the continuous mechanism
        gaps.append(dd - gaussian)
    assert gaps[0] >= gaps[1] >= gaps[2]
    assert gaps[2] < 1e-3 * gaussian


def test_ddgauss_with_sampling_stays_close_to_the_sampled_gaussian() -> None:
    # Same central noise, fine grid: the only difference left is the sampling
    # bound (Zhu-Wang's general bound against the Gaussian's exact one).
    setup = DDGaussSetup(2**16, 1.0, 1e-6, DEFAULT_BETA, noise_shares=100)
    dd = epsilon("distributed", 1.1, DPSGD_Q, DPSGD_STEPS, DPSGD_DELTA, "rdp", ddgauss=setup)
    gaussian = _gaussian_rdp_epsilon(1.1, DPSGD_Q, DPSGD_STEPS, DPSGD_DELTA)
    assert gaussian == pytest.approx(2.60, abs=0.01)
    assert gaussian <= dd <= 1.10 * gaussian


def test_zhu_wang_bound_is_exact_at_order_two_for_the_gaussian_and_never_worse() -> None:
    z, q = 1.1, 0.01
    plain = np.array([a / (2 * z * z) for a in DDGAUSS_ORDERS])
    bound = poisson_subsampled_rdp(plain, q)
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(DDGAUSS_ORDERS))
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)))
    exact = np.asarray(acc._rdp)
    assert bound[0] == pytest.approx(exact[0], rel=1e-9)
    assert np.all(bound >= exact * (1 - 1e-9))
    assert np.all(bound <= plain)
    assert np.array_equal(poisson_subsampled_rdp(plain, 1.0), plain)


def test_ddgauss_below_half_an_integer_step_of_noise_claims_nothing() -> None:
    setup = DDGaussSetup(16, 1.0, 1.0, DEFAULT_BETA, noise_shares=4)
    assert ddgauss_epsilon(setup, 0.49, 0.1, 10, 1e-5) == math.inf
    assert ddgauss_epsilon(setup, 0.5, 0.1, 10, 1e-5) < math.inf


# The paper's dropout study (Section 6, privacy degradation under client
# dropout; `plot_client_dropout.py` of google-research/federated/distributed_dp):
# n = 100 meters per round, no sampling, T = 1500, d = 2^20, c = 1, beta =
# exp(-0.5), delta = 1e-5, k = 4 standard deviations.
DROPOUT_SETTING = {
    "dimension": 2**20,
    "clip_norm": 1.0,
    "noise_shares": 100,
    "sampling_rate": 1.0,
    "rounds": 1500,
    "beta": DEFAULT_BETA,
    "k_stddevs": 4.0,
}


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_ddgauss_parameters_meet_the_target_and_fill_the_bits(target: float) -> None:
    params = choose_ddgauss_parameters(target, 1e-5, bits=20, **DROPOUT_SETTING)  # type: ignore[arg-type]
    assert params.epsilon <= target
    assert params.epsilon == pytest.approx(target, rel=1e-3)
    assert params.integer_stddev >= 0.5
    n, d, c, k = 100, 2**20, 1.0, 4.0

    def spread_in_steps(gamma: float, sigma: float) -> float:
        return 2 * k * math.sqrt(c * c * n * n / d + n * (gamma**2 / 4 + sigma**2)) / gamma

    # k stddevs of the aggregate fit in 2^b, and a finer grid would not fit.
    assert spread_in_steps(params.gamma, params.local_stddev) <= 2**20
    finer = params.gamma * 0.99
    assert spread_in_steps(finer, params.local_stddev) > 2**20
    # What is left of the price against the continuous Gaussian at the same
    # epsilon (no sampling, so exact RDP) is the rounding's inflation of the
    # sensitivity: the central noise over the rounded norm bound is the
    # Gaussian's multiplier (tau vanishes at these noise levels).
    z_gauss = noise_multiplier_for(target, 1e-5, 1.0, 1500, "rdp")
    inflation = params.l2_sensitivity * params.gamma / c
    assert params.noise_multiplier == pytest.approx(z_gauss * inflation, rel=1e-3)
    assert 1.0 < inflation < 1.5


def test_ddgauss_more_bits_buy_back_the_rounding_price() -> None:
    z_gauss = noise_multiplier_for(4.0, 1e-5, 1.0, 1500, "rdp")
    prices = [
        choose_ddgauss_parameters(4.0, 1e-5, bits=b, **DROPOUT_SETTING).noise_multiplier  # type: ignore[arg-type]
        / z_gauss
        for b in (18, 20, 24)
    ]
    assert prices[0] > prices[1] > prices[2] > 1.0
    assert prices[2] < 1.002


def test_ddgauss_dropouts_raise_epsilon_as_less_noise_survives() -> None:
    params = choose_ddgauss_parameters(2.0, 1e-5, bits=20, **DROPOUT_SETTING)  # type: ignore[arg-type]
    spent = []
    for drop in (0.0, 0.1, 0.3, 0.5):
        survivors = round(100 * (1 - drop))
        setup = DDGaussSetup(2**20, 1.0, params.gamma, DEFAULT_BETA, survivors)
        eps = ddgauss_epsilon(setup, params.local_stddev, 1.0, 1500, 1e-5)
        # tau vanishes here, so this is the continuous Gaussian whose multiplier
        # is the surviving noise, sqrt(survivors) s, over the rounded sensitivity.
        z = math.sqrt(survivors) * params.integer_stddev / params.l2_sensitivity
        assert eps == pytest.approx(_gaussian_rdp_epsilon(z, 1.0, 1500, 1e-5), rel=1e-6)
        spent.append(eps)
    assert spent[0] == pytest.approx(2.0, rel=1e-3)
    assert spent == sorted(spent)
    assert spent[3] > 2.5  # half the meters gone: well over the planned budget


def test_ddgauss_parameters_for_the_papers_emnist_setting() -> None:
    # EMNIST in the paper: 3400 clients, 100 per round, 1500 rounds, c = 0.03,
    # d = 2^20 after padding, delta = 1/N, epsilon = 10. The paper reports
    # DDGauss matching central DP from 16 bits on; the noise it needs then is
    # within a few per cent of the continuous Gaussian under the same RDP
    # sampling bound, and falls as the bit width grows.
    q, rounds, delta = 100 / 3400, 1500, 1 / 3400
    multipliers = []
    for bits in (12, 16, 20):
        params = choose_ddgauss_parameters(
            10.0,
            delta,
            dimension=2**20,
            clip_norm=0.03,
            bits=bits,
            noise_shares=100,
            sampling_rate=q,
            rounds=rounds,
        )
        assert params.epsilon <= 10.0
        multipliers.append(params.noise_multiplier)
    assert multipliers[0] > multipliers[1] > multipliers[2]
    setup = DDGaussSetup(2**20, 0.03, 1e-9, DEFAULT_BETA, 100)
    limit = noise_multiplier_for(10.0, delta, q, rounds, "rdp", mode="distributed", ddgauss=setup)
    assert multipliers[1] == pytest.approx(limit, rel=0.01)
    assert multipliers[0] > 1.5 * limit  # 12 bits: the coarse grid costs a lot


def test_ddgauss_summary_is_enough_to_recompute_epsilon() -> None:
    params = choose_ddgauss_parameters(
        3.0,
        1e-6,
        dimension=2**12,
        clip_norm=0.5,
        bits=18,
        noise_shares=40,
        sampling_rate=0.05,
        rounds=300,
    )
    s = params.summary()
    setup = DDGaussSetup(
        int(s["dimension"]),
        float(s["clip_norm"]),
        float(s["gamma"]),
        float(s["beta"]),
        int(s["noise_shares"]),
    )
    recomputed = epsilon(
        "distributed",
        float(s["noise_multiplier"]),
        float(s["sampling_rate"]),
        int(s["rounds"]),
        float(s["delta"]),
        "rdp",
        ddgauss=setup,
    )
    assert recomputed == pytest.approx(float(s["epsilon"]), rel=1e-9)
    assert recomputed <= 3.0
    assert params.mechanism().local_stddev == params.local_stddev


@settings(max_examples=40, deadline=None)
@given(
    integer_stddev=st.floats(0.5, 50.0),
    shares=st.integers(2, 200),
    fewer=st.integers(1, 199),
    q=st.floats(0.001, 1.0),
    rounds=st.integers(1, 1000),
    dimension=st.sampled_from([1, 16, 2**10, 2**16]),
    clip_steps=st.floats(1.0, 1e4),
)
def test_ddgauss_epsilon_grows_with_rounds_and_with_less_noise(
    integer_stddev: float,
    shares: int,
    fewer: int,
    q: float,
    rounds: int,
    dimension: int,
    clip_steps: float,
) -> None:
    gamma = 1e-3
    setup = DDGaussSetup(dimension, clip_steps * gamma, gamma, DEFAULT_BETA, shares)
    sigma = integer_stddev * gamma
    base = ddgauss_epsilon(setup, sigma, q, rounds, 1e-5)
    assert ddgauss_epsilon(setup, sigma, q, rounds + 1, 1e-5) >= base
    assert ddgauss_epsilon(setup, sigma * 0.9, q, rounds, 1e-5) >= base
    dropped = DDGaussSetup(
        dimension, clip_steps * gamma, gamma, DEFAULT_BETA, max(1, shares - fewer)
    )
    assert ddgauss_epsilon(dropped, sigma, q, rounds, 1e-5) >= base


def test_ddgauss_parameters_refuse_too_few_bits() -> None:
    # 16 bits cannot hold 4 stddevs of 100 meters' sums in 2^20 coordinates at
    # epsilon 4: a coarser grid inflates the rounded norm, which needs more
    # noise, which needs a coarser grid again.
    with pytest.raises(InvalidInputError, match="16 bits"):
        choose_ddgauss_parameters(4.0, 1e-5, bits=16, **DROPOUT_SETTING)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="bits"):
        choose_ddgauss_parameters(
            1.0,
            1e-5,
            dimension=1024,
            clip_norm=1.0,
            bits=4,
            noise_shares=100,
            sampling_rate=1.0,
            rounds=10,
        )


def test_distributed_calibration_round_trips() -> None:
    setup = DDGaussSetup(2**12, 1.0, 1e-3, DEFAULT_BETA, noise_shares=50)
    z = noise_multiplier_for(3.0, 1e-5, 0.1, 200, "rdp", mode="distributed", ddgauss=setup)
    assert epsilon("distributed", z, 0.1, 200, 1e-5, "rdp", ddgauss=setup) <= 3.0
    assert epsilon("distributed", z * 0.999, 0.1, 200, 1e-5, "rdp", ddgauss=setup) > 3.0


def test_rdp_to_epsilon_of_nothing_spent_is_zero() -> None:
    assert rdp_to_epsilon(np.zeros(len(DDGAUSS_ORDERS)), 1e-5) == 0.0
    assert rdp_to_epsilon(np.full(len(DDGAUSS_ORDERS), np.inf), 1e-5) == math.inf


# --------------------------------------------------------------------------- budgets


@pytest.mark.slow
def test_sampled_ledger_runs_exactly_the_calibrated_rounds() -> None:
    meters = [f"meter-{i:03d}" for i in range(200)]
    q, rounds, budget, delta = 0.05, 20, 1.5, 1e-5
    z = noise_multiplier_for(budget, delta, q, rounds, "pld")
    ledger = PrivacyLedger(
        meters, GaussianRounds("central", z, q), epsilon_budget=budget, delta=delta
    )
    rng = np.random.default_rng(20261126)
    reported = []
    while ledger.eligible():
        drawn = [m for m in meters if rng.random() < q]
        booked = ledger.record_round(drawn)
        reported.append(booked.epsilon_spent)
        assert ledger.max_spent() <= budget
    assert ledger.rounds_recorded == rounds
    assert reported == sorted(reported)
    assert reported[-1] == pytest.approx(epsilon("central", z, q, rounds, delta), rel=1e-12)
    # Everyone is charged alike, drawn or not.
    assert ledger.spent("meter-000") == ledger.spent("meter-199") == reported[-1]
    assert not ledger.can_participate("meter-000")
    with pytest.raises(InvalidInputError, match="budget"):
        ledger.record_round(meters[:3])
    assert ledger.rounds_recorded == rounds


def test_participation_ledger_stops_each_meter_at_its_own_budget() -> None:
    budget, delta, z = 2.0, 1e-5, 3.0
    ledger = PrivacyLedger(
        ["busy", "idle", "half"],
        GaussianRounds("central", z, 0.1),
        epsilon_budget=budget,
        delta=delta,
        semantics="participation",
    )
    # The most rounds an unsampled Gaussian at multiplier z fits in the budget.
    allowed = 1
    while epsilon("central", z, 1.0, allowed + 1, delta) <= budget:
        allowed += 1
    for r in range(3 * allowed):
        participants = [m for m in ("busy", "half") if ledger.can_participate(m)]
        if r % 2 == 1:
            participants = [m for m in participants if m != "half"]
        ledger.record_round(participants)
        for meter in ("busy", "idle", "half"):
            assert ledger.spent(meter) <= budget
    assert ledger.participations("busy") == allowed
    assert ledger.participations("half") == allowed
    assert ledger.participations("idle") == 0
    assert ledger.spent("idle") == 0.0
    assert ledger.can_participate("idle")
    assert not ledger.can_participate("busy")
    assert ledger.spent("busy") == pytest.approx(epsilon("central", z, 1.0, allowed, delta))
    with pytest.raises(InvalidInputError, match="budget"):
        ledger.record_round(["busy"])


def test_local_ledger_counts_participations_only() -> None:
    mech = GaussianRounds("local", 8.0, 0.5)
    ledger = PrivacyLedger(["a", "b"], mech, epsilon_budget=3.0, delta=1e-5)
    assert ledger.semantics == "participation"
    ledger.record_round(["a"])
    assert ledger.spent("a") == pytest.approx(epsilon("local", 8.0, 1.0, 1, 1e-5))
    assert ledger.spent("b") == 0.0
    with pytest.raises(InvalidInputError, match="amplification"):
        PrivacyLedger(["a"], mech, epsilon_budget=3.0, delta=1e-5, semantics="sampled")


def test_distributed_ledger_charges_dropouts_and_withholds_rounds_over_budget() -> None:
    params = choose_ddgauss_parameters(
        1.0,
        1e-5,
        dimension=2**10,
        clip_norm=1.0,
        bits=16,
        noise_shares=20,
        sampling_rate=0.2,
        rounds=30,
    )
    mech = DDGaussRounds(params.setup, params.local_stddev, 0.2)
    meters = list(range(100))
    full = PrivacyLedger(meters, mech, epsilon_budget=1.0, delta=1e-5)
    short = PrivacyLedger(meters, mech, epsilon_budget=1.0, delta=1e-5)
    for _ in range(10):
        full.record_round(meters[:20])
        short.record_round(meters[:20], noise_shares=12)  # 8 of 20 dropped out
    assert full.max_spent() < short.max_spent() <= 1.0
    assert full.max_spent() == pytest.approx(
        ddgauss_epsilon(params.setup, params.local_stddev, 0.2, 10, 1e-5), rel=1e-9
    )
    # The shortfall eats the budget: the full plan of 30 rounds no longer fits.
    booked = 10
    while short.admissible(meters[:20], noise_shares=20):
        short.record_round(meters[:20])
        booked += 1
    assert booked < 30
    assert short.max_spent() <= 1.0
    before = short.rounds_recorded
    with pytest.raises(InvalidInputError, match="budget"):
        short.record_round(meters[:20], noise_shares=20)
    assert short.rounds_recorded == before
    # Run as planned, the full ledger admits exactly the planned rounds.
    while full.admissible(meters[:20]):
        full.record_round(meters[:20])
    assert full.rounds_recorded == 30
    assert full.max_spent() == pytest.approx(params.epsilon, rel=1e-9)


def test_ledger_refuses_unknown_meters_and_misplaced_noise_shares() -> None:
    ledger = PrivacyLedger(
        ["a"], GaussianRounds("central", 1.0, 0.1), epsilon_budget=1.0, delta=1e-5
    )
    with pytest.raises(InvalidInputError, match="unknown meter"):
        ledger.can_participate("b")
    with pytest.raises(InvalidInputError, match="noise_shares"):
        ledger.record_round(["a"], noise_shares=3)
