"""The RFC 9162 Merkle tree of the audit ledger.

Checked three ways: the published RFC 6962 vectors and proof probes
(``tests/data/rfc6962``, copied from ``../shared/testdata``), every proof of every
tree up to 64 leaves against a small hashlib implementation of the RFC's
definitions written here, and hypothesis properties (proofs verify; any flipped
bit is caught).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridsim.exceptions import InvalidInputError
from gridsim.ledger import (
    HASH_SIZE,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)

DATA = Path(__file__).parent.parent / "data" / "rfc6962"
VECTORS: dict[str, Any] = json.loads((DATA / "rfc6962_merkle_vectors.json").read_text())
VECTOR_LEAVES = [bytes.fromhex(leaf) for leaf in VECTORS["leaves_hex"]]


# --- A reference written straight from RFC 9162 §2.1, with hashlib --------------------------


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ref_split(n: int) -> int:
    """Largest power of two strictly below ``n``."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """MTH, PATH and PROOF of RFC 9162 §2.1 over one list of leaves, by recursion."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.mth = cache(self._mth)

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return ref_leaf(self.leaves[lo])
        k = ref_split(n)
        return ref_node(self.mth(lo, lo + k), self.mth(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = ref_split(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, whole_old_tree: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole_old_tree else [self.mth(lo, hi)]
        k = ref_split(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, whole_old_tree), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        if old_size == 0:
            return []
        return self.subproof(old_size, 0, new_size, True)


def level_wise_root(leaves: list[bytes]) -> bytes:
    """The same tree built level by level, an odd last node carried up unchanged."""
    level = [ref_leaf(leaf) for leaf in leaves]
    while len(level) > 1:
        paired = [ref_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = paired + level[-1:] if len(level) % 2 else paired
    return level[0]


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def numbered_leaves(count: int) -> list[bytes]:
    """Distinct leaves of varied lengths, the first of them empty."""
    return [i.to_bytes(2, "big") * (i % 5) for i in range(count)]


# --- Published vectors ------------------------------------------------------------------------


def test_reference_matches_published_hasher_answers() -> None:
    kats = {kat["op"]: kat for kat in VECTORS["hasher_kats"]}
    assert Reference([]).mth(0, 0).hex() == kats["empty_root"]["want"]
    leaf = kats["leaf"]
    assert ref_leaf(leaf["data_ascii"].encode()).hex() == leaf["want"]
    node = kats["node"]
    assert ref_node(node["left_ascii"].encode(), node["right_ascii"].encode()).hex() == node["want"]


def test_leaf_hash_matches_published_answer() -> None:
    kat = next(kat for kat in VECTORS["hasher_kats"] if kat["op"] == "leaf")
    assert leaf_hash(kat["data_ascii"].encode()).hex() == kat["want"]


@pytest.mark.parametrize("size", range(len(VECTORS["roots_by_size"])))
def test_root_of_every_published_prefix(size: int) -> None:
    assert merkle_root(VECTOR_LEAVES[:size]).hex() == VECTORS["roots_by_size"][size]


def test_every_published_node_hash_is_the_root_of_its_subtree() -> None:
    for level, hashes in enumerate(VECTORS["node_hashes_by_level"]):
        width = 1 << level
        for i, want in enumerate(hashes):
            assert merkle_root(VECTOR_LEAVES[i * width : (i + 1) * width]).hex() == want


@pytest.mark.parametrize(
    "case", VECTORS["inclusion"], ids=lambda c: f"leaf{c['leaf_index']}-of-{c['tree_size']}"
)
def test_published_inclusion_proof(case: dict[str, Any]) -> None:
    index, size = case["leaf_index"], case["tree_size"]
    want = [bytes.fromhex(h) for h in case["proof"]]
    assert inclusion_proof(VECTOR_LEAVES[:size], index) == want
    root = bytes.fromhex(VECTORS["roots_by_size"][size])
    assert verify_inclusion(leaf_hash(VECTOR_LEAVES[index]), index, size, want, root)


@pytest.mark.parametrize(
    "case", VECTORS["consistency"], ids=lambda c: f"{c['size1']}-to-{c['size2']}"
)
def test_published_consistency_proof(case: dict[str, Any]) -> None:
    old, new = case["size1"], case["size2"]
    want = [bytes.fromhex(h) for h in case["proof"]]
    assert consistency_proof(VECTOR_LEAVES[:new], old) == want
    roots = VECTORS["roots_by_size"]
    assert verify_consistency(old, new, bytes.fromhex(roots[old]), bytes.fromhex(roots[new]), want)


# --- Probes: each as published, then corrupted every way that must fail ------------------------


def load_probes(kind: str) -> list[tuple[str, dict[str, Any]]]:
    files = sorted(DATA.glob(f"{kind}-*.json"))
    assert files, f"no {kind} probes in {DATA}"
    return [(f.stem, json.loads(f.read_text())) for f in files]


INCLUSION_PROBES = load_probes("inclusion")
CONSISTENCY_PROBES = load_probes("consistency")


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def inclusion_args(probe: dict[str, Any]) -> tuple[bytes, int, int, list[bytes], bytes]:
    proof = [b64(p) for p in probe["proof"] or []]
    return b64(probe["leafHash"]), probe["leafIdx"], probe["treeSize"], proof, b64(probe["root"])


def consistency_args(probe: dict[str, Any]) -> tuple[int, int, bytes, bytes, list[bytes]]:
    proof = [b64(p) for p in probe["proof"] or []]
    return probe["size1"], probe["size2"], b64(probe["root1"]), b64(probe["root2"]), proof


def corrupted_inclusions(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> dict[str, tuple[bytes, int, int, list[bytes], bytes]]:
    """Claims derived from a valid one that no honest log could back.

    The tree size is left alone where the index stays inside it: an audit path
    alone does not pin the size (leaf 1 of 5 and of 6 take the same path), the
    signed tree head that carries the root does.
    """
    other = ref_leaf(b"not in the log")
    bad: dict[str, tuple[bytes, int, int, list[bytes], bytes]] = {
        "other leaf": (other, index, size, proof, root),
        "index past the end": (leaf, size, size, proof, root),
        "empty tree": (leaf, index, 0, proof, root),
        "extra hash at the end": (leaf, index, size, [*proof, root], root),
        "extra hash at the start": (leaf, index, size, [other, *proof], root),
        "next index": (leaf, index + 1, size, proof, root),
    }
    if index > 0:
        bad["previous index"] = (leaf, index - 1, size, proof, root)
    if proof:
        bad["last hash dropped"] = (leaf, index, size, proof[:-1], root)
        bad["first hash dropped"] = (leaf, index, size, proof[1:], root)
    if len(proof) > 1:
        bad["hashes swapped"] = (leaf, index, size, [proof[1], proof[0], *proof[2:]], root)
    for bit in (0, 7, 130, 255):
        bad[f"leaf bit {bit}"] = (flip_bit(leaf, bit), index, size, proof, root)
        bad[f"root bit {bit}"] = (leaf, index, size, proof, flip_bit(root, bit))
        for i in range(len(proof)):
            flipped = [*proof[:i], flip_bit(proof[i], bit), *proof[i + 1 :]]
            bad[f"proof[{i}] bit {bit}"] = (leaf, index, size, flipped, root)
    return bad


def corrupted_consistencies(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> dict[str, tuple[int, int, bytes, bytes, list[bytes]]]:
    """Claims derived from a valid one that no honest log could back."""
    bad: dict[str, tuple[int, int, bytes, bytes, list[bytes]]] = {
        "roots swapped": (old, new, new_root, old_root, proof)
        if old_root != new_root
        else (old, new + 1, old_root, new_root, proof),
        "extra hash at the end": (old, new, old_root, new_root, [*proof, new_root]),
        "old size past new size": (new + 1, new, old_root, new_root, proof),
        "old size zero": (0, new, old_root, new_root, proof),
    }
    if old != new:
        bad["sizes swapped"] = (new, old, new_root, old_root, proof)
        bad["old size plus one"] = (old + 1, new, old_root, new_root, proof)
    if old > 1:
        bad["old size minus one"] = (old - 1, new, old_root, new_root, proof)
    if proof:
        bad["last hash dropped"] = (old, new, old_root, new_root, proof[:-1])
        bad["first hash dropped"] = (old, new, old_root, new_root, proof[1:])
        bad["no proof"] = (old, new, old_root, new_root, [])
    for bit in (0, 9, 128, 255):
        bad[f"old root bit {bit}"] = (old, new, flip_bit(old_root, bit), new_root, proof)
        bad[f"new root bit {bit}"] = (old, new, old_root, flip_bit(new_root, bit), proof)
        for i in range(len(proof)):
            flipped = [*proof[:i], flip_bit(proof[i], bit), *proof[i + 1 :]]
            bad[f"proof[{i}] bit {bit}"] = (old, new, old_root, new_root, flipped)
    return bad


@pytest.mark.parametrize(("name", "probe"), INCLUSION_PROBES, ids=[n for n, _ in INCLUSION_PROBES])
def test_inclusion_probe(name: str, probe: dict[str, Any]) -> None:
    args = inclusion_args(probe)
    assert verify_inclusion(*args) is not probe["wantErr"], probe["desc"]
    if probe["wantErr"]:
        return
    # The probe's claim is about the published leaves: we generate the same proof.
    leaf, index, size, proof, root = args
    assert leaf_hash(VECTOR_LEAVES[index]) == leaf
    assert merkle_root(VECTOR_LEAVES[:size]) == root
    assert inclusion_proof(VECTOR_LEAVES[:size], index) == proof
    accepted = [what for what, bad in corrupted_inclusions(*args).items() if verify_inclusion(*bad)]
    assert accepted == [], f"{name}: corrupted claims accepted"


@pytest.mark.parametrize(
    ("name", "probe"), CONSISTENCY_PROBES, ids=[n for n, _ in CONSISTENCY_PROBES]
)
def test_consistency_probe(name: str, probe: dict[str, Any]) -> None:
    args = consistency_args(probe)
    assert verify_consistency(*args) is not probe["wantErr"], probe["desc"]
    if probe["wantErr"]:
        return
    old, new, old_root, new_root, proof = args
    assert merkle_root(VECTOR_LEAVES[:old]) == old_root
    assert merkle_root(VECTOR_LEAVES[:new]) == new_root
    assert consistency_proof(VECTOR_LEAVES[:new], old) == proof
    accepted = [
        what for what, bad in corrupted_consistencies(*args).items() if verify_consistency(*bad)
    ]
    assert accepted == [], f"{name}: corrupted claims accepted"


# --- Every proof of every tree up to 64 leaves -------------------------------------------------

EXHAUSTIVE = numbered_leaves(64)
EXHAUSTIVE_REF = Reference(EXHAUSTIVE)


@pytest.mark.parametrize("size", range(1, len(EXHAUSTIVE) + 1))
def test_every_inclusion_proof_matches_reference(size: int) -> None:
    leaves = EXHAUSTIVE[:size]
    root = merkle_root(leaves)
    assert root == EXHAUSTIVE_REF.mth(0, size)
    for index in range(size):
        proof = inclusion_proof(leaves, index)
        assert proof == EXHAUSTIVE_REF.path(index, 0, size), f"leaf {index}"
        leaf = leaf_hash(leaves[index])
        assert verify_inclusion(leaf, index, size, proof, root)
        # The same path cannot place the leaf anywhere else in the tree.
        for other in range(size):
            if other != index:
                assert not verify_inclusion(leaf, other, size, proof, root), (index, other)


@pytest.mark.parametrize("size", range(1, len(EXHAUSTIVE) + 1))
def test_every_consistency_proof_matches_reference(size: int) -> None:
    leaves = EXHAUSTIVE[:size]
    new_root = merkle_root(leaves)
    for old in range(size + 1):
        proof = consistency_proof(leaves, old)
        assert proof == EXHAUSTIVE_REF.consistency(old, size), f"{old} -> {size}"
        old_root = EXHAUSTIVE_REF.mth(0, old)
        assert verify_consistency(old, size, old_root, new_root, proof)
        # A log that rewrote its last old leaf is caught.
        if old > 0:
            forged_root = merkle_root([*leaves[: old - 1], b"rewritten"])
            assert not verify_consistency(old, size, forged_root, new_root, proof)


def test_root_matches_level_wise_tree_for_many_small_leaves() -> None:
    # Past the parallel grain: the tree is cut into chunks hashed on both cores.
    leaves = [i.to_bytes(32, "little") for i in range(100_003)]
    assert merkle_root(leaves) == level_wise_root(leaves)


def test_root_and_proofs_for_large_leaves() -> None:
    # Each leaf is its own parallel task.
    leaves = [bytes([i]) * 300_000 for i in range(21)]
    root = merkle_root(leaves)
    assert root == level_wise_root(leaves)
    ref = Reference(leaves)
    for index in (0, 13, 20):
        proof = inclusion_proof(leaves, index)
        assert proof == ref.path(index, 0, len(leaves))
        assert verify_inclusion(leaf_hash(leaves[index]), index, len(leaves), proof, root)
    assert consistency_proof(leaves, 13) == ref.consistency(13, len(leaves))


def test_accepts_any_sequence_of_bytes() -> None:
    leaves = numbered_leaves(9)
    root = merkle_root(leaves)
    assert merkle_root(tuple(leaves)) == root
    assert merkle_root(iter(leaves)) == root  # type: ignore[arg-type]
    assert inclusion_proof(tuple(leaves), 4) == inclusion_proof(leaves, 4)


def test_empty_tree() -> None:
    empty = hashlib.sha256(b"").digest()
    assert merkle_root([]) == empty
    assert consistency_proof([], 0) == []
    assert verify_consistency(0, 0, empty, empty, [])
    root = merkle_root([b"a", b"b"])
    assert verify_consistency(0, 2, empty, root, [])
    assert not verify_consistency(0, 2, root, root, [])


# --- Properties --------------------------------------------------------------------------------

leaf_lists = st.lists(st.binary(max_size=48), min_size=1, max_size=80)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_inclusion_proofs_verify_and_any_flipped_bit_fails(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    root = merkle_root(leaves)
    proof = inclusion_proof(leaves, index)
    leaf = leaf_hash(leaves[index])
    assert verify_inclusion(leaf, index, size, proof, root)

    bit = data.draw(st.integers(0, 8 * HASH_SIZE - 1), label="bit")
    assert not verify_inclusion(flip_bit(leaf, bit), index, size, proof, root)
    assert not verify_inclusion(leaf, index, size, proof, flip_bit(root, bit))
    for i in range(len(proof)):
        flipped = [*proof[:i], flip_bit(proof[i], bit), *proof[i + 1 :]]
        assert not verify_inclusion(leaf, index, size, flipped, root)
    assert not verify_inclusion(leaf, index, size, [*proof, root], root)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_consistency_proofs_verify_and_any_flipped_bit_fails(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(leaves)
    old = data.draw(st.integers(0, size), label="old_size")
    old_root, new_root = merkle_root(leaves[:old]), merkle_root(leaves)
    proof = consistency_proof(leaves, old)
    assert verify_consistency(old, size, old_root, new_root, proof)

    bit = data.draw(st.integers(0, 8 * HASH_SIZE - 1), label="bit")
    assert not verify_consistency(old, size, flip_bit(old_root, bit), new_root, proof)
    if old > 0:  # every tree extends the empty one, whatever its root
        assert not verify_consistency(old, size, old_root, flip_bit(new_root, bit), proof)
    for i in range(len(proof)):
        flipped = [*proof[:i], flip_bit(proof[i], bit), *proof[i + 1 :]]
        assert not verify_consistency(old, size, old_root, new_root, flipped)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(leaves=leaf_lists, extra=st.lists(st.binary(max_size=48), min_size=1, max_size=20))
def test_appending_keeps_old_head_consistent_and_rewriting_does_not(
    leaves: list[bytes], extra: list[bytes]
) -> None:
    old, grown = len(leaves), [*leaves, *extra]
    old_root = merkle_root(leaves)
    proof = consistency_proof(grown, old)
    assert verify_consistency(old, len(grown), old_root, merkle_root(grown), proof)
    rewritten = [*leaves[:-1], leaves[-1] + b"!", *extra]
    forged_proof = consistency_proof(rewritten, old)
    assert not verify_consistency(
        old, len(rewritten), old_root, merkle_root(rewritten), forged_proof
    )


# --- Bad input ---------------------------------------------------------------------------------

LEAVES = numbered_leaves(5)
ROOT = merkle_root(LEAVES)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: inclusion_proof(LEAVES, 5), "leaf index 5 is out of range for a tree of 5"),
        (lambda: inclusion_proof([], 0), "out of range for a tree of 0"),
        (lambda: inclusion_proof(LEAVES, -1), "index must be in"),
        (lambda: consistency_proof(LEAVES, 6), "old tree size 6 exceeds the tree's 5"),
        (lambda: consistency_proof(LEAVES, -2), "old_size must be in"),
        (lambda: verify_inclusion(ROOT, -1, 5, [], ROOT), "index must be in"),
        (lambda: verify_inclusion(ROOT, 0, 2**64, [], ROOT), "tree_size must be in"),
        (lambda: verify_inclusion(ROOT[:31], 0, 5, [], ROOT), "leaf_hash must be 32 bytes"),
        (lambda: verify_inclusion(ROOT, 0, 5, [ROOT, b""], ROOT), r"proof\[1\] must be 32"),
        (lambda: verify_inclusion(ROOT, 0, 5, [], ROOT + b"x"), "root must be 32 bytes, got 33"),
        (lambda: verify_consistency(-1, 5, ROOT, ROOT, []), "old_size must be in"),
        (lambda: verify_consistency(1, 5, b"", ROOT, []), "old_root must be 32 bytes"),
        (lambda: verify_consistency(1, 5, ROOT, ROOT[1:], []), "new_root must be 32 bytes"),
    ],
)
def test_rejects_bad_input_clearly(call: Callable[[], object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        call()


def test_leaves_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        merkle_root([b"ok", bytearray(b"mutable")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="bytes"):
        merkle_root(["text"])  # type: ignore[list-item]


def test_impossible_claims_are_false_not_errors() -> None:
    proof = inclusion_proof(LEAVES, 2)
    leaf = leaf_hash(LEAVES[2])
    assert verify_inclusion(leaf, 2, 5, proof, ROOT)
    assert not verify_inclusion(leaf, 7, 5, proof, ROOT)
    assert not verify_consistency(6, 5, ROOT, ROOT, [])
