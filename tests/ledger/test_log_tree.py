"""LogTree (the ledger's incremental tree) agrees with the Rust core everywhere up to 64 leaves."""

from __future__ import annotations

import pytest

from gridsim.exceptions import IntegrityError
from gridsim.ledger import consistency_proof, inclusion_proof, merkle_root
from gridsim.ledger.audit import LogTree

from .conftest import round_entries

LEAVES = [b"leaf %d" % i for i in range(64)]
ENTRY = round_entries(0, meters=1)[-1]  # not a contribution: only the tree is exercised


def tree_of(n: int) -> LogTree:
    tree = LogTree()
    for data in LEAVES[:n]:
        tree.append(data, ENTRY)
    return tree


def test_roots_and_proofs_match_the_core_for_every_size_and_index() -> None:
    tree = tree_of(64)
    for size in range(65):
        assert tree.root(size) == merkle_root(LEAVES[:size]), size
        for index in range(size):
            assert tree.inclusion_proof(index, size) == inclusion_proof(LEAVES[:size], index)
        for old in range(size + 1):
            assert tree.consistency_proof(old, size) == consistency_proof(LEAVES[:size], old)


def test_truncate_forgets_exactly_the_tail() -> None:
    for size in (0, 1, 5, 32, 33):
        tree = tree_of(64)
        tree.truncate(size)
        assert len(tree) == size and tree.root(size) == merkle_root(LEAVES[:size])
        for data in LEAVES[size:]:
            tree.append(data, ENTRY)
        assert tree.root(64) == merkle_root(LEAVES)


def test_out_of_range_requests_raise() -> None:
    tree = tree_of(5)
    with pytest.raises(IntegrityError):
        tree.root(6)
    with pytest.raises(IntegrityError):
        tree.inclusion_proof(5, 5)
    with pytest.raises(IntegrityError):
        tree.consistency_proof(3, 6)
