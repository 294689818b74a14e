"""Meters account the DP they are offered and stay out of rounds over their budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gridsim.privacy.guard import MeterBudget
from gridsim.privacy.settings import resolve_dp
from gridsim.transport.broker import BrokerAddress

ROOT = Path(__file__).resolve().parents[2]
COMMON = dict(delta=1e-5, clip_norm=1.0, sampling_rate=1.0)


def _central(z: float) -> dict[str, object]:
    dp = resolve_dp("central", epsilon=None, noise_multiplier=z, rounds=4, **COMMON)  # type: ignore[arg-type]
    assert dp is not None
    return dp.record()


def test_a_meter_refuses_rounds_past_its_budget_and_rounds_without_dp() -> None:
    record = _central(2.0)
    dp = resolve_dp("central", epsilon=None, noise_multiplier=2.0, rounds=4, **COMMON)  # type: ignore[arg-type]
    assert dp is not None
    budget = MeterBudget(dp.epsilon_after(2) * 1.000001, 1e-5)
    assert budget.refusal(0, record, None, 10) is None
    assert budget.refusal(1, record, None, 10) is None
    reason = budget.refusal(2, record, None, 10)
    assert reason is not None and "would have spent epsilon" in reason
    assert "not differentially private" in str(budget.refusal(0, None, None, 10))
    assert "delta" in str(MeterBudget(100.0, 1e-6).refusal(0, record, None, 10))
    assert "cannot be accounted" in str(budget.refusal(0, {"mode": "central"}, None, 10))


def test_a_meter_refuses_an_encoding_with_less_noise_than_announced() -> None:
    dp = resolve_dp(
        "distributed",
        epsilon=4.0,
        noise_multiplier=None,
        rounds=5,
        dimension=7876,
        noise_shares=460,
        **COMMON,  # type: ignore[arg-type]
    )
    assert dp is not None
    c = dp.codec(7876)
    plan = c.plan()
    budget = MeterBudget(4.0, 1e-5)
    assert budget.refusal(4, dp.record(), plan, 7876) is None
    assert "would have spent" in str(budget.refusal(5, dp.record(), plan, 7876))
    # An aggregator that asks for half the noise it accounts for is caught.
    weak = dict(plan, sigma=c.sigma / 2)
    assert "does not match" in str(budget.refusal(0, dp.record(), weak, 7876))
    assert "without its encoding" in str(budget.refusal(0, dp.record(), None, 7876))


@pytest.mark.broker
def test_meters_with_a_smaller_budget_stop_contributing(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    """The aggregator has no budget (noise multiplier only); the meters have one."""
    dp = resolve_dp("central", epsilon=None, noise_multiplier=2.0, rounds=4, **COMMON)  # type: ignore[arg-type]
    assert dp is not None
    meter_epsilon = dp.epsilon_after(2) * 1.000001  # enough for exactly two rounds
    common = ["--broker", mosquitto.url, "--session", "guard", "--days", "8", "--test-days", "2"]
    run = lambda *a: subprocess.Popen(  # noqa: E731
        [sys.executable, "-m", "gridsim", *a],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    meters = run("meters", "--ids", "0-5", "--epsilon", repr(meter_epsilon), *common)
    try:
        agg = run(
            "aggregator",
            "--meters",
            "6",
            "--rounds",
            "4",
            "--out",
            str(tmp_path),
            "--no-secagg",
            "--dp",
            "central",
            "--noise-multiplier",
            "2",
            "--round-timeout",
            "3",
            *common,
        )
        _out, err = agg.communicate(timeout=300)
        assert agg.returncode == 0, err[-2000:]
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["participants_per_round"] == [6, 6, 0, 0]
        assert summary["dp"]["rounds"] == 2 and summary["dp"]["epsilon"] <= meter_epsilon
        out, err = meters.communicate(timeout=60)
        assert meters.returncode == 0, err[-2000:]
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["budget_refusals"] == 12  # 6 meters, rounds 2 and 3
        assert "would have spent epsilon" in err
    finally:
        meters.kill()
