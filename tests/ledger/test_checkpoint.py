"""Signed tree heads in the C2SP checkpoint / signed-note formats."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from gridsim.exceptions import IntegrityError, MessageError
from gridsim.ledger import NoteSigner, NoteVerifier, TreeHead
from gridsim.ledger.checkpoint import key_id, open_note, parse_note, sign_head, verify_head

from .conftest import ORIGIN, ledger_key

ROOT = hashlib.sha256(b"root").digest()


def signer(seed: int = 0, name: str = ORIGIN) -> NoteSigner:
    return NoteSigner(name, ledger_key(seed))


def test_head_text_is_the_checkpoint_layout() -> None:
    head = TreeHead(ORIGIN, 12, ROOT, prev=bytes(range(32)), time_ms=1234)
    lines = head.text().split("\n")
    assert lines[:3] == [ORIGIN, "12", base64.b64encode(ROOT).decode()]
    assert lines[3] == "prev " + base64.b64encode(bytes(range(32))).decode()
    assert lines[4:] == ["time 1234", ""]
    assert TreeHead.from_text(head.text()) == head
    first = TreeHead(ORIGIN, 1, ROOT, prev=None, time_ms=0)
    assert "prev" not in first.text() and TreeHead.from_text(first.text()) == first


def test_signed_head_is_a_signed_note_with_the_spec_key_id() -> None:
    signed = sign_head(TreeHead(ORIGIN, 3, ROOT, None, 5), signer())
    text, sigs = parse_note(signed.note)
    assert signed.note.decode().endswith("\n") and "\n\n\u2014 " in signed.note.decode()
    raw_public = (
        ledger_key(0)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    expected_id = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw_public).digest()[:4]
    assert key_id(ORIGIN, raw_public) == expected_id
    assert [(s.name, s.key_id) for s in sigs] == [(ORIGIN, expected_id)]
    ledger_key(0).public_key().verify(sigs[0].signature, text.encode())
    assert verify_head(signed.note, signer().verifier).head.size == 3


def test_verifier_key_string_round_trips_and_checks_its_id() -> None:
    verifier = signer().verifier
    vkey = verifier.to_vkey()
    name, hex_id, b64 = vkey.split("+")
    assert name == ORIGIN and hex_id == verifier.key_id.hex()
    assert base64.b64decode(b64)[0] == 1
    assert NoteVerifier.from_vkey(vkey).to_vkey() == vkey
    wrong_id = f"{name}+{'0' * 8}+{b64}"
    with pytest.raises(MessageError, match="key ID does not match"):
        NoteVerifier.from_vkey(wrong_id)


def test_signatures_by_unknown_keys_are_ignored_but_one_trusted_is_needed() -> None:
    head = TreeHead(ORIGIN, 3, ROOT, None, 5)
    ours = sign_head(head, signer()).note.decode()
    cosigned = ours + signer(1, "witness.example/w1").sign(head.text()).split("\n\n")[-1]
    assert open_note(cosigned.encode(), signer().verifier) == head.text()
    other = sign_head(head, signer(1)).note
    with pytest.raises(IntegrityError, match="not signed by the ledger key"):
        open_note(other, signer().verifier)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("\n3\n", "\n03\n", "does not verify"),
        ("time 5", "time 6", "does not verify"),
        ("\n\n\u2014", "\n\u2014", "blank line"),
        ("\u2014 ", "- ", "em dash"),
    ],
)
def test_changed_heads_are_rejected(old: str, new: str, reason: str) -> None:
    note = sign_head(TreeHead(ORIGIN, 3, ROOT, None, 5), signer()).note.decode()
    assert old in note
    with pytest.raises((IntegrityError, MessageError), match=reason):
        verify_head(note.replace(old, new, 1).encode(), signer().verifier)


def test_non_canonical_base64_is_rejected() -> None:
    signed = sign_head(TreeHead(ORIGIN, 3, ROOT, None, 5), signer()).note.decode()
    root_line = signed.split("\n")[2]
    assert root_line.endswith("=")
    # The last character before '=' carries 2 unused bits; setting one keeps the decoded bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = root_line[-2]
    sibling = alphabet[alphabet.index(last) ^ 1]
    assert base64.b64decode(root_line[:-2] + sibling + "=") == base64.b64decode(root_line)
    forged = signed.replace(root_line, root_line[:-2] + sibling + "=", 1)
    with pytest.raises(IntegrityError):
        verify_head(forged.encode(), signer().verifier)
    # Even re-signed, such a head is refused: one head has one spelling.
    text = forged.split("\n\n")[0] + "\n"
    with pytest.raises(MessageError, match="canonical base64"):
        verify_head(signer().sign(text).encode(), signer().verifier)


def test_leading_zero_sizes_are_refused_even_when_signed() -> None:
    text = TreeHead(ORIGIN, 3, ROOT, None, 5).text().replace("\n3\n", "\n03\n")
    with pytest.raises(MessageError, match="canonical decimal"):
        verify_head(signer().sign(text).encode(), signer().verifier)


@pytest.mark.parametrize("control", ["\x00", "\t", "\r", "\x1b", "\x1f"])
def test_a_note_with_a_control_character_is_refused(control: str) -> None:
    # Newlines end lines; any other character below 0x20 is refused, whether it
    # is signed or arrives in a note.
    with pytest.raises(MessageError, match="control character"):
        signer().sign(f"{ORIGIN}\n1{control}\n")
    note = sign_head(TreeHead(ORIGIN, 3, ROOT, None, 5), signer()).note
    with pytest.raises(MessageError, match="control character"):
        parse_note(note.replace(b"\n3\n", f"\n3{control}\n".encode()))
    assert signer().sign(f"{ORIGIN}\n1 \x7f\u00e9\n").startswith(ORIGIN)
