"""``gridsim bench dp``: exact discrete Gaussian noise, samples per second.

Measured in one process run, on the same machine:

* gridsim's exact sampler (Rust core) on one thread and on every core;
* OpenDP's exact discrete Gaussian (``make_gaussian`` on an i64 vector domain),
  from the optional ``bench`` extra;
* numpy's ``Generator.normal`` rounded to integers, which is fast but neither
  exact nor safe (Mironov, CCS 2012): the baseline users fall back to.

Each figure is the median wall time of ``--repeat`` runs after one warm-up run.
gridsim and numpy are timed on ``--size`` samples; OpenDP, about 300 times
slower, on ``--peer-size`` so the benchmark finishes in seconds. Rates are
samples per second; ratios divide gridsim's rate by the peer's.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable

import numpy as np

from gridsim.bench import median_seconds
from gridsim.privacy import sample_discrete_gaussian

TARGET_PER_CORE = 10_000_000
"""Issue 4: at least 10 million exact samples/s per core ..."""
TARGET_VS_OPENDP = 200.0
"""... and 200 times OpenDP's exact sampler."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=[1.0, 10.0, 1000.0, 3.7],
        help="noise scales to measure (integer sigmas take the u128 path, others the general one)",
    )
    parser.add_argument("--size", type=int, default=2_000_000, help="samples per gridsim/numpy run")
    parser.add_argument(
        "--peer-size", type=int, default=20_000, help="samples per OpenDP run (it is slow)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--peer-repeat", type=int, default=3, help="timed OpenDP runs (median)")


def _rate(fn: Callable[[], object], samples: int, repeat: int) -> dict[str, float]:
    seconds = median_seconds(fn, repeat=repeat, warmup=1)
    return {"median_s": seconds, "samples_per_s": samples / seconds}


def _gridsim_sampler(sigma: float, size: int, threads: int) -> Callable[[], object]:
    """gridsim's exact sampler, OS-seeded as in production, on ``threads`` (0: all cores)."""

    def draw() -> object:
        return sample_discrete_gaussian(sigma, size, threads=threads)

    return draw


def _numpy_sampler(rng: np.random.Generator, sigma: float, size: int) -> Callable[[], object]:
    """numpy's float normal rounded to integers: fast, inexact, not safe for DP."""

    def draw() -> object:
        return np.rint(rng.normal(0.0, sigma, size)).astype(np.int64)

    return draw


def _opendp_sampler(sigma: float, size: int) -> Callable[[], object] | str:
    """A zero-argument call drawing ``size`` OpenDP samples, or why there is none."""
    try:
        import opendp.prelude as dp
    except ImportError:
        return "opendp is not installed (pip install 'gridsim[bench]')"
    dp.enable_features("contrib")
    try:
        measurement = dp.m.make_gaussian(
            dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=sigma
        )
    except Exception as exc:  # OpenDP raises its own error type for a bad scale
        return f"opendp make_gaussian failed: {exc}"
    zeros = [0] * size
    return lambda: measurement(zeros)


def _ratio(a: dict[str, object], b: dict[str, object]) -> float | None:
    ra, rb = a.get("samples_per_s"), b.get("samples_per_s")
    if isinstance(ra, float) and isinstance(rb, float):
        return ra / rb
    return None


def run(args: argparse.Namespace) -> dict[str, object]:
    size = int(args.size)
    peer_size = int(args.peer_size)
    repeat = int(args.repeat)
    peer_repeat = int(args.peer_repeat)
    rows: list[dict[str, object]] = []
    rng = np.random.default_rng()
    for sigma in [float(s) for s in args.sigmas]:
        one: dict[str, object] = dict(_rate(_gridsim_sampler(sigma, size, 1), size, repeat))
        every: dict[str, object] = dict(_rate(_gridsim_sampler(sigma, size, 0), size, repeat))
        numpy_rate: dict[str, object] = dict(_rate(_numpy_sampler(rng, sigma, size), size, repeat))
        peer = _opendp_sampler(sigma, peer_size)
        opendp: dict[str, object]
        if isinstance(peer, str):
            opendp = {"skipped": peer}
        else:
            opendp = dict(_rate(peer, peer_size, peer_repeat))
        rows.append(
            {
                "sigma": sigma,
                "integer_path": sigma.is_integer() and sigma <= 2**31,
                "gridsim_exact_1_thread": one,
                "gridsim_exact_all_cores": every,
                "opendp_exact": opendp,
                "numpy_rounded_normal_inexact": numpy_rate,
                "ratios": {
                    "gridsim_1_thread_over_opendp": _ratio(one, opendp),
                    "gridsim_all_cores_over_opendp": _ratio(every, opendp),
                    "gridsim_1_thread_over_numpy": _ratio(one, numpy_rate),
                    "gridsim_all_cores_over_numpy": _ratio(every, numpy_rate),
                },
            }
        )
    return {
        "benchmark": "dp",
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "size": size,
        "peer_size": peer_size,
        "peers": {"opendp": _version("opendp"), "numpy": np.__version__},
        "repeat": repeat,
        "peer_repeat": peer_repeat,
        "results": rows,
        "target": _target(rows),
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _target(rows: list[dict[str, object]]) -> dict[str, object]:
    """Issue 4's target, checked on the one-thread (per-core) figures."""
    per_core: list[float] = []
    vs_opendp: list[float] = []
    for row in rows:
        one = row["gridsim_exact_1_thread"]
        ratios = row["ratios"]
        assert isinstance(one, dict) and isinstance(ratios, dict)
        per_core.append(float(one["samples_per_s"]))
        ratio = ratios["gridsim_1_thread_over_opendp"]
        if ratio is not None:
            vs_opendp.append(float(ratio))
    return {
        "per_core_samples_per_s": TARGET_PER_CORE,
        "over_opendp": TARGET_VS_OPENDP,
        "min_per_core_samples_per_s": min(per_core, default=None),
        "min_1_thread_over_opendp": min(vs_opendp, default=None),
        "met": bool(per_core)
        and min(per_core) >= TARGET_PER_CORE
        and bool(vs_opendp)
        and min(vs_opendp) >= TARGET_VS_OPENDP,
    }
