"""Differential privacy in runs: calibration to a budget, clipping, the budget stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gridsim.config import RunConfig
from gridsim.exceptions import ConfigError
from gridsim.learning.batched import TrainConfig
from gridsim.meter.training_pool import privatize
from gridsim.privacy.accounting import epsilon_from_record
from gridsim.privacy.settings import resolve_dp
from gridsim.run import run
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
    with pytest.raises(ConfigError, match="not available"):
        resolve_dp("distributed", epsilon=1.0, noise_multiplier=None, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--epsilon or --noise-multiplier"):
        resolve_dp("central", epsilon=None, noise_multiplier=None, **common)  # type: ignore[arg-type]
    assert resolve_dp("off", epsilon=None, noise_multiplier=None, **common) is None  # type: ignore[arg-type]
    dp = resolve_dp("central", epsilon=2.0, noise_multiplier=None, **common)  # type: ignore[arg-type]
    assert dp is not None and dp.epsilon_after(5) <= 2.0
    # Calibrated, not padded: 1% less noise would overspend.
    tighter = dict(dp.record(), noise_multiplier=dp.noise_multiplier * 0.99)
    assert epsilon_from_record(tighter, 5) > 2.0


@pytest.mark.broker
def test_central_dp_run_spends_at_most_its_budget_and_the_ledger_agrees(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    summary = run(_cfg(tmp_path, mosquitto, dp="central", epsilon=4.0))
    dp = summary["dp"]
    assert dp["mode"] == "central" and dp["rounds"] == 3
    assert 3.9 < dp["epsilon"] <= 4.0
    assert 0 < dp["epsilon_pld"] <= dp["epsilon"]
    assert epsilon_from_record(
        {
            k: dp[k]
            for k in (
                "mode",
                "noise_multiplier",
                "clip_norm",
                "sampling_rate",
                "delta",
                "accountant",
            )
        },
        3,
    ) == pytest.approx(dp["epsilon"])
    assert summary["ledger"]["verified"]  # the auditor recomputed every round's epsilon
    assert np.isfinite(summary["metrics"]["rmse"])


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
