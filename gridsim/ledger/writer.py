"""Append rounds to a ledger directory, crash-safely.

One block per round: :meth:`LedgerWriter.append_block` appends the round's
entries to ``entries.log`` and fsyncs it, then signs the head for the new tree
size (naming the previous head's hash) and installs it atomically in ``heads/``
(temp file, fsync, rename, fsync of the directory), then rewrites
``blockchain.json`` the same way. Killed at any point, the directory still
verifies up to its last head: entries past it were never signed, and reopening
the writer truncates them (see :attr:`LedgerWriter.recovered`) and continues.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridsim.exceptions import ConfigError, IntegrityError, InvalidInputError
from gridsim.ledger.audit import (
    BLOCKCHAIN_JSON,
    ENTRIES_LOG,
    HEADS_DIR,
    KEY_FILE,
    Block,
    LogTree,
    blockchain_document,
    consistency_document,
    head_file,
    proof_document,
    read_ledger,
)
from gridsim.ledger.checkpoint import NoteSigner, SignedHead, TreeHead, sign_head
from gridsim.ledger.entries import (
    Entry,
    MeterContribution,
    RoundRecord,
    decode_entry,
    encode_entry,
    frame,
)

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LedgerWriter:
    """The aggregator's side of the ledger in directory ``path``.

    ``origin`` names the log (and its key) in every head, e.g.
    ``gridsim.example/run-20261126``. Opening an existing ledger verifies it with
    ``signing_key``'s public key and resumes after its last head; a ledger that
    does not verify, or was signed by another key, raises :class:`IntegrityError`.
    """

    def __init__(
        self,
        path: str | Path,
        signing_key: Ed25519PrivateKey,
        origin: str,
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.path = Path(path)
        self._signer = NoteSigner(origin, signing_key)
        self._clock_ms = clock_ms
        self._blocks: list[Block] = []
        self._tree = LogTree()
        self._rounds: dict[str, int] = {}
        self._broken = False
        self.recovered: str | None = None
        """What opening had to repair (a truncated tail), or None."""
        self._open()

    # --- opening and recovery ----------------------------------------------------------

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # One writer per ledger: the lock is taken before any repair, so a second writer
        # can never truncate the tail the first is about to sign. The kernel drops it on kill.
        self._log = open(self.path / ENTRIES_LOG, "ab")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._log.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._log.close()
            raise ConfigError(f"ledger {self.path} is open in another writer") from None
        try:
            self._recover()
        except BaseException:
            self._log.close()
            raise

    def _recover(self) -> None:
        verifier = self._signer.verifier
        heads = self.path / HEADS_DIR
        fresh = not (self.path / KEY_FILE).exists()
        if fresh and heads.is_dir() and any(heads.glob("*.checkpoint")):
            raise IntegrityError(f"{self.path}: heads exist but {KEY_FILE} is missing")
        heads.mkdir(exist_ok=True)
        for leftover in [*heads.glob(".*.tmp"), *self.path.glob(".*.tmp")]:
            leftover.unlink()
        if fresh:
            # key.pub last: its presence is what marks the ledger as created.
            write_atomically(self.path / BLOCKCHAIN_JSON, blockchain_document(verifier, []))
            os.fsync(self._log.fileno())
            _fsync_dir(heads)
            write_atomically(self.path / KEY_FILE, (verifier.to_vkey() + "\n").encode())
            _fsync_dir(self.path.parent)
        report, state = read_ledger(self.path, public_key=verifier)
        if not report.ok:
            raise IntegrityError(f"cannot resume {self.path}: {report.problem}")
        self._blocks = list(state.blocks)
        self._tree = state.tree
        for block in self._blocks:
            self._rounds[block.session] = block.round
        if state.unsealed_bytes:
            with open(self.path / ENTRIES_LOG, "r+b") as entries:
                entries.truncate(state.sealed_bytes)
                os.fsync(entries.fileno())
            self.recovered = (
                f"truncated {state.unsealed_bytes} bytes ({state.unsealed_entries} complete "
                f"entries) past the last head (size {self.size}) of {self.path / ENTRIES_LOG}"
            )
            log.warning("ledger recovery: %s", self.recovered)
        if state.blockchain_blocks != len(self._blocks):
            self._export()

    # --- state -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of entries covered by the last signed head."""
        return len(self._tree)

    @property
    def blocks(self) -> int:
        return len(self._blocks)

    @property
    def head(self) -> SignedHead | None:
        """The last signed head (its ``note`` is what meters check proofs against)."""
        return self._blocks[-1].head if self._blocks else None

    def last_round(self, session: str) -> int | None:
        """The last round of ``session`` in the ledger, or None if it has none."""
        return self._rounds.get(session)

    def round_records(self, session: str) -> list[RoundRecord]:
        """The round records of ``session`` in the ledger, oldest first."""
        return [
            e
            for b in self._blocks
            if b.session == session
            for e in b.entries
            if isinstance(e, RoundRecord)
        ]

    def summary(self) -> dict[str, Any]:
        """The ``ledger`` section of ``summary.json`` as this writer knows it
        (``verified`` comes from an :func:`~gridsim.ledger.audit.audit` run)."""
        head = self.head
        return {
            "path": str(self.path),
            "size": self.size,
            "root": head.head.root.hex() if head else None,
            "heads": self.blocks,
        }

    def inclusion_proof(self, meter: int, round: int, session: str | None = None) -> dict[str, Any]:
        """The inclusion proof of ``meter``'s contribution to ``round`` against the last head."""
        return proof_document(self._tree, self.head, meter, round, session)

    def consistency_proof(self, old_size: int) -> dict[str, Any]:
        """Proof that the log of ``old_size`` entries is a prefix of the current one, for
        :func:`~gridsim.ledger.audit.verify_log_growth`."""
        return consistency_document(self._tree, old_size, self.head)

    # --- appending -----------------------------------------------------------------------

    def _validate(self, entries: Sequence[Entry]) -> list[bytes]:
        if not entries:
            raise InvalidInputError("a block needs at least one entry")
        encoded = []
        for entry in entries:
            data = encode_entry(entry)
            decode_entry(data)  # constraints are checked on decode
            encoded.append(data)
        session, round_no = entries[0].session, entries[0].round
        records = [e for e in entries if isinstance(e, RoundRecord)]
        if len(records) > 1:
            raise InvalidInputError("a block holds at most one round record")
        participants = set(records[0].participants) if records else None
        meters: set[int] = set()
        for entry in entries:
            if (entry.session, entry.round) != (session, round_no):
                raise InvalidInputError(
                    f"block mixes session {session} round {round_no} with "
                    f"session {entry.session} round {entry.round}"
                )
            if isinstance(entry, MeterContribution):
                if entry.meter in meters:
                    raise InvalidInputError(f"meter {entry.meter} contributes twice")
                if participants is not None and entry.meter not in participants:
                    raise InvalidInputError(f"meter {entry.meter} is not a participant")
                meters.add(entry.meter)
        last = self._rounds.get(session)
        if last is not None and round_no <= last:
            raise InvalidInputError(
                f"session {session} round {round_no} is not after the ledger's round {last}"
            )
        return encoded

    def append_block(self, entries: Sequence[Entry]) -> SignedHead:
        """Append one round's entries as a block; returns its signed head once durable."""
        if self._broken:
            raise IntegrityError("an earlier append failed; reopen the ledger to recover")
        encoded = self._validate(entries)
        if self._log.closed:
            raise InvalidInputError(f"ledger writer for {self.path} is closed")
        self._broken = True  # until this block is durable
        self._log.write(b"".join(frame(data) for data in encoded))
        self._log.flush()
        os.fsync(self._log.fileno())
        first = len(self._tree)
        for data, entry in zip(encoded, entries, strict=True):
            self._tree.append(data, entry)
        previous = self.head
        head = TreeHead(
            origin=self._signer.name,
            size=len(self._tree),
            root=self._tree.root(len(self._tree)),
            prev=previous.hash if previous else None,
            time_ms=self._clock_ms(),
        )
        signed = sign_head(head, self._signer)
        index = len(self._blocks)
        write_atomically(self.path / HEADS_DIR / head_file(index), signed.note)
        self._blocks.append(Block(index, signed, first, tuple(entries)))
        self._rounds[entries[0].session] = entries[0].round
        self._export()
        self._broken = False
        return signed

    def _export(self) -> None:
        write_atomically(
            self.path / BLOCKCHAIN_JSON, blockchain_document(self._signer.verifier, self._blocks)
        )

    def close(self) -> None:
        """Release the ledger (nothing is buffered between appends)."""
        self._log.close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
