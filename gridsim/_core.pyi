"""Type stubs of the native module ``gridsim._core`` (built from ``rust_core/``)."""

import numpy as np
import numpy.typing as npt

__version__: str

def accumulate_weighted(
    acc: npt.NDArray[np.float64], update: npt.NDArray[np.float32], weight: float
) -> None:
    """``acc += weight * update`` in place; raises InvalidInputError on a length mismatch."""

def count_non_finite(update: npt.NDArray[np.float32]) -> int:
    """Number of NaN or infinite entries of ``update``."""

# RFC 9162 Merkle tree (rust_core/src/merkle.rs); the public API is gridsim.ledger.merkle.
def merkle_leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""

def merkle_root(leaves: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Root of the tree over ``leaves``; ``SHA-256("")`` when empty."""

def merkle_inclusion_proof(leaves: list[bytes] | tuple[bytes, ...], index: int) -> list[bytes]:
    """Audit path of leaf ``index``; InvalidInputError unless ``index < len(leaves)``."""

def merkle_consistency_proof(leaves: list[bytes] | tuple[bytes, ...], old_size: int) -> list[bytes]:
    """Consistency proof from the first ``old_size`` leaves; InvalidInputError past the end."""

def merkle_verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: list[bytes], root: bytes
) -> bool:
    """Whether the proof holds; InvalidInputError for a hash that is not 32 bytes."""

def merkle_verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    """Whether the proof holds; InvalidInputError for a hash that is not 32 bytes."""

def sample_discrete_gaussian(
    sigma: float, size: int, seed: bytes | None = None, threads: int = 0
) -> npt.NDArray[np.int64]:
    """``size`` exact samples of N_Z(0, sigma^2) (Canonne-Kamath-Steinke), GIL released.

    ``seed`` (32 bytes) makes the output reproducible and independent of ``threads``;
    without it the seed comes from the OS. ``threads`` = 0 uses every core, 1 the calling
    thread. Raises InvalidInputError for sigma outside [2**-16, 2**40] (or not finite),
    a seed that is not 32 bytes, or more than 256 threads.
    """
