"""Per-meter inclusion proofs: every meter can check that its masked input was logged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gridsim.exceptions import IntegrityError
from gridsim.ledger import (
    MeterContribution,
    NoteSigner,
    decode_entry,
    inclusion_proof_for,
    leaf_hash,
    verify_inclusion,
    verify_own_contribution,
)
from gridsim.ledger.checkpoint import sign_head, verify_head

from .conftest import ORIGIN, ledger_key, meter_key, payload

VERIFIER = NoteSigner(ORIGIN, ledger_key(0)).verifier


def own_check(
    doc: Any, *, meter: int, round_no: int, head: str | None = None, **options: Any
) -> Any:
    """A meter's check of ``doc`` (dict, JSON text or None) with what the meter knows."""
    if head is None and doc is not None:
        head = (json.loads(doc) if isinstance(doc, str) else doc)["head"]
    options.setdefault("meter_key", meter_key(meter).public_key())
    return verify_own_contribution(
        meter=meter,
        round=round_no,
        payload_sha256=hashlib.sha256(payload(meter, round_no)).digest(),
        proof=doc,
        head=head,
        ledger_key=VERIFIER,
        **options,
    )


def test_every_meter_of_every_round_has_a_verifying_proof(small_ledger: Path) -> None:
    for round_no in range(3):
        for meter in range(3):
            doc = inclusion_proof_for(small_ledger, meter, round_no)
            assert {"leaf_hash", "index", "tree_size", "root", "proof"} <= doc.keys()
            assert doc["index"] == 4 * round_no + meter and doc["tree_size"] == 12
            assert verify_inclusion(
                bytes.fromhex(doc["leaf_hash"]),
                doc["index"],
                doc["tree_size"],
                [bytes.fromhex(h) for h in doc["proof"]],
                bytes.fromhex(doc["root"]),
            )
            assert leaf_hash(bytes.fromhex(doc["entry"])).hex() == doc["leaf_hash"]
            check = own_check(json.dumps(doc), meter=meter, round_no=round_no)
            assert check.ok, check.reason
            assert check.reason == f"included as leaf {doc['index']} of 12, head signed by {ORIGIN}"


def tampered(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**doc, **changes}


def test_wrong_proofs_fail_with_a_reason(small_ledger: Path) -> None:
    doc = inclusion_proof_for(small_ledger, 1, 2)
    other = inclusion_proof_for(small_ledger, 2, 2)
    flipped = doc["proof"][0][:-1] + ("0" if doc["proof"][0][-1] != "0" else "1")
    cases = {
        "inclusion proof for leaf 9 of 12 does not verify": [
            tampered(doc, proof=[flipped, *doc["proof"][1:]]),
            tampered(doc, proof=doc["proof"][:-1]),
        ],
        "inclusion proof for leaf 8 of 12 does not verify": [tampered(doc, index=8)],
        "the proven entry is meter 2 round 2 (session s1), not ours": [other],
        "leaf hash does not match the entry": [tampered(doc, leaf_hash=other["leaf_hash"])],
        "the proof is against a different tree than the signed head": [
            tampered(doc, tree_size=13),
            tampered(doc, root="00" * 32),
        ],
        "malformed proof or head": [tampered(doc, proof="zz"), {"index": 1}],
    }
    for reason, docs in cases.items():
        for bad in docs:
            check = own_check(bad, meter=1, round_no=2, head=doc["head"])
            assert not check.ok
            assert check.reason.startswith(reason), (reason, check.reason)


