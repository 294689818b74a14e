"""Signed tree heads: C2SP ``tlog-checkpoint`` notes signed per C2SP ``signed-note``.

A head is the note text::

    <origin>
    <tree size>
    <base64 root hash>
    prev <base64 SHA-256 of the previous signed head>   (absent in the first head)
    time <unix milliseconds>

followed by a blank line and one signature line per key,
``— <key name> <base64(4-byte key ID || Ed25519 signature)>``. The key ID is
``SHA-256(key name || 0x0A || 0x01 || public key)[:4]``; a verifier key is written
as ``<name>+<hex key ID>+<base64(0x01 || public key)>`` (the form Go's
``golang.org/x/mod/sumdb/note`` reads).

Parsing is strict (canonical base64 and decimals, no stray lines or characters)
so that any change to a stored head is either unparseable or fails its signature.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridsim.exceptions import IntegrityError, MessageError
from gridsim.signatures import verify as ed25519_verify

ED25519_TYPE: Final = 0x01
MAX_NOTE_BYTES: Final = 64 * 1024
MAX_SIGNATURES: Final = 16
_DASH: Final = "\u2014 "
_NAME = re.compile(r"^[^\s+]+$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,19})$")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError(f"{what} is not valid base64") from None
    if _b64encode(data) != text:
        raise MessageError(f"{what} is not canonical base64")
    return data


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise MessageError(f"key name {name!r} is empty or contains a space or '+'")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte C2SP signed-note key ID of an Ed25519 ``public_key`` under ``name``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_TYPE]) + public_key).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted Ed25519 note key: its name, key ID and public key."""

    name: str
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, _raw_public(self.public_key))

    def to_vkey(self) -> str:
        """``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
        raw = bytes([ED25519_TYPE]) + _raw_public(self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{_b64encode(raw)}"

    @classmethod
    def from_vkey(cls, text: str) -> NoteVerifier:
        """Parse a verifier key string; :class:`MessageError` if malformed or inconsistent."""
        parts = text.split("+", 2)  # the base64 key may itself contain "+"
        if len(parts) != 3:
            raise MessageError("verifier key is not <name>+<hex key id>+<base64 key>")
        name, hex_id, b64 = parts
        _check_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise MessageError("verifier key ID is not 8 lowercase hex digits")
        raw = _b64decode(b64, "verifier key")
        if len(raw) != 33 or raw[0] != ED25519_TYPE:
            raise MessageError("verifier key is not an Ed25519 key (type 0x01, 32 bytes)")
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_id.hex() != hex_id:
            raise MessageError("verifier key ID does not match its name and key")
        return verifier


@dataclass(frozen=True)
class NoteSigner:
    """An Ed25519 note signing key under a key name (the log's origin)."""

    name: str
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        _check_name(self.name)

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.private_key.public_key())

    def sign(self, text: str) -> str:
        """The signed note: ``text``, a blank line and this key's signature line."""
        _check_text(text)
        signature = self.private_key.sign(text.encode())
        return f"{text}\n{_DASH}{self.name} {_b64encode(self.verifier.key_id + signature)}\n"


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
"""A control character other than the newline (one regex scan instead of a Python
loop per character: every meter checks every round's signed head)."""


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MessageError("note text does not end in a newline")
    if _CONTROL.search(text):
        raise MessageError("note contains a control character")


