"""``gridsim audit``: exit codes, the one-line verdict, and ``--meter --round --json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gridsim.ledger.audit import main
from gridsim.privacy.accounting import epsilon_from_record

from .conftest import DP_PARAMS, build_ledger, ledger_key


def test_intact_ledger_exits_0_with_one_line(
    small_ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(small_ledger)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].startswith(f"OK {small_ledger}: 3 blocks, 12 entries, root ")
    assert out[0].endswith(f", epsilon spent {epsilon_from_record(DP_PARAMS, 3):g}")
    assert out[1].startswith("  note: signatures were checked against key.pub")
    assert main([str(small_ledger), "--public-key", str(small_ledger / "key.pub")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_tampered_ledger_exits_1_naming_block_and_entry(
    small_ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = small_ledger / "entries.log"
    data = bytearray(log.read_bytes())
    data[-5] ^= 0x10  # inside the last round record
    log.write_bytes(bytes(data))
    assert main([str(small_ledger)]) == 1
    out = capsys.readouterr().out.strip()
    assert out == (
        f"TAMPERED {small_ledger}: block 2, entries 8-11: their Merkle root differs from the "
        "signed root (an entry of this block was changed, added or removed)"
    )
    assert main([str(small_ledger), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["bad_block"], doc["bad_entry"]) == (False, 2, 8)


def test_meter_proof_as_json(small_ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(small_ledger), "--meter", "2", "--round", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["index"] == 6 and doc["tree_size"] == 12
    assert all(len(h) == 64 for h in [doc["leaf_hash"], doc["root"], *doc["proof"]])
    assert main([str(small_ledger), "--meter", "2", "--round", "1"]) == 0
    assert capsys.readouterr().out.startswith("OK meter 2 round 1: leaf 6 of 12, root ")
    assert main([str(small_ledger), "--meter", "7", "--round", "1"]) == 1
    assert "no contribution of meter 7 in round 1" in capsys.readouterr().out


def test_pinned_key_as_key_line_or_pem(
    tmp_path: Path, small_ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = tmp_path / "log.pem"
    pem.write_bytes(
        ledger_key(0)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert main([str(small_ledger), "--public-key", str(pem)]) == 0
    assert main([str(small_ledger), "--public-key", str(small_ledger / "key.pub")]) == 0
    other = build_ledger(tmp_path / "other", rounds=1, meters=1, key_seed=3)
    assert main([str(small_ledger), "--public-key", str(other / "key.pub")]) == 1
    assert "not the pinned key" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--meter", "1"],
        ["LEDGER", "--meter", "1"],
        ["LEDGER", "--round", "x"],
        ["/nonexistent/ledger"],
        ["LEDGER", "--public-key", "/nonexistent/key"],
    ],
)
def test_usage_errors_exit_2(
    small_ledger: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(small_ledger) if a == "LEDGER" else a for a in argv]) == 2
    assert capsys.readouterr().err
