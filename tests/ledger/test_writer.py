"""LedgerWriter: what it refuses, how it resumes, and what it repairs after a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from gridsim.exceptions import ConfigError, IntegrityError, InvalidInputError
from gridsim.ledger import LedgerWriter, audit, inclusion_proof_for
from gridsim.ledger.entries import encode_entry, frame

from .conftest import ORIGIN, ledger_key, round_entries, ticking_clock

_OPENED: list[LedgerWriter] = []


def open_writer(path: Path, seed: int = 0) -> LedgerWriter:
    writer = LedgerWriter(path, ledger_key(seed), ORIGIN, clock_ms=ticking_clock())
    _OPENED.append(writer)
    return writer


@pytest.fixture(autouse=True)
def _close_writers() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def test_a_new_ledger_is_empty_and_verifies(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "l")
    assert (writer.size, writer.blocks, writer.head) == (0, 0, None)
    report = audit(tmp_path / "l")
    assert report.ok and (report.blocks, report.tree_size, report.root) == (0, 0, None)
    assert json.loads((tmp_path / "l" / "blockchain.json").read_text())["blocks"] == []


def test_a_creation_cut_short_is_completed_on_reopen(tmp_path: Path) -> None:
    ledger = tmp_path / "l"
    open_writer(ledger).close()
    (ledger / "key.pub").unlink()  # killed before the last step of creating the ledger
    open_writer(ledger).append_block(round_entries(0, meters=1))
    assert audit(ledger, public_key=ledger_key(0).public_key()).ok


def test_each_head_names_the_previous_one(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "l")
    first = writer.append_block(round_entries(0, meters=2))
    second = writer.append_block(round_entries(1, meters=2))
    assert first.head.prev is None and second.head.prev == first.hash
    assert (second.head.size, writer.size, writer.blocks) == (6, 6, 2)
    assert writer.summary() == {
        "path": str(tmp_path / "l"),
        "size": 6,
        "root": second.head.root.hex(),
        "heads": 2,
    }


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([], "at least one entry"),
        (round_entries(1, meters=2)[:1] + round_entries(2, meters=2)[-1:], "mixes session"),
        (round_entries(1, meters=2) + round_entries(1, meters=2)[-1:], "at most one round record"),
        (round_entries(1, meters=2)[:1] * 2, "meter 0 contributes twice"),
        (round_entries(1, meters=3)[:3] + round_entries(1, meters=2)[-1:], "meter 2 is not a"),
        (round_entries(0, meters=2), "round 0 is not after the ledger's round 0"),
    ],
)
def test_bad_blocks_are_refused_and_nothing_is_written(
    tmp_path: Path, entries: list[object], reason: str
) -> None:
    writer = open_writer(tmp_path / "l")
    writer.append_block(round_entries(0, meters=2))
    log_before = (tmp_path / "l" / "entries.log").read_bytes()
    with pytest.raises(InvalidInputError, match=reason):
        writer.append_block(entries)  # type: ignore[arg-type]
    assert (tmp_path / "l" / "entries.log").read_bytes() == log_before
    writer.append_block(round_entries(1, meters=2))
    assert audit(tmp_path / "l").ok


def test_invalid_entry_values_are_refused(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "l")
    entries = round_entries(0, meters=2)
    entries[-1] = msgspec.structs.replace(entries[-1], model_sha256=b"short")
    with pytest.raises(Exception, match="model_sha256"):
        writer.append_block(entries)
    assert writer.size == 0


def test_reopening_resumes_after_the_last_head(small_ledger: Path) -> None:
    writer = open_writer(small_ledger)
    assert (writer.size, writer.blocks, writer.last_round("s1"), writer.recovered) == (
        12,
        3,
        2,
        None,
    )
    head = writer.append_block(round_entries(3, meters=3))
    assert head.head.size == 16
    report = audit(small_ledger)
    assert report.ok and report.blocks == 4


def test_reopening_with_another_key_is_refused_and_changes_nothing(small_ledger: Path) -> None:
    before = {p: p.read_bytes() for p in small_ledger.rglob("*") if p.is_file()}
    with pytest.raises(IntegrityError, match="not the pinned key"):
        open_writer(small_ledger, seed=1)
    assert {p: p.read_bytes() for p in small_ledger.rglob("*") if p.is_file()} == before


def test_reopening_a_tampered_ledger_is_refused(small_ledger: Path) -> None:
    log = small_ledger / "entries.log"
    data = bytearray(log.read_bytes())
    data[40] ^= 1
    log.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"cannot resume .*block 0"):
        open_writer(small_ledger)


def test_unsigned_tail_is_truncated_and_reported(small_ledger: Path) -> None:
    log = small_ledger / "entries.log"
    sealed = log.read_bytes()
    tail = b"".join(frame(encode_entry(e)) for e in round_entries(3, meters=3))
    log.write_bytes(sealed + tail + tail[:7])  # a whole round, then a torn frame
    (small_ledger / "heads" / ".00000003.checkpoint.tmp").write_bytes(b"half a head")
    before = audit(small_ledger)
    assert before.ok and len(before.warnings) == 2
    writer = open_writer(small_ledger)
    assert writer.recovered == (
        f"truncated {len(tail) + 7} bytes (4 complete entries) past the last head (size 12) "
        f"of {log}"
    )
    assert log.read_bytes() == sealed
    assert not (small_ledger / "heads" / ".00000003.checkpoint.tmp").exists()
    writer.append_block(round_entries(3, meters=3))
    after = audit(small_ledger)
    assert after.ok and after.warnings == [] and after.tree_size == 16


def test_lagging_export_is_rewritten_on_reopen(small_ledger: Path) -> None:
    export = small_ledger / "blockchain.json"
    full = export.read_bytes()
    doc = json.loads(full)
    doc["blocks"] = doc["blocks"][:1]
    export.write_text(json.dumps(doc, indent=2) + "\n")
    assert audit(small_ledger).warnings
    open_writer(small_ledger)
    assert export.read_bytes() == full


def test_a_second_writer_is_refused_until_the_first_closes(small_ledger: Path) -> None:
    first = open_writer(small_ledger)
    with pytest.raises(ConfigError, match="open in another writer"):
        open_writer(small_ledger)
    first.close()
    with pytest.raises(InvalidInputError, match="closed"):
        first.append_block(round_entries(3, meters=1))
    open_writer(small_ledger).append_block(round_entries(3, meters=1))
    assert audit(small_ledger).ok


def test_the_writer_serves_the_same_proof_as_the_file(small_ledger: Path) -> None:
    writer = open_writer(small_ledger)
    assert writer.inclusion_proof(2, 1) == inclusion_proof_for(small_ledger, 2, 1)