def parse_note(data: bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines (no verification)."""
    if len(data) > MAX_NOTE_BYTES:
        raise MessageError(f"note of {len(data)} bytes exceeds {MAX_NOTE_BYTES}")
    try:
        note = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("note is not valid UTF-8") from None
    _check_text(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise MessageError("note has no blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    signatures: list[NoteSignature] = []
    for line in sig_block.splitlines():
        if not line.startswith(_DASH):
            raise MessageError("signature line does not start with an em dash and a space")
        fields = line[len(_DASH) :].split(" ")
        if len(fields) != 2:
            raise MessageError("signature line is not '— <name> <base64>'")
        name, b64 = fields
        _check_name(name)
        raw = _b64decode(b64, "signature")
        if len(raw) < 5:
            raise MessageError("signature is too short")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    if not signatures:
        raise MessageError("note has no signature")
    if len(signatures) > MAX_SIGNATURES:
        raise MessageError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, signatures


@functools.lru_cache(maxsize=64)
def _signature_ok(public_key: bytes, signature: bytes, message: bytes) -> bool:
    # A pure function of its bytes, remembered: after a round every meter of a
    # process checks the same signed head (500 verifications became one).
    return ed25519_verify(public_key, signature, message)


def open_note(data: bytes, verifier: NoteVerifier) -> str:
    """The text of a signed note whose signature by ``verifier`` is valid.

    Signatures by other keys are ignored, as the signed-note spec requires; a
    signature by ``verifier`` that fails, or none at all, raises :class:`IntegrityError`.
    """
    text, signatures = parse_note(data)
    ours = [s for s in signatures if s.name == verifier.name and s.key_id == verifier.key_id]
    if not ours:
        others = ", ".join(f"{s.name} ({s.key_id.hex()})" for s in signatures)
        raise IntegrityError(
            f"not signed by the ledger key {verifier.name} ({verifier.key_id.hex()}); "
            f"signed by {others}"
        )
    for sig in ours:
        if not _signature_ok(_raw_public(verifier.public_key), sig.signature, text.encode()):
            raise IntegrityError(
                f"signature by {verifier.name} ({verifier.key_id.hex()}) does not verify"
            )
    return text


@dataclass(frozen=True)
class TreeHead:
    """The content of a checkpoint: origin, tree size, root, and our two extensions."""

    origin: str
    size: int
    root: bytes
    prev: bytes | None
    """SHA-256 of the previous signed head (its full note bytes), None for the first."""
    time_ms: int

    def __post_init__(self) -> None:
        _check_name(self.origin)
        if not 0 <= self.size < 2**64:
            raise MessageError(f"tree size {self.size} is outside [0, 2**64)")
        if len(self.root) != 32:
            raise MessageError("root hash is not 32 bytes")
        if self.prev is not None and len(self.prev) != 32:
            raise MessageError("previous head hash is not 32 bytes")
        if not 0 <= self.time_ms < 2**63:
            raise MessageError(f"time {self.time_ms} is outside [0, 2**63)")

    def text(self) -> str:
        lines = [self.origin, str(self.size), _b64encode(self.root)]
        if self.prev is not None:
            lines.append(f"prev {_b64encode(self.prev)}")
        lines.append(f"time {self.time_ms}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> TreeHead:
        lines = text.split("\n")
        if lines[-1] != "" or not 5 <= len(lines) <= 6:
            raise MessageError("checkpoint is not origin, size, root, [prev], time lines")
        lines = lines[:-1]
        origin, size_text, root_text = lines[:3]
        if not _DECIMAL.match(size_text):
            raise MessageError(f"tree size {size_text!r} is not a canonical decimal")
        root = _b64decode(root_text, "root hash")
        prev: bytes | None = None
        rest = lines[3:]
        if len(rest) == 2:
            if not rest[0].startswith("prev "):
                raise MessageError("checkpoint extension is not 'prev <base64>'")
            prev = _b64decode(rest[0][5:], "previous head hash")
        time_line = rest[-1]
        if not time_line.startswith("time ") or not _DECIMAL.match(time_line[5:]):
            raise MessageError("checkpoint extension is not 'time <unix ms>'")
        head = cls(origin, int(size_text), root, prev, int(time_line[5:]))
        if head.text() != text:
            raise MessageError("checkpoint is not in canonical form")
        return head


@dataclass(frozen=True)
class SignedHead:
    """A tree head together with the exact bytes of its signed note."""

    head: TreeHead
    note: bytes

    @property
    def hash(self) -> bytes:
        """SHA-256 of the whole signed note: what the next head names as ``prev``."""
        return hashlib.sha256(self.note).digest()


def sign_head(head: TreeHead, signer: NoteSigner) -> SignedHead:
    if signer.name != head.origin:
        raise MessageError(f"key name {signer.name!r} differs from origin {head.origin!r}")
    return SignedHead(head, signer.sign(head.text()).encode())


def verify_head(note: bytes, verifier: NoteVerifier) -> SignedHead:
    """Parse a signed head and check its signature; raises on anything wrong."""
    text = open_note(note, verifier)
    head = TreeHead.from_text(text)
    if head.origin != verifier.name:
        raise IntegrityError(f"origin {head.origin!r} differs from key name {verifier.name!r}")
    return SignedHead(head, note)


def load_verifier(data: bytes) -> NoteVerifier:
    """A verifier from a key file's bytes: one vkey line ending in a newline."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("verifier key file is not UTF-8") from None
    if not text.endswith("\n") or text.count("\n") != 1:
        raise MessageError("verifier key file is not one line ending in a newline")
    return NoteVerifier.from_vkey(text[:-1])


def load_pem_verifier(data: bytes, name: str) -> NoteVerifier:
    """A verifier named ``name`` from a PEM SubjectPublicKeyInfo Ed25519 key."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise MessageError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise MessageError("PEM public key is not Ed25519")
    return NoteVerifier(name, key)


__all__ = [
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignedHead",
    "TreeHead",
    "key_id",
    "load_pem_verifier",
    "load_verifier",
    "open_note",
    "parse_note",
    "sign_head",
    "verify_head",
]
