"""Builders of small, deterministic ledgers for the ledger tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridsim.ledger import LedgerWriter, MeterContribution, RoundRecord
from gridsim.privacy.accounting import epsilon_from_record

ORIGIN = "gridsim.test/ledger"
SESSION = "s1"
T0_MS = 1_764_180_000_000


def ledger_key(seed: int = 0) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"log%d" % seed).digest())


def meter_key(meter: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"meter%d" % meter).digest())


def payload(meter: int, round_no: int) -> bytes:
    return b"masked input of meter %d in round %d" % (meter, round_no)


def ticking_clock(start_ms: int = T0_MS) -> Callable[[], int]:
    now = [start_ms]

    def clock() -> int:
        now[0] += 1000
        return now[0]

    return clock


def round_entries(
    round_no: int, meters: int, *, session: str = SESSION, epsilon: float | None = None
) -> list[MeterContribution | RoundRecord]:
    """Contributions of meters 0..meters-1 and the round record, as the aggregator logs them."""
    entries: list[MeterContribution | RoundRecord] = [
        MeterContribution.sign(
            meter_key(m), session=session, round=round_no, meter=m, payload=payload(m, round_no)
        )
        for m in range(meters)
    ]
    entries.append(
        RoundRecord(
            session=session,
            round=round_no,
            participants=list(range(meters)),
            dropouts=[meters],
            secagg={"threshold": 2, "neighbours": meters, "bits": 32},
            dp=DP_PARAMS,
            epsilon_spent=epsilon_from_record(DP_PARAMS, round_no + 1)
            if epsilon is None
            else epsilon,
            aggregate_sha256=hashlib.sha256(b"aggregate %d" % round_no).digest(),
            model_sha256=hashlib.sha256(b"model %d" % round_no).digest(),
        )
    )
    return entries


DP_PARAMS = {
    "mode": "central",
    "noise_multiplier": 1.1,
    "sampling_rate": 0.1,
    "delta": 1e-5,
    "accountant": "rdp",
}
"""DP-FedAvg parameters recorded in the test ledgers; their epsilon is the real one."""


def build_ledger(path: Path, *, rounds: int, meters: int, key_seed: int = 0) -> Path:
    with LedgerWriter(path, ledger_key(key_seed), ORIGIN, clock_ms=ticking_clock()) as writer:
        for r in range(rounds):
            writer.append_block(round_entries(r, meters))
    return path


@pytest.fixture
def small_ledger(tmp_path: Path) -> Path:
    """Three rounds of three meters each: 12 entries, 3 heads."""
    return build_ledger(tmp_path / "ledger", rounds=3, meters=3)
