"""Verify a ledger directory end to end, and prove one meter's contribution.

``audit(path)`` checks, block by block and stopping at the first problem: the
ledger key file; each head's Ed25519 signature, canonical form and origin; that
each head names the previous head's hash and grows the tree; that every entry
covered by a head decodes and belongs to its block's round; the Merkle root of
the entries against every head; the RFC 9162 consistency proof between successive
heads; the privacy budget recorded in the round records; and that
``blockchain.json`` is exactly the export of the verified blocks. Entries past the
last head (a writer killed between its fsync and its head) are reported, not
verified.

A ledger directory holds::

    key.pub            the log's verifier key, <name>+<hex key id>+<base64 key>
    entries.log        length-prefixed entries (see gridsim.ledger.entries)
    heads/NNNNNNNN.checkpoint   the signed head of block N (C2SP checkpoint)
    blockchain.json    the blocks, exported for readers of the original format

``python -m gridsim audit LEDGER`` runs :func:`main`: exit 0 when intact, 1 when
not (one line naming the first bad block and entry), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gridsim.exceptions import GridsimError, IntegrityError, MessageError
from gridsim.ledger.checkpoint import (
    NoteVerifier,
    SignedHead,
    load_pem_verifier,
    load_verifier,
    verify_head,
)
from gridsim.ledger.entries import (
    Entry,
    MeterContribution,
    RoundRecord,
    decode_entry,
    describe,
    read_frames,
)
from gridsim.ledger.merkle import (
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)

ENTRIES_LOG: Final = "entries.log"
HEADS_DIR: Final = "heads"
KEY_FILE: Final = "key.pub"
BLOCKCHAIN_JSON: Final = "blockchain.json"
HEAD_NAME: Final = re.compile(r"^([0-9]{8,})\.checkpoint$")
BLOCKCHAIN_FORMAT: Final = "gridsim-blockchain"

EpsilonOf = Callable[[Mapping[str, Any], int], float]
"""``epsilon_of(dp_params, rounds)``: epsilon spent after ``rounds`` rounds with those params."""


def head_file(index: int) -> str:
    return f"{index:08d}.checkpoint"


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two below ``n`` (n > 1): where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


class LogTree:
    """The RFC 9162 tree over the log's entries, kept as levels of perfect subtrees.

    Appending costs O(log n) amortised; the root at any size and inclusion and
    consistency proofs cost O(log^2 n) at most, so a writer can serve a proof to
    every meter after every round and an auditor can check every head without
    rehashing the log each time. Leaf hashes come from the Rust core; every proof
    built here is checked by the core's verifier before it is used or served.
    """

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self._levels: list[list[bytes]] = [[]]
        self._contributions: dict[tuple[int, int], list[tuple[str, int]]] = {}

    def __len__(self) -> int:
        return len(self.leaves)

    def append(self, data: bytes, entry: Entry) -> None:
        """Add one entry (its bytes, and the decoded entry for the meter index)."""
        index = len(self.leaves)
        self.leaves.append(data)
        self._levels[0].append(leaf_hash(data))
        level = 0
        while len(self._levels[level]) % 2 == 0:
            nodes = self._levels[level]
            if len(self._levels) == level + 1:
                self._levels.append([])
            self._levels[level + 1].append(_node(nodes[-2], nodes[-1]))
            level += 1
        if isinstance(entry, MeterContribution):
            key = (entry.meter, entry.round)
            self._contributions.setdefault(key, []).append((entry.session, index))

    def truncate(self, size: int) -> None:
        """Forget every leaf from ``size`` on."""
        if size >= len(self.leaves):
            return
        del self.leaves[size:]
        for level, nodes in enumerate(self._levels):
            del nodes[size >> level :]
        for key, places in list(self._contributions.items()):
            kept = [(s, i) for s, i in places if i < size]
            if kept:
                self._contributions[key] = kept
            else:
                del self._contributions[key]

    def _hash(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n & (n - 1) == 0:
            # Every left subtree in RFC 9162's recursion is perfect and aligned: stored.
            return self._levels[n.bit_length() - 1][start // n]
        k = _split(n)
        return _node(self._hash(start, start + k), self._hash(start + k, end))

    def root(self, size: int) -> bytes:
        """Root of the tree over the first ``size`` leaves."""
        if not 0 <= size <= len(self.leaves):
            raise IntegrityError(f"tree size {size} outside 0..{len(self.leaves)}")
        return self._hash(0, size)

    def leaf_hash(self, index: int) -> bytes:
        return self._levels[0][index]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 audit path of leaf ``index`` in the tree of ``size`` leaves."""
        if not 0 <= index < size <= len(self.leaves):
            raise IntegrityError(f"no leaf {index} in a tree of {size}")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start += k
        return path[::-1]

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 proof that the tree of ``old`` leaves is a prefix of the one of ``new``."""
        if not 0 <= old <= new <= len(self.leaves):
            raise IntegrityError(f"no consistency proof from {old} to {new}")
        if old in (0, new):
            return []
        proof: list[bytes] = []
        start, end, m, whole = 0, new, old, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            proof.append(self._hash(start, end))
        return proof[::-1]

    def find(self, meter: int, round: int, session: str | None = None) -> int:
        """Leaf index of ``meter``'s contribution to ``round``; IntegrityError if none or many."""
        places = [
            (s, i) for s, i in self._contributions.get((meter, round), []) if session in (None, s)
        ]
        if not places:
            raise IntegrityError(f"no contribution of meter {meter} in round {round}")
        if len(places) > 1:
            sessions = ", ".join(sorted({s for s, _ in places}))
            raise IntegrityError(
                f"meter {meter} round {round} appears in sessions {sessions}; give the session"
            )
        return places[0][1]


