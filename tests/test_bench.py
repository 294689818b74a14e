"""The benchmarks a reader runs print what the README says they print (tiny sizes here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.broker


def _bench(*args: str) -> dict[str, object]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "gridsim", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def test_bench_transport_compares_the_clients_per_request_and_reply() -> None:
    result = _bench("transport", "--meters", "20", "--trials", "3", "--clients", "lean,aiomqtt")
    lean, aio = result["lean"], result["aiomqtt"]
    assert isinstance(lean, dict) and isinstance(aio, dict)
    for client in (lean, aio):
        assert client["loop_cpu_us_per_request_reply"] > 0
        assert client["trial_wall_ms"] > 0
    ratio = aio["loop_cpu_us_per_request_reply"] / lean["loop_cpu_us_per_request_reply"]
    assert result["lean_cpu_advantage_over_aiomqtt"] == pytest.approx(ratio, abs=0.01)


def test_bench_e2e_alternates_plain_and_secure_runs_and_pools_their_rounds(
    tmp_path: Path,
) -> None:
    result = _bench(
        "e2e",
        "--meters",
        "12",
        "--rounds",
        "2",
        "--repeat",
        "2",
        "--loop-sample",
        "0",
        "--flower-rounds",
        "0",
        "--no-with-dp",
        "--dropout",
        "0",
        "--out",
        str(tmp_path),
    )
    plain, secure = result["gridsim"], result["gridsim_secagg"]
    assert isinstance(plain, dict) and isinstance(secure, dict)
    assert (plain["runs"], plain["rounds_pooled"]) == (2, 4)
    assert (secure["runs"], secure["rounds_pooled"]) == (2, 4)
    assert result["secagg_round_overhead"] == pytest.approx(
        secure["median_round_s"] / plain["median_round_s"]
    )
    assert secure["rounds_abandoned"] == 0
    # Alternating: each run's folder, in order.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "plain-1",
        "plain-2",
        "secagg-1",
        "secagg-2",
    ]
