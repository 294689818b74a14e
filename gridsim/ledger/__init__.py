"""The audit ledger: an append-only RFC 9162 Merkle log of every round."""

from __future__ import annotations

from gridsim.ledger.audit import (
    AuditReport,
    OwnCheck,
    audit,
    inclusion_proof_for,
    verify_log_growth,
    verify_own_contribution,
)
from gridsim.ledger.checkpoint import NoteSigner, NoteVerifier, SignedHead, TreeHead
from gridsim.ledger.entries import (
    MeterContribution,
    RoundRecord,
    decode_entry,
    encode_entry,
)
from gridsim.ledger.merkle import (
    HASH_SIZE,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from gridsim.ledger.writer import LedgerWriter

__all__ = [
    "HASH_SIZE",
    "AuditReport",
    "LedgerWriter",
    "MeterContribution",
    "NoteSigner",
    "NoteVerifier",
    "OwnCheck",
    "RoundRecord",
    "SignedHead",
    "TreeHead",
    "audit",
    "consistency_proof",
    "decode_entry",
    "encode_entry",
    "inclusion_proof",
    "inclusion_proof_for",
    "leaf_hash",
    "merkle_root",
    "verify_consistency",
    "verify_inclusion",
    "verify_log_growth",
    "verify_own_contribution",
]