@dataclass(frozen=True)
class Block:
    """One verified block: its head and the entries it added to the log."""

    index: int
    head: SignedHead
    first: int
    entries: tuple[Entry, ...]

    @property
    def session(self) -> str:
        return self.entries[0].session

    @property
    def round(self) -> int:
        return self.entries[0].round


@dataclass
class LedgerState:
    """What a verified read of a ledger found (up to the first problem, if any)."""

    verifier: NoteVerifier | None = None
    blocks: list[Block] = field(default_factory=list)
    tree: LogTree = field(default_factory=LogTree)
    sealed_bytes: int = 0
    """Length of the prefix of ``entries.log`` covered by the last verified head."""
    unsealed_entries: int = 0
    unsealed_bytes: int = 0
    blockchain_blocks: int = 0

    @property
    def last_head(self) -> SignedHead | None:
        return self.blocks[-1].head if self.blocks else None


@dataclass
class AuditReport:
    """The verdict of :func:`audit`: ``ok``, and if not, the first problem and where."""

    path: str
    ok: bool
    problem: str | None
    bad_block: int | None
    bad_entry: int | None
    blocks: int
    tree_size: int
    root: str | None
    head_hash: str | None
    key: str | None
    key_pinned: bool
    """Whether the log key was given by the caller, rather than read from ``key.pub``."""
    epsilon_spent: float | None
    warnings: list[str]

    def line(self) -> str:
        """One line for people: the verdict, and the first problem when there is one."""
        if not self.ok:
            return f"TAMPERED {self.path}: {self.problem}"
        text = (
            f"OK {self.path}: {self.blocks} blocks, {self.tree_size} entries, "
            f"root {self.root or '-'}"
        )
        if self.epsilon_spent is not None:
            text += f", epsilon spent {self.epsilon_spent:g}"
        return text

    def summary(self) -> dict[str, Any]:
        """The ``ledger`` section of ``summary.json``."""
        return {
            "path": self.path,
            "size": self.tree_size,
            "root": self.root,
            "heads": self.blocks,
            "verified": self.ok,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "problem": self.problem,
            "bad_block": self.bad_block,
            "bad_entry": self.bad_entry,
            "blocks": self.blocks,
            "tree_size": self.tree_size,
            "root": self.root,
            "head_hash": self.head_hash,
            "key": self.key,
            "key_pinned": self.key_pinned,
            "epsilon_spent": self.epsilon_spent,
            "warnings": self.warnings,
        }


class _Bad(Exception):
    def __init__(self, message: str, block: int | None = None, entry: int | None = None):
        super().__init__(message)
        self.block = block
        self.entry = entry


