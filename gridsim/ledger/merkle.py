"""The RFC 9162 Merkle tree of the audit ledger (Certificate Transparency v2, §2.1).

Leaves are hashed as ``SHA-256(0x00 || data)`` and interior nodes as
``SHA-256(0x01 || left || right)``; a tree of ``n > 1`` leaves splits at the
largest power of two below ``n`` and never duplicates a last node. The work is
done by ``gridsim._core`` with the GIL released, large leaves hashed on both cores.

Proof generation raises :class:`~gridsim.exceptions.InvalidInputError` for an
index or size outside the tree. Verification returns ``False`` for any claim that
does not hold, including one whose index or sizes are impossible, because those
come from the untrusted prover; it raises only for arguments that cannot be a
claim at all (a hash that is not 32 bytes, an index or size that is negative or
not below 2**64).
"""

from __future__ import annotations

from collections.abc import Sequence

from gridsim import _core
from gridsim.exceptions import InvalidInputError

HASH_SIZE = 32
"""Length in bytes of every leaf hash, node hash and root."""


def _leaf_list(leaves: Sequence[bytes]) -> list[bytes] | tuple[bytes, ...]:
    # The core takes a list or tuple of ``bytes`` without copying the data.
    return leaves if isinstance(leaves, list | tuple) else list(leaves)


_MAX_COUNT = 2**64
"""Indices and sizes are unsigned 64-bit integers, as in RFC 9162."""


def _check_count(name: str, value: int) -> None:
    if not 0 <= value < _MAX_COUNT:
        raise InvalidInputError(f"{name} must be in [0, 2**64), got {value}")


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf, ``SHA-256(0x00 || data)``."""
    return _core.merkle_leaf_hash(data)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root of the tree over ``leaves``; ``SHA-256("")`` for no leaves."""
    return _core.merkle_root(_leaf_list(leaves))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path proving leaf ``index`` is in the tree over ``leaves``, bottom-up.

    Raises :class:`InvalidInputError` unless ``0 <= index < len(leaves)``.
    """
    _check_count("index", index)
    return _core.merkle_inclusion_proof(_leaf_list(leaves), index)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """Proof that the tree over ``leaves[:old_size]`` is a prefix of the tree over ``leaves``.

    Empty when ``old_size`` is 0 or ``len(leaves)``. Raises :class:`InvalidInputError`
    unless ``0 <= old_size <= len(leaves)``.
    """
    _check_count("old_size", old_size)
    return _core.merkle_consistency_proof(_leaf_list(leaves), old_size)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size``
    leaves whose root is ``root``."""
    _check_count("index", index)
    _check_count("tree_size", tree_size)
    return _core.merkle_verify_inclusion(leaf_hash, index, tree_size, list(proof), root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree of ``old_size`` leaves with ``old_root`` is a prefix
    of the tree of ``new_size`` leaves with ``new_root``.

    Equal sizes need an empty proof and equal roots; the empty tree (root
    ``SHA-256("")``) is a prefix of every tree, with an empty proof.
    """
    _check_count("old_size", old_size)
    _check_count("new_size", new_size)
    return _core.merkle_verify_consistency(old_size, new_size, old_root, new_root, list(proof))