def test_the_meter_notices_a_wrong_payload_or_a_foreign_signature(small_ledger: Path) -> None:
    doc = inclusion_proof_for(small_ledger, 1, 2)
    check = verify_own_contribution(
        meter=1,
        round=2,
        payload_sha256=hashlib.sha256(b"what we really sent").digest(),
        proof=doc,
        head=doc["head"],
        ledger_key=VERIFIER,
    )
    assert (check.ok, check.reason) == (
        False,
        "the ledger commits to a different payload than the one we sent",
    )
    check = own_check(doc, meter=1, round_no=2, meter_key=meter_key(5).public_key())
    assert (check.ok, check.reason) == (False, "the ledger entry does not carry our signature")
    # A meter that kept the signature it made compares it instead of verifying.
    entry = decode_entry(bytes.fromhex(doc["entry"]))
    assert isinstance(entry, MeterContribution)
    mine = own_check(doc, meter=1, round_no=2, meter_key=None, own_signature=entry.signature)
    assert mine.ok, mine.reason
    other = own_check(doc, meter=1, round_no=2, meter_key=None, own_signature=bytes(64))
    assert (other.ok, other.reason) == (False, "the ledger entry does not carry our signature")


def test_a_head_not_signed_by_the_ledger_key_is_refused(small_ledger: Path) -> None:
    doc = inclusion_proof_for(small_ledger, 0, 0)
    head = verify_head(doc["head"].encode(), VERIFIER).head
    foreign = sign_head(head, NoteSigner(ORIGIN, ledger_key(7))).note.decode()
    check = own_check(doc, meter=0, round_no=0, head=foreign)
    assert not check.ok and "not signed by the ledger key" in check.reason


def test_missing_proof_or_head_is_reported(small_ledger: Path) -> None:
    doc = inclusion_proof_for(small_ledger, 0, 0)
    check = own_check(None, meter=0, round_no=0)
    assert (check.ok, check.reason) == (False, "no inclusion proof for meter 0 round 0")
    check = verify_own_contribution(
        meter=0, round=0, payload_sha256=bytes(32), proof=doc, head=None, ledger_key=VERIFIER
    )
    assert (check.ok, check.reason) == (False, "no signed head to check the proof against")


def test_no_proof_for_an_absent_meter_or_a_tampered_ledger(small_ledger: Path) -> None:
    with pytest.raises(IntegrityError, match="no contribution of meter 9 in round 1"):
        inclusion_proof_for(small_ledger, 9, 1)
    (small_ledger / "heads" / "00000001.checkpoint").write_bytes(b"junk\n")
    with pytest.raises(IntegrityError, match="ledger does not verify: block 1"):
        inclusion_proof_for(small_ledger, 0, 0)


def test_a_meter_can_check_that_the_log_only_grew(tmp_path: Path) -> None:
    from gridsim.ledger import LedgerWriter, verify_log_growth

    from .conftest import round_entries, ticking_clock

    with LedgerWriter(tmp_path / "l", ledger_key(0), ORIGIN, clock_ms=ticking_clock()) as writer:
        writer.append_block(round_entries(0, meters=3))
        seen = writer.head
        assert seen is not None
        writer.append_block(round_entries(1, meters=3))
        writer.append_block(round_entries(2, meters=3))
        doc = writer.consistency_proof(seen.head.size)
    check = verify_log_growth(
        old_head=seen.note, new_head=doc["head"], proof=json.dumps(doc), ledger_key=VERIFIER
    )
    assert (check.ok, check.reason) == (True, "the log grew from 4 to 12 entries")

    # A fork: another log under the same key whose first block differs.
    with LedgerWriter(tmp_path / "fork", ledger_key(0), ORIGIN, clock_ms=ticking_clock()) as fork:
        fork.append_block(round_entries(0, meters=2))
        fork.append_block(round_entries(1, meters=6))
        forked = fork.consistency_proof(4)
    check = verify_log_growth(
        old_head=seen.note, new_head=forked["head"], proof=forked, ledger_key=VERIFIER
    )
    assert (check.ok, check.reason) == (
        False,
        "the tree of 10 entries does not extend the one of 4 (the log was rewritten)",
    )
    check = verify_log_growth(
        old_head=doc["head"], new_head=seen.note, proof=doc, ledger_key=VERIFIER
    )
    assert (check.ok, check.reason) == (False, "the log shrank from 12 to 4 entries (rolled back)")
    check = verify_log_growth(
        old_head=seen.note,
        new_head=doc["head"],
        proof={**doc, "proof": doc["proof"][:-1]},
        ledger_key=VERIFIER,
    )
    assert not check.ok and "does not extend" in check.reason