def _where(block: int | None, entry: int | None, entry_obj: Entry | None = None) -> str:
    parts = []
    if block is not None:
        parts.append(f"block {block}")
    if entry is not None:
        parts.append(f"entry {entry}" + (f" ({describe(entry_obj)})" if entry_obj else ""))
    return ", ".join(parts)


def _resolve_verifier(
    path: Path, public_key: NoteVerifier | Ed25519PublicKey | None
) -> NoteVerifier:
    key_path = path / KEY_FILE
    try:
        stored = load_verifier(key_path.read_bytes())
    except FileNotFoundError:
        raise _Bad(f"{KEY_FILE} is missing") from None
    except (MessageError, ValueError) as exc:
        raise _Bad(f"{KEY_FILE}: {exc}") from None
    if public_key is None:
        return stored
    pinned = (
        public_key
        if isinstance(public_key, NoteVerifier)
        else NoteVerifier(stored.name, public_key)
    )
    if pinned.to_vkey() != stored.to_vkey():
        raise _Bad(
            f"{KEY_FILE} names key {stored.name} ({stored.key_id.hex()}), "
            f"not the pinned key {pinned.name} ({pinned.key_id.hex()})"
        )
    return pinned


def _head_notes(path: Path, warnings: list[str]) -> list[bytes]:
    heads_dir = path / HEADS_DIR
    if not heads_dir.is_dir():
        raise _Bad(f"{HEADS_DIR}/ is missing")
    indexed: dict[int, Path] = {}
    for item in sorted(heads_dir.iterdir()):
        match = HEAD_NAME.match(item.name)
        if match:
            indexed[int(match.group(1))] = item
        elif item.name.endswith(".tmp"):
            warnings.append(f"{HEADS_DIR}/{item.name}: leftover of an interrupted head write")
        else:
            raise _Bad(f"{HEADS_DIR}/{item.name}: unexpected file")
    for expected, index in enumerate(sorted(indexed)):
        if index != expected:
            raise _Bad(f"block {expected}: head is missing", block=expected)
        if indexed[index].name != head_file(index):
            raise _Bad(f"block {index}: head file name {indexed[index].name} is not canonical")
    return [indexed[i].read_bytes() for i in range(len(indexed))]


def _check_block_entries(
    index: int, first: int, entries: Sequence[Entry], seen_rounds: dict[str, int]
) -> None:
    records = [e for e in entries if isinstance(e, RoundRecord)]
    # The round record says which round the block is; without one, the first entry does.
    anchor = records[0] if records else entries[0]
    session, round_no = anchor.session, anchor.round
    participants = set(records[0].participants) if records else None
    meters: set[int] = set()
    for offset, entry in enumerate(entries):
        where = _where(index, first + offset, entry)
        if (entry.session, entry.round) != (session, round_no):
            raise _Bad(
                f"{where}: belongs to session {entry.session} round {entry.round}, "
                f"but the block is session {session} round {round_no}",
                index,
                first + offset,
            )
        if isinstance(entry, RoundRecord) and entry is not records[0]:
            raise _Bad(f"{where}: second round record in one block", index, first + offset)
        if isinstance(entry, MeterContribution):
            if entry.meter in meters:
                raise _Bad(f"{where}: meter contributes twice in one round", index, first + offset)
            meters.add(entry.meter)
            if participants is not None and entry.meter not in participants:
                raise _Bad(
                    f"{where}: meter is not among the round's participants", index, first + offset
                )
    previous = seen_rounds.get(session)
    if previous is not None and round_no <= previous:
        raise _Bad(
            f"{_where(index, first)}: session {session} round {round_no} does not follow "
            f"round {previous} (replayed or reordered round)",
            index,
            first,
        )
    seen_rounds[session] = round_no


