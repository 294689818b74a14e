"""A ledger on disk audits clean, and every kind of tampering is caught and named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gridsim.ledger import LedgerWriter, audit
from gridsim.ledger.audit import read_ledger
from gridsim.ledger.checkpoint import NoteSigner, TreeHead, sign_head, verify_head
from gridsim.ledger.entries import encode_entry, frame, read_frames
from gridsim.privacy.accounting import epsilon_from_record

from .conftest import DP_PARAMS, ORIGIN, build_ledger, ledger_key, round_entries, ticking_clock

VERIFIER = NoteSigner(ORIGIN, ledger_key(0)).verifier


def head_of(ledger: Path, index: int) -> Path:
    return ledger / "heads" / f"{index:08d}.checkpoint"


def ledger_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_a_ledger_of_several_rounds_audits_clean(small_ledger: Path) -> None:
    report = audit(small_ledger, public_key=ledger_key(0).public_key())
    assert report.ok, report.problem
    assert (report.blocks, report.tree_size, report.warnings) == (3, 12, [])
    assert report.epsilon_spent == pytest.approx(epsilon_from_record(DP_PARAMS, 3))
    assert report.line().startswith(f"OK {small_ledger}: 3 blocks, 12 entries, root ")
    assert report.summary() == {
        "path": str(small_ledger),
        "size": 12,
        "root": report.root,
        "heads": 3,
        "verified": True,
    }
    names = {p.relative_to(small_ledger).as_posix() for p in ledger_files(small_ledger)}
    assert names == {
        "key.pub",
        "entries.log",
        "blockchain.json",
        "heads/00000000.checkpoint",
        "heads/00000001.checkpoint",
        "heads/00000002.checkpoint",
    }


def test_blockchain_json_lists_the_chained_blocks(small_ledger: Path) -> None:
    doc = json.loads((small_ledger / "blockchain.json").read_text())
    blocks = doc["blocks"]
    assert [b["index"] for b in blocks] == [0, 1, 2]
    assert blocks[0]["previous_hash"] == "0" * 64
    assert [b["previous_hash"] for b in blocks[1:]] == [b["head_hash"] for b in blocks[:-1]]
    assert [b["tree_size"] for b in blocks] == [4, 8, 12]
    assert blocks[1]["entries"] == {
        "first": 4,
        "count": 4,
        "session": "s1",
        "round": 1,
        "meter_contributions": 3,
        "round_records": 1,
    }
    assert blocks[0]["timestamp"] == "2025-11-26T18:00:01.000Z"
    assert doc["origin"] == ORIGIN


def test_every_single_byte_change_on_disk_is_detected(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "ledger", rounds=2, meters=1)
    pinned = ledger_key(0).public_key()
    assert audit(ledger, public_key=pinned).ok
    undetected = []
    checked = 0
    for path in ledger_files(ledger):
        original = path.read_bytes()
        for position in range(len(original)):
            for mask in (0x01, 0x80):
                changed = bytearray(original)
                changed[position] ^= mask
                path.write_bytes(bytes(changed))
                checked += 1
                for key in (None, pinned):
                    report = audit(ledger, public_key=key)
                    if report.ok or not report.problem:
                        undetected.append((path.name, position, mask, key is not None))
        path.write_bytes(original)
    assert checked > 2000
    assert undetected == []
    assert audit(ledger, public_key=pinned).ok


def test_truncated_log_is_named(small_ledger: Path) -> None:
    log = small_ledger / "entries.log"
    data = log.read_bytes()
    log.write_bytes(data[:-1])
    report = audit(small_ledger)
    assert not report.ok
    assert report.problem == (
        "block 2: head covers 12 entries but entries.log holds only 11 complete entries "
        "(log truncated, or a length prefix changed)"
    )
    assert (report.bad_block, report.bad_entry) == (2, 11)


def test_removed_last_head_is_caught_by_the_export(small_ledger: Path) -> None:
    (small_ledger / "heads" / "00000002.checkpoint").unlink()
    report = audit(small_ledger)
    assert not report.ok
    assert "blockchain.json lists 3 blocks but only 2 heads exist" in (report.problem or "")


def test_removed_middle_head_is_named(small_ledger: Path) -> None:
    (small_ledger / "heads" / "00000001.checkpoint").unlink()
    report = audit(small_ledger)
    assert (report.ok, report.problem) == (False, "block 1: head is missing")


def test_reordered_blocks_in_the_log_are_caught(small_ledger: Path) -> None:
    log = small_ledger / "entries.log"
    data = log.read_bytes()
    frames, _ = read_frames(data)
    start1, start2 = frames[4][0], frames[8][0]
    swapped = data[start1:start2] + data[:start1] + data[start2:]
    log.write_bytes(swapped)
    report = audit(small_ledger)
    assert not report.ok
    assert (report.bad_block, report.bad_entry) == (0, 0)
    assert report.problem == (
        "block 0, entries 0-3: their Merkle root differs from the signed root "
        "(an entry of this block was changed, added or removed)"
    )


def test_reordered_heads_are_caught(small_ledger: Path) -> None:
    heads = small_ledger / "heads"
    one, two = heads / "00000001.checkpoint", heads / "00000002.checkpoint"
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    report = audit(small_ledger)
    assert not report.ok and report.bad_block == 1
    assert "head names previous head" in (report.problem or "")
    assert "(heads reordered, replaced or removed)" in (report.problem or "")


def test_forged_head_fails_its_signature(small_ledger: Path) -> None:
    head_path = small_ledger / "heads" / "00000001.checkpoint"
    note = head_path.read_text()
    lines = note.split("\n")
    lines[1] = "9"  # claim a smaller tree, keep the signature
    head_path.write_text("\n".join(lines))
    report = audit(small_ledger)
    assert not report.ok and report.bad_block == 1
    assert report.problem == (
        f"block 1: head: signature by {ORIGIN} ({VERIFIER.key_id.hex()}) does not verify"
    )


def test_replayed_older_head_is_named(small_ledger: Path) -> None:
    heads = small_ledger / "heads"
    shutil.copy(heads / "00000000.checkpoint", heads / "00000002.checkpoint")
    report = audit(small_ledger)
    assert (report.ok, report.problem) == (False, "block 2: head is a replay of block 0's head")


def test_rolled_back_head_with_a_valid_signature_is_caught(small_ledger: Path) -> None:
    # An operator holding the key re-signs block 2 over the tree of block 1: size does not grow.
    verifier_key = ledger_key(0)
    heads = small_ledger / "heads"
    block1 = verify_head(
        (heads / "00000001.checkpoint").read_bytes(), NoteSigner(ORIGIN, verifier_key).verifier
    )
    stale = TreeHead(ORIGIN, 8, block1.head.root, block1.hash, 1_764_180_009_000)
    (heads / "00000002.checkpoint").write_bytes(
        sign_head(stale, NoteSigner(ORIGIN, verifier_key)).note
    )
    report = audit(small_ledger)
    assert not report.ok
    assert report.problem == (
        "block 2: tree size 8 does not grow past block 1's 8 (replayed or forged head)"
    )


def test_head_signed_with_another_key_is_named(small_ledger: Path) -> None:
    heads = small_ledger / "heads"
    genuine = verify_head(
        (heads / "00000002.checkpoint").read_bytes(), NoteSigner(ORIGIN, ledger_key(0)).verifier
    )
    impostor = NoteSigner(ORIGIN, ledger_key(99))
    (heads / "00000002.checkpoint").write_bytes(sign_head(genuine.head, impostor).note)
    report = audit(small_ledger)
    assert not report.ok and report.bad_block == 2
    assert "block 2: head: not signed by the ledger key" in (report.problem or "")


def test_a_whole_ledger_under_another_key_fails_against_the_pinned_key(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "ledger", rounds=2, meters=2, key_seed=5)
    assert audit(ledger).ok  # consistent in itself
    report = audit(ledger, public_key=ledger_key(0).public_key())
    assert not report.ok
    assert "not the pinned key" in (report.problem or "")


def test_entries_past_the_last_head_are_reported_not_failed(small_ledger: Path) -> None:
    extra = b"".join(frame(encode_entry(e)) for e in round_entries(3, meters=3))
    with open(small_ledger / "entries.log", "ab") as out:
        out.write(extra + b"\x00\x00")
    report = audit(small_ledger)
    assert report.ok
    assert report.tree_size == 12
    assert report.warnings == [
        f"entries.log: {len(extra) + 2} bytes (4 complete entries) past the last head are not "
        "covered by any signed head and were not verified (a writer stopped before signing; "
        "reopening it truncates them)"
    ]


def test_lagging_export_is_a_warning_and_a_changed_one_an_error(small_ledger: Path) -> None:
    _, state = read_ledger(small_ledger)
    from gridsim.ledger.audit import blockchain_document

    assert state.verifier is not None
    export = small_ledger / "blockchain.json"
    export.write_bytes(blockchain_document(state.verifier, state.blocks[:2]))
    report = audit(small_ledger)
    assert report.ok and "blockchain.json lists 2 of 3 blocks" in report.warnings[0]
    doc = json.loads(blockchain_document(state.verifier, state.blocks))
    doc["blocks"][1]["root"] = "00" * 32
    export.write_text(json.dumps(doc, indent=2) + "\n")
    report = audit(small_ledger)
    assert (report.ok, report.problem) == (
        False,
        "blockchain.json: block 1 differs from the ledger",
    )


def test_contribution_with_a_bad_meter_signature_is_named(tmp_path: Path) -> None:
    from gridsim.ledger import MeterContribution

    from .conftest import meter_key

    entries = round_entries(0, meters=3)
    # Meter 1's entry carries meter 2's signature: the log key signs it, the meter never did.
    forged = MeterContribution.sign(meter_key(2), session="s1", round=0, meter=1, payload=b"x")
    entries[1] = forged
    with LedgerWriter(tmp_path / "l", ledger_key(0), ORIGIN, clock_ms=ticking_clock()) as writer:
        writer.append_block(entries)
    keys = {m: meter_key(m).public_key() for m in range(3)}
    report = audit(tmp_path / "l", meter_keys=keys)
    assert not report.ok
    assert report.problem == (
        "block 0, entry 1 (meter 1's contribution to round 0): meter signature does not verify"
    )
    assert audit(tmp_path / "l").ok  # without the meters' keys this cannot be seen


def test_epsilon_is_recomputed_with_the_given_accountant(small_ledger: Path) -> None:
    # By default the privacy accountant recomputes every record's epsilon.
    assert audit(small_ledger).ok

    def real(rounds: int) -> float:
        return epsilon_from_record(DP_PARAMS, rounds)

    def stingy(dp: object, rounds: int) -> float:
        return real(rounds) if rounds < 2 else 0.1 * rounds

    report = audit(small_ledger, epsilon_of=stingy)
    assert not report.ok
    assert report.problem == (
        f"block 1, entry 7 (record of round 1): records epsilon {real(2):g} but its DP "
        "parameters give 0.2 after 2 rounds"
    )


def test_falling_epsilon_is_caught_without_an_accountant(tmp_path: Path) -> None:
    with LedgerWriter(tmp_path / "l", ledger_key(0), ORIGIN, clock_ms=ticking_clock()) as writer:
        writer.append_block(round_entries(0, meters=2, epsilon=1.0))
        writer.append_block(round_entries(1, meters=2, epsilon=0.5))
    # An accountant that agrees with both records still cannot make epsilon fall.
    report = audit(tmp_path / "l", epsilon_of=lambda dp, rounds: {1: 1.0, 2: 0.5}[rounds])
    assert not report.ok
    assert report.problem == (
        "block 1, entry 5 (record of round 1): epsilon spent falls from 1 to 0.5"
    )


def test_an_understated_epsilon_is_caught_by_the_default_accountant(tmp_path: Path) -> None:
    with LedgerWriter(tmp_path / "l", ledger_key(0), ORIGIN, clock_ms=ticking_clock()) as writer:
        writer.append_block(round_entries(0, meters=2, epsilon=0.01))
    report = audit(tmp_path / "l")
    assert not report.ok
    real = epsilon_from_record(DP_PARAMS, 1)
    assert report.problem == (
        "block 0, entry 2 (record of round 0): records epsilon 0.01 but its DP parameters "
        f"give {real:g} after 1 rounds"
    )
