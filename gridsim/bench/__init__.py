"""Benchmarks behind ``python -m gridsim bench NAME``; each prints one JSON document.

Every benchmark is a module ``gridsim.bench.NAME`` defining::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> dict[str, object]: ...

Peer tools (Flower, OpenDP, pymerkle, gmqtt) come from the optional ``bench`` extra and
are measured in the same process run as gridsim; a missing peer is reported as
``{"skipped": "<reason>"}`` rather than failing the benchmark.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

BENCHMARKS = ("e2e", "secagg", "dp", "ledger", "transport")


def median_seconds(fn: Callable[[], object], *, repeat: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
