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

def merkle_root_and_inclusion_proofs(
    leaves: list[bytes] | tuple[bytes, ...],
) -> tuple[bytes, list[list[bytes]]]:
    """The root and every leaf's audit path (as merkle_inclusion_proof), in one pass."""

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

# ---- secure aggregation: masks, quantisation, packing, Shamir (rust_core/src/bind/masking.rs)

def fill_discrete_gaussian(
    sigma: float, out: npt.NDArray[np.int64], seed: bytes | None = None, threads: int = 0
) -> None:
    """Write exact samples of N_Z(0, sigma^2) into the contiguous int64 array ``out``."""

def expand_masks_u32(
    acc: npt.NDArray[np.uint32],
    seeds: npt.NDArray[np.uint8],
    streams: npt.NDArray[np.uint64],
    signs: npt.NDArray[np.int8],
    session: bytes,
    round: int,
    vector: int,
    bits: int,
    threads: int = 0,
) -> None:
    """Add (+1) / subtract (-1) the AES-256-CTR mask of each seed row into ``acc``, mod 2^bits."""

def expand_masks_u64(
    acc: npt.NDArray[np.uint64],
    seeds: npt.NDArray[np.uint8],
    streams: npt.NDArray[np.uint64],
    signs: npt.NDArray[np.int8],
    session: bytes,
    round: int,
    vector: int,
    bits: int,
    threads: int = 0,
) -> None:
    """As ``expand_masks_u32`` for a u64 accumulator (bits up to 64)."""

def derive_mask_key(
    seed: bytes, session: bytes, round: int, vector: int, stream: int, word_bits: int
) -> bytes:
    """The AES-256 key of one mask stream."""

def aes_hardware() -> bool:
    """True when AES runs on AES-NI."""

def quantize_u32(
    x: npt.NDArray[np.float32], clip: float, scale: float, bits: int, seed: bytes | None = None
) -> tuple[npt.NDArray[np.uint32], int]:
    """Clip, scale, round stochastically, reduce mod 2^bits (<= 32); (residues, saturated)."""

def quantize_u64(
    x: npt.NDArray[np.float32], clip: float, scale: float, bits: int, seed: bytes | None = None
) -> tuple[npt.NDArray[np.uint64], int]:
    """Clip, scale, round stochastically, reduce mod 2^bits (<= 64); (residues, saturated)."""

def dequantize_sum_u32(
    total: npt.NDArray[np.uint32], clip: float, scale: float, bits: int, n: int
) -> tuple[npt.NDArray[np.float64], int]:
    """Decode the modular sum of n quantised vectors; (values, out-of-range count)."""

def dequantize_sum_u64(
    total: npt.NDArray[np.uint64], clip: float, scale: float, bits: int, n: int
) -> tuple[npt.NDArray[np.float64], int]:
    """Decode the modular sum of n quantised vectors; (values, out-of-range count)."""

def max_scale(clip: float, bits: int, n: int) -> float:
    """Largest scale at which a sum of n clipped vectors cannot wrap modulo 2^bits."""

def pack_u32(values: npt.NDArray[np.uint32], bits: int) -> bytes:
    """Pack at exactly ``bits`` bits per value, little-endian bit order."""

def pack_u64(values: npt.NDArray[np.uint64], bits: int) -> bytes:
    """Pack at exactly ``bits`` bits per value, little-endian bit order."""

def unpack_u32(data: bytes, bits: int, d: int) -> npt.NDArray[np.uint32]:
    """Unpack ``d`` values of ``bits`` bits (<= 32)."""

def unpack_u64(data: bytes, bits: int, d: int) -> npt.NDArray[np.uint64]:
    """Unpack ``d`` values of ``bits`` bits (<= 64)."""

def shamir_split(
    secret: bytes, threshold: int, xs: list[int], seed: bytes | None = None
) -> list[bytes]:
    """Shamir-share a 32-byte secret over GF(2^127 - 1) at x-coordinates ``xs``."""

def shamir_combine(shares: list[bytes]) -> bytes:
    """Reconstruct the 32-byte secret from at least t encoded shares."""

def chacha20poly1305_seal(
    keys: list[bytes], nonces: list[bytes], plaintexts: list[bytes], ads: list[bytes]
) -> list[bytes]:
    """ChaCha20-Poly1305 (RFC 8439) of each plaintext: ``ciphertext || tag`` (GIL released
    from 256 items on)."""

def chacha20poly1305_open(
    keys: list[bytes], nonces: list[bytes], ciphertexts: list[bytes], ads: list[bytes]
) -> list[bytes | None]:
    """The plaintext of each ``ciphertext || tag``; None where it fails authentication."""

def secagg_share(
    meter: int,
    threshold: int,
    seed_prefix: bytes,
    key_prefix: bytes,
    ad_prefix: bytes,
    enc_sk: bytes,
    agree_sk: bytes,
    self_seed: bytes,
    live_ids: list[int],
    enc_keys: list[bytes],
    agree_keys: list[bytes],
    fresh: bytes,
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """A SecAgg+ meter's sharing stage (see ``rust_core/src/bind/secagg_meter.rs``):
    per neighbour its pairwise mask seed, inbound share key and sealed shares."""

def secagg_prepare(
    meter: int,
    threshold: int,
    ad_prefix: bytes,
    neighbour_ids: list[int],
    inbound_keys: list[bytes],
    pair_seeds: list[bytes],
    senders: list[int],
    recipients: list[int],
    ciphertexts: list[bytes],
    self_seed: bytes,
    session: bytes,
    round: int,
    d: int,
    bits: int,
) -> tuple[list[int], list[bytes], list[bytes], npt.NDArray[np.uint32] | npt.NDArray[np.uint64]]:
    """A SecAgg+ meter's shares checked and opened, and its masks summed (see
    ``rust_core/src/bind/secagg_meter.rs``); ProtocolError for a refused share."""

def x25519_engine() -> str:
    """Which engine computes batches of agreements here: "ifma-ladder-x8" or "edwards"."""

def x25519_public_key(secret: bytes) -> bytes:
    """The public key of a 32-byte X25519 secret (RFC 7748)."""

def x25519_agree(secrets: list[bytes], publics: list[bytes]) -> list[bytes | None]:
    """The shared secret of each ``secrets[i]`` and ``publics[i]`` (GIL released, rayon);
    None where it is all zeros (a low-order public key), which the caller must refuse."""

def x25519_derive(
    secrets: list[bytes], publics: list[bytes], infos: list[list[bytes]]
) -> list[list[bytes] | None]:
    """Each agreement of :func:`x25519_agree` stretched by HKDF-SHA256 (RFC 5869, no
    salt) into one 32-byte key per string of ``infos[i]``; None where it is all zeros."""

class Ed25519Signer:
    """An Ed25519 signing key expanded once from its 32-byte seed (RFC 8032)."""

    def __init__(self, seed: bytes) -> None: ...
    def public_key(self) -> bytes:
        """The 32-byte public key."""
    def sign(self, message: bytes) -> bytes:
        """The 64-byte signature of ``message``."""

def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public``'s signature of ``message`` (strict)."""

def ed25519_verify_many(
    publics: list[bytes], messages: list[bytes], signatures: list[bytes], parallel: bool = True
) -> list[bool]:
    """:func:`ed25519_verify` of each triple (GIL released; over rayon's pool, or on
    the calling thread with ``parallel=False``)."""
