"""The audit ledger: an append-only RFC 9162 Merkle log of every round."""

from __future__ import annotations

from gridsim.ledger.merkle import (
    HASH_SIZE,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "HASH_SIZE",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "verify_consistency",
    "verify_inclusion",
]
