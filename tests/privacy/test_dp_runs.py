"""Differential privacy in runs: calibration to a budget, clipping, the budget stop."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gridsim.config import RunConfig
from gridsim.exceptions import ConfigError
from gridsim.learning.batched import TrainConfig
from gridsim.meter.training_pool import privatize
from gridsim.privacy.accounting import epsilon_from_record
from gridsim.privacy.settings import DEFAULT_EPSILON, noise_to_signal, resolve_dp
from gridsim.run import dp_settings, run
from gridsim.transport.broker import BrokerAddress


def _cfg(tmp_path: Path, address: BrokerAddress, **over: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        meters=20,
        rounds=3,
        seed=2,
        days=10,
        test_days=2,
        centralized_baseline=False,
        out=str(tmp_path / "out"),
        broker=address.url,
        round_timeout_s=30.0,
    )
    base.update(over)
    return RunConfig(**base)


RECORD_KEYS = ("mode", "noise_multiplier", "clip_norm", "sampling_rate", "delta", "accountant")
DDGAUSS_KEYS = ("dimension", "gamma", "beta", "noise_shares")


def _recorded(dp: dict[str, Any]) -> dict[str, Any]:
    """The DP parameters of summary.json that recompute epsilon (as a ledger record has them)."""
    keys = RECORD_KEYS + (DDGAUSS_KEYS if dp["mode"] == "distributed" else ())
    return {k: dp[k] for k in keys}


def test_clipping_bounds_every_update_and_local_noise_is_added() -> None:
    rng = np.random.default_rng(0)
    delta = (rng.normal(size=(5, 100)) * np.array([[0.01], [0.1], [1], [10], [100]])).astype(
        np.float32
    )
    clipped = privatize(delta, TrainConfig(clip_norm=1.0))
    norms = np.linalg.norm(clipped.astype(np.float64), axis=1)
    assert (norms <= 1.0 + 1e-5).all()
    np.testing.assert_allclose(clipped[0], delta[0], rtol=1e-6)  # small ones are untouched
    noisy = privatize(delta, TrainConfig(clip_norm=1.0, local_noise=0.5))
    spread = float(np.std(noisy.astype(np.float64) - clipped))
    assert 0.45 < spread < 0.55  # sd 0.5 over 500 draws: outside this w.p. < 1e-6


def test_resolve_dp_rejects_what_it_cannot_honour() -> None:
    common = dict(delta=1e-5, clip_norm=1.0, sampling_rate=1.0, rounds=5)
    with pytest.raises(ConfigError, match="drop --no-secagg"):
        resolve_dp("distributed", epsilon=1.0, noise_multiplier=None, secagg=False, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--epsilon must be positive"):
        resolve_dp("central", epsilon=-1.0, noise_multiplier=None, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="1/2"):
        # So little noise that at 8 bits a meter's share is below half a step.
        resolve_dp(
            "distributed",
            epsilon=None,
            noise_multiplier=0.001,
            dimension=100,
            noise_shares=10,
            bits=8,
            **common,  # type: ignore[arg-type]
        )
    assert resolve_dp("off", epsilon=None, noise_multiplier=None, **common) is None  # type: ignore[arg-type]
    assert resolve_dp("auto", epsilon=None, noise_multiplier=None, secagg=False, **common) is None  # type: ignore[arg-type]
    dp = resolve_dp("central", epsilon=2.0, noise_multiplier=None, **common)  # type: ignore[arg-type]
    assert dp is not None and dp.epsilon_after(5) <= 2.0 and dp.accountant == "pld"
    # Calibrated, not padded: 1% less noise would overspend.
    tighter = dict(dp.record(), noise_multiplier=dp.noise_multiplier * 0.99)
    assert epsilon_from_record(tighter, 5) > 2.0
    # Neither budget nor noise: the default budget.
    default = resolve_dp("central", epsilon=None, noise_multiplier=None, **common)  # type: ignore[arg-type]
    assert default is not None and default.budget == DEFAULT_EPSILON


def test_distributed_dp_is_the_default_with_secure_aggregation() -> None:
    common = dict(delta=1e-5, clip_norm=1.0, sampling_rate=1.0, rounds=5)
    dp = resolve_dp(
        "auto",
        epsilon=4.0,
        noise_multiplier=None,
        secagg=True,
        dimension=7876,
        noise_shares=460,
        **common,  # type: ignore[arg-type]
    )
    assert dp is not None and dp.mode == "distributed" and dp.ddgauss is not None
    record = dp.record()
    assert record["bits"] == 20 and record["dimension"] == 8192 and record["noise_shares"] == 460
    assert 3.99 < dp.epsilon_after(5) <= 4.0 == pytest.approx(epsilon_from_record(record, 5), 1e-3)
    # Distributed costs little over central at this size: within 10% more noise.
    central = resolve_dp("central", epsilon=4.0, noise_multiplier=None, **common)  # type: ignore[arg-type]
    assert central is not None
    assert central.noise_multiplier < dp.noise_multiplier < 1.1 * central.noise_multiplier


@pytest.mark.broker
def test_central_dp_run_spends_at_most_its_budget_and_the_ledger_agrees(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    summary = run(_cfg(tmp_path, mosquitto, dp="central", epsilon=4.0))
    dp = summary["dp"]
    assert dp["mode"] == "central" and dp["rounds"] == 3
    assert 3.9 < dp["epsilon"] <= 4.0 and dp["accountant"] == "pld"
    assert dp["epsilon"] <= dp["epsilon_rdp"]  # the cross-check never comes out tighter
    assert epsilon_from_record(
        _recorded(dp),
        3,
    ) == pytest.approx(dp["epsilon"])
    assert summary["ledger"]["verified"]  # the auditor recomputed every round's epsilon
    assert np.isfinite(summary["metrics"]["rmse"])
    # Clipped updates fit secure aggregation's range: nothing saturates.
    assert summary["secagg"]["saturated_values"] == 0 and summary["secagg"]["clip"] >= 1.0


@pytest.mark.broker
def test_a_run_stops_training_when_its_budget_is_spent(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    # Noise as given, epsilon as a cap: 6 rounds at z = 2 would spend about 4.9.
    summary = run(
        _cfg(tmp_path, mosquitto, rounds=6, dp="central", noise_multiplier=2.0, epsilon=3.0)
    )
    dp = summary["dp"]
    assert dp["epsilon"] <= 3.0 and dp["rounds"] < 6
    assert summary["rounds_completed"] == dp["rounds"]
    assert dp["stopped"] and "budget of 3" in dp["stopped"]
    assert summary["ledger"]["verified"]


@pytest.mark.broker
def test_local_dp_run_reports_what_it_spent(tmp_path: Path, mosquitto: BrokerAddress) -> None:
    summary = run(_cfg(tmp_path, mosquitto, rounds=2, dp="local", noise_multiplier=0.8))
    dp = summary["dp"]
    assert dp["mode"] == "local" and dp["rounds"] == 2 and dp["epsilon"] > 0
    assert dp["budget"] is None and summary["ledger"]["verified"]
    # The meters' own noise passes through secure aggregation's range unclipped.
    assert summary["secagg"]["saturated_values"] == 0
    assert summary["secagg"]["clip"] > 6 * dp["noise_multiplier"] * dp["clip_norm"]


@pytest.mark.broker
def test_distributed_dp_run_sums_exactly_and_spends_at_most_its_budget(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    """The default with SecAgg+: DDGauss noise shares inside the masked sum."""
    summary = run(
        _cfg(tmp_path, mosquitto, epsilon=6.0, verify=True, dropout=0.1, round_timeout_s=4.0)
    )
    dp, sa = summary["dp"], summary["secagg"]
    assert dp["mode"] == "distributed" and dp["accountant"] == "rdp"
    assert dp["bits"] == sa["modulus_bits"] == 20 and 0 < dp["beta"] < 1
    assert dp["dimension"] == 8192 and dp["noise_shares"] <= 20
    assert dp["rounds"] == summary["rounds_completed"] - summary["participants_per_round"].count(0)
    assert dp["epsilon"] <= 6.0 and dp["budget"] == 6.0
    # Every unmasked sum equals the plain sum of the meters' noisy encodings, bit for bit.
    assert sa["verified_rounds"] == dp["rounds"] > 0 and sa["verify_failures"] == 0
    # Every released round had at least the planned noise shares.
    released = [p for p in summary["participants_per_round"] if p]
    assert min(released) >= dp["noise_shares"]
    recomputed = epsilon_from_record(
        _recorded(dp),
        dp["rounds"],
    )
    assert recomputed == pytest.approx(dp["epsilon"])
    assert summary["ledger"]["verified"]
    assert np.isfinite(summary["metrics"]["rmse"])


def test_noise_multiplier_input_for_distributed_reports_its_spend_and_records_round_trip() -> None:
    from gridsim.privacy.settings import DPSettings

    common = dict(delta=1e-5, clip_norm=1.0, sampling_rate=1.0, rounds=5)
    dp = resolve_dp(
        "distributed",
        epsilon=None,
        noise_multiplier=3.0,
        dimension=7876,
        noise_shares=460,
        **common,  # type: ignore[arg-type]
    )
    assert dp is not None and dp.ddgauss is not None and dp.budget is None
    assert dp.noise_multiplier == 3.0
    # The codec's noise is the noise the record claims: sqrt(n) shares of sd sigma * gamma.
    codec = dp.codec(7876)
    assert codec.sigma * codec.gamma * math.sqrt(460) == pytest.approx(3.0)
    # More noise than the default budget needs: it spends less than epsilon 8 would.
    assert 0 < dp.epsilon_after(5) < dp.ddgauss.epsilon * 1.000001 < 8.0
    # A replacement aggregator rebuilds the same settings from a ledger record.
    again = DPSettings.from_record(dp.record(), rounds=5, budget=None)
    assert again.record() == dp.record() and again.codec(7876) == codec
    assert again.epsilon_after(5) == dp.epsilon_after(5)


@pytest.mark.broker
def test_sampled_run_also_reports_the_guarantee_of_known_participation(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    summary = run(
        _cfg(tmp_path, mosquitto, dp="central", noise_multiplier=1.5, fraction=0.5, secagg=False)
    )
    dp = summary["dp"]
    assert dp["sampling_rate"] == 0.5 and dp["rounds"] == 3
    # Each meter is drawn independently: counts vary, none exceeds the rounds.
    assert 1 <= dp["max_participations"] <= 3
    assert max(summary["participants_per_round"]) <= 20
    unamplified = dict(_recorded(dp), sampling_rate=1.0)
    assert dp["epsilon_participation"] == pytest.approx(
        epsilon_from_record(unamplified, dp["max_participations"])
    )
    # Amplification is worth something: the sampled epsilon is below that of
    # being known to take part in every round.
    assert dp["epsilon"] < epsilon_from_record(unamplified, 3)


def test_noise_to_signal_tells_a_fleet_too_small_for_its_budget() -> None:
    """At the default budget 500 meters over 10 rounds get noise below the
    largest averaged update, 20 meters over 50 rounds several times more; local
    DP (every meter noised) swamps even 500 meters at the same multiplier."""
    dim = 7876
    ratios = {}
    for meters, rounds in [(500, 10), (20, 50)]:
        dp = dp_settings(RunConfig(meters=meters, rounds=rounds, dp="distributed"), dim)
        assert dp is not None
        ratios[meters] = noise_to_signal(dp, meters, dim)
        local = dataclasses.replace(dp, mode="local", ddgauss=None)
        assert noise_to_signal(local, meters, dim) > 1
    assert ratios[500] < 1
    assert ratios[20] > 3