class _EpsilonCheck:
    """Follows the privacy budget through the round records, block by block."""

    def __init__(self, epsilon_of: EpsilonOf | None) -> None:
        if epsilon_of is None:
            # By default the privacy accountant recomputes what each record claims.
            from gridsim.privacy.accounting import epsilon_from_record

            epsilon_of = epsilon_from_record
        self.epsilon_of = epsilon_of
        self.last: dict[str, float] = {}
        self.rounds: dict[str, int] = {}
        self.spent: float | None = None

    def _expected(self, record: RoundRecord, where: str, at: tuple[int, int]) -> float:
        assert self.epsilon_of is not None
        try:
            return float(self.epsilon_of(record.dp, self.rounds[record.session]))
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            raise _Bad(
                f"{where}: epsilon cannot be computed from its DP parameters: {exc}", *at
            ) from None

    def block(self, block: Block) -> None:
        for offset, entry in enumerate(block.entries):
            if not isinstance(entry, RoundRecord):
                continue
            at = (block.index, block.first + offset)
            where = _where(block.index, block.first + offset, entry)
            self.rounds[entry.session] = self.rounds.get(entry.session, 0) + 1
            eps = entry.epsilon_spent
            if self.epsilon_of is not None:
                expected = self._expected(entry, where, at)
                if eps is None:
                    if math.isfinite(expected) and expected > 0.0:
                        raise _Bad(
                            f"{where}: records no epsilon but its DP parameters give {expected:g}",
                            *at,
                        )
                elif not math.isclose(eps, expected, rel_tol=1e-9, abs_tol=1e-12):
                    raise _Bad(
                        f"{where}: records epsilon {eps:g} but its DP parameters give "
                        f"{expected:g} after {self.rounds[entry.session]} rounds",
                        *at,
                    )
            if eps is None:
                continue
            before = self.last.get(entry.session)
            if before is not None and eps < before:
                raise _Bad(f"{where}: epsilon spent falls from {before:g} to {eps:g}", *at)
            self.last[entry.session] = eps
            self.spent = eps


