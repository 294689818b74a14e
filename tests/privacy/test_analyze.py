"""``python -m gridsim analyze``: forecast error against epsilon, per DP mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gridsim.config import RunConfig
from gridsim.run import run
from gridsim.transport.broker import BrokerAddress


@pytest.mark.slow
def test_analyze_prints_error_against_epsilon_for_each_mode(tmp_path: Path) -> None:
    out = tmp_path / "pu.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gridsim",
            "analyze",
            "--meters",
            "20",
            "--rounds",
            "2",
            "--days",
            "8",
            "--test-days",
            "2",
            "--epsilons",
            "0.5,inf",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    points = {(p["mode"], p["epsilon_budget"]): p for p in doc["points"]}
    assert set(points) == {("central", 0.5), ("distributed", 0.5), ("off", None)}
    for mode in ("central", "distributed"):
        p = points[(mode, 0.5)]
        assert 0 < p["epsilon_spent"] <= 0.5
        assert math.isfinite(p["rmse_median"])
        # 20 meters cannot hide each other at epsilon 0.5: the noise costs accuracy.
        assert p["rmse_median"] > points[("off", None)]["rmse_median"]
    assert "distributed" in proc.stderr and "RMSE" in proc.stderr


def test_analyze_refuses_a_bad_epsilon() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gridsim", "analyze", "--epsilons", "0,1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "epsilon must be positive" in proc.stderr


@pytest.mark.broker
def test_analyze_tabulates_finished_runs_and_draws_them(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    common: dict[str, Any] = dict(
        meters=12,
        rounds=2,
        seed=3,
        days=8,
        test_days=2,
        centralized_baseline=False,
        broker=mosquitto.url,
        round_timeout_s=30.0,
    )
    private = run(RunConfig(**common, dp="central", epsilon=3.0, out=str(tmp_path / "dp")))
    plain = run(RunConfig(**common, dp="off", out=str(tmp_path / "plain")))
    html = tmp_path / "pu.html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gridsim",
            "analyze",
            private["out"],
            plain["out"],
            "--html",
            str(html),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    points = json.loads(proc.stdout)["points"]
    assert [p["mode"] for p in points] == ["central", "off"]
    assert points[0]["epsilon_spent"] == pytest.approx(private["dp"]["epsilon"])
    assert points[0]["epsilon_spent"] <= 3.0 and points[1]["epsilon_spent"] is None
    assert points[1]["rmse_median"] == plain["metrics"]["rmse"]
    page = html.read_text()
    assert "Forecast error against the privacy budget" in page and "central" in page
    bad = subprocess.run(
        [sys.executable, "-m", "gridsim", "analyze", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "not a run summary" in bad.stderr
