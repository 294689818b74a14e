"""``python -m gridsim bench ledger``: Merkle roots, gridsim against its peers.

Two workloads, each timed in the same process for every contender:

* many small leaves (default 100,000 of 32 bytes: meter commitments), where the
  cost is per-hash overhead;
* few large leaves (default 1,000 of 400 KB: model updates), where the cost is
  SHA-256 itself.

Contenders: ``gridsim.ledger.merkle_root``; pymerkle's in-memory tree (SHA-256,
RFC 9162 prefixes) built from the leaves; a straightforward hashlib tree built
level by level. ``sha256_single_core`` hashes the same leaves with hashlib on one
thread and builds no tree: the speed one core gets out of OpenSSL, against which
the large-leaf target (1.7x, using both cores) is read.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import platform
import random
import time
from collections.abc import Callable

from gridsim import __version__
from gridsim.bench import median_seconds
from gridsim.ledger import merkle_root

SMALL_TARGET_S = 0.06
"""Issue 5: the root of 100,000 small leaves in at most this long (20x pymerkle)."""
LARGE_TARGET_SPEEDUP = 1.7
"""Issue 5: large leaves at this multiple of single-core SHA-256 speed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small-leaves", type=int, default=100_000, help="leaf count, small case")
    parser.add_argument("--small-leaf-bytes", type=int, default=32, help="bytes per small leaf")
    parser.add_argument("--large-leaves", type=int, default=1_000, help="leaf count, large case")
    parser.add_argument(
        "--large-leaf-bytes", type=int, default=400_000, help="bytes per large leaf"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--seed", type=int, default=0, help="seed of the leaf contents")


def hashlib_tree_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 root the plain way: hash the leaves, then pair up level by level."""
    sha256 = hashlib.sha256
    level = [sha256(b"\x00" + leaf).digest() for leaf in leaves]
    if not level:
        return sha256(b"").digest()
    while len(level) > 1:
        paired = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        level = [*paired, level[-1]] if len(level) % 2 else paired
    return level[0]


def sha256_each(leaves: list[bytes]) -> None:
    sha256 = hashlib.sha256
    for leaf in leaves:
        sha256(leaf).digest()


def pymerkle_root_fn() -> Callable[[list[bytes]], bytes] | str:
    """pymerkle's root function, or why it cannot be measured."""
    try:
        pymerkle = importlib.import_module("pymerkle")
    except ImportError as exc:
        return f"pymerkle is not installed (pip install 'gridsim[bench]'): {exc}"

    def root(leaves: list[bytes]) -> bytes:
        tree = pymerkle.InmemoryTree.init_from_entries(leaves, algorithm="sha256")
        digest: bytes = tree.get_root()
        return digest

    return root


def make_leaves(count: int, size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(count)]


def measure_case(
    count: int,
    size: int,
    seed: int,
    repeat: int,
    pymerkle_root: Callable[[list[bytes]], bytes] | str,
) -> tuple[dict[str, object], float, float]:
    """The case's report, gridsim's median seconds and its speed over one core of hashlib."""
    leaves = make_leaves(count, size, seed)
    total = count * size
    root = merkle_root(leaves)

    gridsim_s = median_seconds(lambda: merkle_root(leaves), repeat=repeat)
    sha_s = median_seconds(lambda: sha256_each(leaves), repeat=repeat)
    hashlib_s = median_seconds(lambda: hashlib_tree_root(leaves), repeat=repeat)
    contenders: dict[str, object] = {
        "gridsim": {"median_s": gridsim_s, "mb_per_s": total / gridsim_s / 1e6},
        "hashlib_tree": {
            "median_s": hashlib_s,
            "gridsim_speedup": hashlib_s / gridsim_s,
            "root_matches": hashlib_tree_root(leaves) == root,
        },
    }
    if isinstance(pymerkle_root, str):
        contenders["pymerkle"] = {"skipped": pymerkle_root}
    else:
        measured = pymerkle_root
        pymerkle_s = median_seconds(lambda: measured(leaves), repeat=repeat)
        contenders["pymerkle"] = {
            "median_s": pymerkle_s,
            "gridsim_speedup": pymerkle_s / gridsim_s,
            "root_matches": measured(leaves) == root,
        }
    report = {
        "leaves": count,
        "leaf_bytes": size,
        "total_bytes": total,
        "root": root.hex(),
        **contenders,
        "sha256_single_core": {
            "what": "hashlib.sha256 of each leaf on one thread, no tree",
            "median_s": sha_s,
            "mb_per_s": total / sha_s / 1e6,
        },
        "gridsim_over_sha256_single_core": sha_s / gridsim_s,
    }
    return report, gridsim_s, sha_s / gridsim_s


def usable_cpus() -> int | None:
    """CPUs this process may run on (fewer than the machine's in a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent since boot (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    ticks = [int(field) for field in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def other_processes_busy_cpus(
    busy_before: float | None, own_before: float, wall_before: float
) -> float | None:
    """How many CPUs other processes kept busy on average while the benchmark ran.

    The large-leaf case needs both cores: near 0 is a quiet run, near 1 means
    the parallel hashing had about one core to itself.
    """
    busy_after = machine_busy_seconds()
    if busy_before is None or busy_after is None:
        return None
    own = time.process_time() - own_before
    wall = time.perf_counter() - wall_before
    return max(0.0, (busy_after - busy_before - own) / wall)


def run(args: argparse.Namespace) -> dict[str, object]:
    busy_before = machine_busy_seconds()
    own_before, wall_before = time.process_time(), time.perf_counter()
    pymerkle_root = pymerkle_root_fn()
    small, small_s, _ = measure_case(
        args.small_leaves, args.small_leaf_bytes, args.seed, args.repeat, pymerkle_root
    )
    large, _, large_speedup = measure_case(
        args.large_leaves, args.large_leaf_bytes, args.seed + 1, args.repeat, pymerkle_root
    )
    return {
        "benchmark": "ledger",
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "other_processes_busy_cpus": other_processes_busy_cpus(
                busy_before, own_before, wall_before
            ),
        },
        "gridsim": __version__,
        "repeat": args.repeat,
        "small_leaves": small,
        "large_leaves": large,
        "targets": {
            "small_leaves_max_s": SMALL_TARGET_S,
            "small_leaves_met": small_s <= SMALL_TARGET_S,
            "large_leaves_min_speedup_over_single_core_sha256": LARGE_TARGET_SPEEDUP,
            "large_leaves_met": large_speedup >= LARGE_TARGET_SPEEDUP,
        },
    }
