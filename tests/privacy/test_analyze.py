"""``python -m gridsim analyze``: forecast error against epsilon, per DP mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


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
