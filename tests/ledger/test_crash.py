"""Crash safety: a writer killed with SIGKILL at random moments never leaves a bad ledger."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from gridsim.ledger import LedgerWriter, audit

from .conftest import ORIGIN, SESSION, ledger_key, round_entries

REPO = Path(__file__).resolve().parents[2]


def test_sigkilled_writer_leaves_a_ledger_that_verifies_and_resumes(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    pinned = ledger_key(0).public_key()
    rng = random.Random(20261126)
    deadline = time.monotonic() + 4.0
    sizes: list[int] = []
    kills = repairs = 0
    while kills < 3 or (time.monotonic() < deadline and kills < 30):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.ledger.append_forever", str(ledger)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().startswith("ready")
        time.sleep(rng.uniform(0.0, 0.04))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        kills += 1

        report = audit(ledger, public_key=pinned)
        assert report.ok, f"after kill {kills}: {report.problem}"
        assert not sizes or report.tree_size >= sizes[-1]
        sizes.append(report.tree_size)

        with LedgerWriter(ledger, ledger_key(0), ORIGIN) as writer:
            assert writer.size == report.tree_size
            if writer.recovered is not None:
                repairs += 1
            last = writer.last_round(SESSION)
            writer.append_block(round_entries(0 if last is None else last + 1, meters=3))
        after = audit(ledger, public_key=pinned)
        assert after.ok and after.warnings == [], after.problem or after.warnings
        assert after.blocks == report.blocks + 1
    assert sizes[-1] > sizes[0], "the writer made progress between kills"
    # Informational: how often a kill landed between the entries' fsync and the head.
    print(f"{kills} kills, {repairs} truncated tails, final size {sizes[-1]}")