def _timestamp(time_ms: int) -> str:
    moment = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def blockchain_document(verifier: NoteVerifier, blocks: Sequence[Block]) -> bytes:
    """``blockchain.json`` for ``blocks``: the canonical bytes the writer stores."""
    exported = []
    for block in blocks:
        head = block.head.head
        contributions = sum(isinstance(e, MeterContribution) for e in block.entries)
        exported.append(
            {
                "index": block.index,
                "timestamp": _timestamp(head.time_ms),
                "previous_hash": (head.prev or bytes(32)).hex(),
                "entries": {
                    "first": block.first,
                    "count": len(block.entries),
                    "session": block.session,
                    "round": block.round,
                    "meter_contributions": contributions,
                    "round_records": len(block.entries) - contributions,
                },
                "tree_size": head.size,
                "root": head.root.hex(),
                "head_hash": block.head.hash.hex(),
            }
        )
    document = {
        "format": BLOCKCHAIN_FORMAT,
        "version": 1,
        "origin": verifier.name,
        "key": verifier.to_vkey(),
        "blocks": exported,
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def _check_blockchain(path: Path, state: LedgerState, warnings: list[str]) -> None:
    assert state.verifier is not None
    try:
        data = (path / BLOCKCHAIN_JSON).read_bytes()
    except FileNotFoundError:
        raise _Bad(f"{BLOCKCHAIN_JSON} is missing") from None
    try:
        listed = json.loads(data)["blocks"]
        count = len(listed)
    except (ValueError, KeyError, TypeError):
        raise _Bad(f"{BLOCKCHAIN_JSON} is not a blockchain export") from None
    if count > len(state.blocks):
        raise _Bad(
            f"{BLOCKCHAIN_JSON} lists {count} blocks but only {len(state.blocks)} heads exist "
            f"(heads removed?)",
            block=len(state.blocks),
        )
    if data != blockchain_document(state.verifier, state.blocks[:count]):
        expected = json.loads(blockchain_document(state.verifier, state.blocks[:count]))
        actual = json.loads(data)
        for i in range(count):
            if actual["blocks"][i] != expected["blocks"][i]:
                raise _Bad(f"{BLOCKCHAIN_JSON}: block {i} differs from the ledger", block=i)
        raise _Bad(f"{BLOCKCHAIN_JSON} differs from the export of the verified blocks")
    state.blockchain_blocks = count
    if count < len(state.blocks):
        warnings.append(
            f"{BLOCKCHAIN_JSON} lists {count} of {len(state.blocks)} blocks (the writer stopped "
            f"before exporting; reopening it rewrites the file)"
        )


def read_ledger(
    path: str | Path,
    *,
    public_key: NoteVerifier | Ed25519PublicKey | None = None,
    epsilon_of: EpsilonOf | None = None,
    meter_keys: Mapping[int, Ed25519PublicKey] | None = None,
) -> tuple[AuditReport, LedgerState]:
    """Verify the ledger at ``path``; the report and everything verified before any problem."""
    root_path = Path(path)
    state = LedgerState()
    warnings: list[str] = []
    problem: _Bad | None = None
    epsilon = _EpsilonCheck(epsilon_of)
    try:
        if not root_path.is_dir():
            raise _Bad(f"{root_path} is not a ledger directory")
        state.verifier = _resolve_verifier(root_path, public_key)
        notes = _head_notes(root_path, warnings)
        try:
            log = (root_path / ENTRIES_LOG).read_bytes()
        except FileNotFoundError:
            raise _Bad(f"{ENTRIES_LOG} is missing") from None
        frames, parsed_end = read_frames(log)
        _read_blocks(state, notes, frames, meter_keys, epsilon)
        covered = state.blocks[-1].head.head.size if state.blocks else 0
        state.sealed_bytes = frames[covered][0] if covered < len(frames) else parsed_end
        state.unsealed_entries = len(frames) - covered
        state.unsealed_bytes = len(log) - state.sealed_bytes
        if state.unsealed_bytes:
            warnings.append(
                f"{ENTRIES_LOG}: {state.unsealed_bytes} bytes ({state.unsealed_entries} complete "
                f"entries) past the last head are not covered by any signed head and were not "
                f"verified (a writer stopped before signing; reopening it truncates them)"
            )
        _check_blockchain(root_path, state, warnings)
    except _Bad as bad:
        problem = bad
    last = state.last_head
    state.tree.truncate(last.head.size if last else 0)
    report = AuditReport(
        path=str(root_path),
        ok=problem is None,
        problem=str(problem) if problem else None,
        bad_block=problem.block if problem else None,
        bad_entry=problem.entry if problem else None,
        blocks=len(state.blocks),
        tree_size=last.head.size if last else 0,
        root=last.head.root.hex() if last else None,
        head_hash=last.hash.hex() if last else None,
        key=state.verifier.to_vkey() if state.verifier else None,
        key_pinned=public_key is not None,
        epsilon_spent=epsilon.spent,
        warnings=warnings,
    )
    return report, state


def _read_blocks(
    state: LedgerState,
    notes: Sequence[bytes],
    frames: Sequence[tuple[int, bytes]],
    meter_keys: Mapping[int, Ed25519PublicKey] | None,
    epsilon: _EpsilonCheck,
) -> None:
    assert state.verifier is not None
    seen_notes: dict[bytes, int] = {}
    seen_rounds: dict[str, int] = {}
    tree = state.tree  # grows as blocks are read; trimmed to the verified prefix on error
    previous: SignedHead | None = None
    for index, note in enumerate(notes):
        if note in seen_notes:
            raise _Bad(f"block {index}: head is a replay of block {seen_notes[note]}'s head", index)
        seen_notes[note] = index
        try:
            signed = verify_head(note, state.verifier)
        except (IntegrityError, MessageError) as exc:
            raise _Bad(f"block {index}: head: {exc}", index) from None
        head = signed.head
        old_size = previous.head.size if previous else 0
        if previous is None and head.prev is not None:
            raise _Bad(f"block {index}: the first head names a previous head", index)
        if previous is not None and head.prev != previous.hash:
            named = head.prev.hex()[:16] if head.prev else "none"
            raise _Bad(
                f"block {index}: head names previous head {named}…, but block {index - 1}'s "
                f"head is {previous.hash.hex()[:16]}… (heads reordered, replaced or removed)",
                index,
            )
        if head.size <= old_size:
            raise _Bad(
                f"block {index}: tree size {head.size} does not grow past block "
                f"{index - 1}'s {old_size} (replayed or forged head)",
                index,
            )
        if head.size > len(frames):
            raise _Bad(
                f"block {index}: head covers {head.size} entries but {ENTRIES_LOG} holds "
                f"only {len(frames)} complete entries (log truncated, or a length prefix changed)",
                index,
                len(frames),
            )
        entries: list[Entry] = []
        for number in range(old_size, head.size):
            data = frames[number][1]
            try:
                entry = decode_entry(data)
            except MessageError as exc:
                raise _Bad(f"{_where(index, number)}: {exc}", index, number) from None
            if meter_keys is not None and isinstance(entry, MeterContribution):
                key = meter_keys.get(entry.meter)
                if key is not None:
                    try:
                        entry.verify(key)
                    except IntegrityError:
                        raise _Bad(
                            f"{_where(index, number, entry)}: meter signature does not verify",
                            index,
                            number,
                        ) from None
            entries.append(entry)
            tree.append(data, entry)
        _check_block_entries(index, old_size, entries, seen_rounds)
        if tree.root(head.size) != head.root:
            raise _Bad(
                f"block {index}, entries {old_size}-{head.size - 1}: their Merkle root differs "
                f"from the signed root (an entry of this block was changed, added or removed)",
                index,
                old_size,
            )
        if previous is not None and not verify_consistency(
            old_size,
            head.size,
            previous.head.root,
            head.root,
            tree.consistency_proof(old_size, head.size),
        ):
            raise _Bad(f"block {index}: not consistent with block {index - 1}", index)
        block = Block(index, signed, old_size, tuple(entries))
        epsilon.block(block)
        state.blocks.append(block)
        previous = signed
    # The per-head roots above come from LogTree; the core recomputes the last one from scratch.
    if previous is not None and merkle_root(tree.leaves) != previous.head.root:
        raise _Bad(
            f"block {len(notes) - 1}: the Merkle root recomputed by the core differs from the "
            f"signed root",
            len(notes) - 1,
        )


def audit(
    path: str | Path,
    *,
    public_key: NoteVerifier | Ed25519PublicKey | None = None,
    epsilon_of: EpsilonOf | None = None,
    meter_keys: Mapping[int, Ed25519PublicKey] | None = None,
) -> AuditReport:
    """Verify the ledger at ``path`` (see the module doc); never raises for a bad ledger.

    ``public_key`` pins the log key (otherwise ``key.pub`` is trusted, which only
    catches accidents, not a dishonest operator). ``epsilon_of(dp_params, rounds)``
    recomputes each round record's epsilon; without it epsilon must only never fall.
    ``meter_keys`` checks the signature of every contribution by a listed meter.
    """
    report, _ = read_ledger(
        path, public_key=public_key, epsilon_of=epsilon_of, meter_keys=meter_keys
    )
    return report


# --- Inclusion proofs ----------------------------------------------------------------------


def proof_document(
    tree: LogTree, head: SignedHead | None, meter: int, round: int, session: str | None = None
) -> dict[str, Any]:
    """The inclusion proof of ``meter``'s contribution to ``round`` against ``head``."""
    if head is None:
        raise IntegrityError("the ledger has no signed head yet")
    index = tree.find(meter, round, session)
    size = head.head.size
    proof = tree.inclusion_proof(index, size)
    leaf = tree.leaf_hash(index)
    if not verify_inclusion(leaf, index, size, proof, head.head.root):
        raise IntegrityError(f"inclusion proof of leaf {index} does not verify")
    entry = decode_entry(tree.leaves[index])
    return {
        "meter": meter,
        "round": round,
        "session": entry.session,
        "leaf_hash": leaf.hex(),
        "index": index,
        "tree_size": size,
        "root": head.head.root.hex(),
        "proof": [node.hex() for node in proof],
        "entry": tree.leaves[index].hex(),
        "head": head.note.decode(),
    }


def inclusion_proof_for(
    path: str | Path,
    meter: int,
    round: int,
    *,
    session: str | None = None,
    public_key: NoteVerifier | Ed25519PublicKey | None = None,
) -> dict[str, Any]:
    """The verified inclusion proof of a meter's contribution, as a JSON-ready dict.

    Keys: ``leaf_hash``, ``index``, ``tree_size``, ``root``, ``proof`` (hex strings),
    plus ``entry`` (the leaf's bytes, hex) and ``head`` (the signed head it is
    against), which a meter needs to check the proof on its own. Raises
    :class:`IntegrityError` when the ledger does not verify or holds no such entry.
    """
    report, state = read_ledger(path, public_key=public_key)
    if not report.ok:
        raise IntegrityError(f"ledger does not verify: {report.problem}")
    return proof_document(state.tree, state.last_head, meter, round, session)


@dataclass(frozen=True)
class OwnCheck:
    """A meter's verdict on its own inclusion proof."""

    ok: bool
    reason: str


def verify_own_contribution(
    *,
    meter: int,
    round: int,
    payload_sha256: bytes,
    proof: Mapping[str, Any] | str | bytes | None,
    head: str | bytes | None,
    ledger_key: NoteVerifier,
    session: str | None = None,
    meter_key: Ed25519PublicKey | None = None,
    own_signature: bytes | None = None,
) -> OwnCheck:
    """What a meter checks after a round: is my masked input in the signed log?

    The meter knows its id, the round, the SHA-256 of the masked payload it sent
    and the ledger's verifier key; it is given ``proof`` (the JSON of
    :func:`inclusion_proof_for`) and ``head`` (the signed head). A missing proof or
    head is reported as such. Never raises for bad input. With ``meter_key`` the
    entry's signature is verified under it; a meter that kept the signature it made
    (``own_signature``; Ed25519 signatures are deterministic) compares it instead.
    """
    if proof is None:
        return OwnCheck(False, f"no inclusion proof for meter {meter} round {round}")
    if head is None:
        return OwnCheck(False, "no signed head to check the proof against")
    try:
        doc = json.loads(proof) if isinstance(proof, str | bytes) else dict(proof)
        note = head.encode() if isinstance(head, str) else head
        signed = verify_head(note, ledger_key)
        entry_bytes = bytes.fromhex(doc["entry"])
        leaf = bytes.fromhex(doc["leaf_hash"])
        index, size = int(doc["index"]), int(doc["tree_size"])
        root = bytes.fromhex(doc["root"])
        nodes = [bytes.fromhex(node) for node in doc["proof"]]
        entry = decode_entry(entry_bytes)
    except (GridsimError, ValueError, KeyError, TypeError) as exc:
        return OwnCheck(False, f"malformed proof or head: {exc}")
    if not isinstance(entry, MeterContribution):
        return OwnCheck(False, "the proven entry is not a meter contribution")
    if (entry.meter, entry.round) != (meter, round) or (
        session is not None and entry.session != session
    ):
        return OwnCheck(
            False,
            f"the proven entry is meter {entry.meter} round {entry.round} "
            f"(session {entry.session}), not ours",
        )
    if entry.payload_sha256 != payload_sha256:
        return OwnCheck(False, "the ledger commits to a different payload than the one we sent")
    if own_signature is not None and entry.signature != own_signature:
        return OwnCheck(False, "the ledger entry does not carry our signature")
    if meter_key is not None:
        try:
            entry.verify(meter_key)
        except IntegrityError:
            return OwnCheck(False, "the ledger entry does not carry our signature")
    if leaf_hash(entry_bytes) != leaf:
        return OwnCheck(False, "leaf hash does not match the entry")
    if (signed.head.size, signed.head.root) != (size, root):
        return OwnCheck(False, "the proof is against a different tree than the signed head")
    if not verify_inclusion(leaf, index, size, nodes, root):
        return OwnCheck(False, f"inclusion proof for leaf {index} of {size} does not verify")
    return OwnCheck(True, f"included as leaf {index} of {size}, head signed by {ledger_key.name}")


def consistency_document(tree: LogTree, old_size: int, head: SignedHead | None) -> dict[str, Any]:
    """The proof that the tree of ``old_size`` leaves is a prefix of the one under ``head``."""
    if head is None:
        raise IntegrityError("the ledger has no signed head yet")
    size = head.head.size
    if not 0 <= old_size <= size:
        raise IntegrityError(f"no consistency proof from size {old_size} to {size}")
    old_root = tree.root(old_size)
    proof = tree.consistency_proof(old_size, size)
    if not verify_consistency(old_size, size, old_root, head.head.root, proof):
        raise IntegrityError(f"consistency proof from {old_size} to {size} does not verify")
    return {
        "old_size": old_size,
        "tree_size": size,
        "old_root": old_root.hex(),
        "root": head.head.root.hex(),
        "proof": [node.hex() for node in proof],
        "head": head.note.decode(),
    }


def verify_log_growth(
    *,
    old_head: str | bytes,
    new_head: str | bytes,
    proof: Mapping[str, Any] | str | bytes,
    ledger_key: NoteVerifier,
) -> OwnCheck:
    """Whether the log under ``new_head`` extends the one under ``old_head`` (a meter's
    check, round after round, that nothing it saw was rewritten or rolled back).

    ``proof`` is the JSON of :func:`consistency_document` (or
    :meth:`LedgerWriter.consistency_proof`) from the old head's size. Never raises.
    """
    try:
        doc = json.loads(proof) if isinstance(proof, str | bytes) else dict(proof)
        old = verify_head(old_head.encode() if isinstance(old_head, str) else old_head, ledger_key)
        new = verify_head(new_head.encode() if isinstance(new_head, str) else new_head, ledger_key)
        nodes = [bytes.fromhex(node) for node in doc["proof"]]
        claimed = (int(doc["old_size"]), int(doc["tree_size"]))
    except (GridsimError, ValueError, KeyError, TypeError) as exc:
        return OwnCheck(False, f"malformed proof or head: {exc}")
    if new.head.size < old.head.size:
        return OwnCheck(
            False, f"the log shrank from {old.head.size} to {new.head.size} entries (rolled back)"
        )
    if claimed != (old.head.size, new.head.size):
        return OwnCheck(False, "the proof is for other tree sizes than the two heads")
    if not verify_consistency(old.head.size, new.head.size, old.head.root, new.head.root, nodes):
        return OwnCheck(
            False,
            f"the tree of {new.head.size} entries does not extend the one of {old.head.size} "
            f"(the log was rewritten)",
        )
    return OwnCheck(True, f"the log grew from {old.head.size} to {new.head.size} entries")


# --- Command line --------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``audit`` arguments to ``parser`` (for embedding in a larger CLI)."""
    parser.add_argument("ledger", type=Path, help="the ledger directory, e.g. OUT/ledger")
    parser.add_argument(
        "--public-key",
        type=Path,
        help="pin the log key: a key.pub line (<name>+<id>+<key>) or a PEM Ed25519 public key",
    )
    parser.add_argument("--meter", type=int, help="print and verify this meter's proof")
    parser.add_argument("--round", type=int, help="the round of --meter")
    parser.add_argument("--session", help="the session of --meter (when several)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _load_pinned(path: Path, ledger: Path) -> NoteVerifier:
    data = path.read_bytes()
    if data.startswith(b"-----BEGIN"):
        name = load_verifier((ledger / KEY_FILE).read_bytes()).name
        return load_pem_verifier(data, name)
    return load_verifier(data)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``audit`` command; returns the exit status."""
    if (args.meter is None) != (args.round is None):
        print("gridsim audit: --meter and --round go together", file=sys.stderr)
        return 2
    if not args.ledger.is_dir():
        print(f"gridsim audit: {args.ledger} is not a directory", file=sys.stderr)
        return 2
    pinned: NoteVerifier | None = None
    if args.public_key is not None:
        try:
            pinned = _load_pinned(args.public_key, args.ledger)
        except (OSError, GridsimError, ValueError) as exc:
            print(f"gridsim audit: --public-key {args.public_key}: {exc}", file=sys.stderr)
            return 2
    report, state = read_ledger(args.ledger, public_key=pinned)
    if args.meter is not None:
        if not report.ok:
            print(report.line())
            return 1
        try:
            doc = proof_document(state.tree, state.last_head, args.meter, args.round, args.session)
        except IntegrityError as exc:
            print(f"NOT FOUND {args.ledger}: {exc}")
            return 1
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(
                f"OK meter {args.meter} round {args.round}: leaf {doc['index']} of "
                f"{doc['tree_size']}, root {doc['root']}, {len(doc['proof'])} proof hashes"
            )
        return 0
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.line())
        for warning in report.warnings:
            print(f"  warning: {warning}")
        if report.ok and not report.key_pinned:
            print(
                f"  note: signatures were checked against {KEY_FILE} in the ledger itself; "
                f"pass --public-key to pin the operator's key"
            )
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """``gridsim audit LEDGER [--meter ID --round R] [--json] [--public-key FILE]``.

    ``argv`` holds the arguments after ``audit``. Exit 0: intact (or the proof
    verifies); 1: tampered, or no such contribution; 2: usage error.
    """
    parser = argparse.ArgumentParser(prog="gridsim audit", description=__doc__.splitlines()[0])
    configure_parser(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
