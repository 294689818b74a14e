"""Ledger append, proof and audit costs for a run of R rounds of M meters (JSON).

Writes a ledger the way the aggregator does (one block per round: M signed
meter contributions and a round record, fsynced, head signed and installed
atomically), then times serving every meter its inclusion proof after the last
round, a full :func:`~gridsim.ledger.audit` of the directory, and reopening the
writer (which verifies the ledger before resuming). Not yet registered in
``gridsim.bench.BENCHMARKS``; run it as ``python -m gridsim.bench.ledger_append``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridsim import __version__
from gridsim.ledger import LedgerWriter, MeterContribution, RoundRecord, audit

ORIGIN = "gridsim.bench/ledger"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--dir", type=Path, help="where to write the ledger (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)


def _round(round_no: int, meters: int, signature: bytes) -> list[MeterContribution | RoundRecord]:
    # One real signature reused: signing is the meters' cost, not the ledger's.
    entries: list[MeterContribution | RoundRecord] = [
        MeterContribution(
            session="bench",
            round=round_no,
            meter=m,
            payload_sha256=hashlib.sha256(b"%d/%d" % (m, round_no)).digest(),
            signature=signature,
        )
        for m in range(meters)
    ]
    entries.append(
        RoundRecord(
            session="bench",
            round=round_no,
            participants=list(range(meters)),
            dropouts=[],
            secagg={"threshold": meters // 2},
            dp={"mode": "central", "noise_multiplier": 1.0},
            epsilon_spent=0.01 * (round_no + 1),
            aggregate_sha256=hashlib.sha256(b"aggregate").digest(),
            model_sha256=hashlib.sha256(b"model").digest(),
        )
    )
    return entries


def _measure(path: Path, rounds: int, meters: int, seed: int) -> dict[str, object]:
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench%d" % seed).digest())
    meter_key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"meter").digest())
    signature = meter_key.sign(b"bench")
    append_s: list[float] = []
    with LedgerWriter(path, key, ORIGIN) as writer:
        for r in range(rounds):
            block = _round(r, meters, signature)
            start = time.perf_counter()
            writer.append_block(block)
            append_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for m in range(meters):
            writer.inclusion_proof(m, rounds - 1)
        proofs_s = time.perf_counter() - start
    start = time.perf_counter()
    report = audit(path, public_key=key.public_key())
    audit_s = time.perf_counter() - start
    start = time.perf_counter()
    LedgerWriter(path, key, ORIGIN).close()
    reopen_s = time.perf_counter() - start
    return {
        "entries": report.tree_size,
        "verified": report.ok,
        "log_bytes": (path / "entries.log").stat().st_size,
        "append_round_ms_median": 1000 * statistics.median(append_s),
        "append_round_ms_last": 1000 * append_s[-1],
        "append_total_s": sum(append_s),
        "proof_per_meter_us": 1e6 * proofs_s / meters,
        "audit_s": audit_s,
        "reopen_s": reopen_s,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    if args.dir is not None:
        results = _measure(args.dir, args.rounds, args.meters, args.seed)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = _measure(Path(tmp) / "ledger", args.rounds, args.meters, args.seed)
    return {
        "benchmark": "ledger_append",
        "gridsim": __version__,
        "rounds": args.rounds,
        "meters": args.meters,
        "results": results,
    }


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(cli)
    print(json.dumps(run(cli.parse_args()), indent=2))
