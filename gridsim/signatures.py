"""Ed25519 signing and verification (RFC 8032) through the Rust core.

Keys stay ``cryptography`` objects everywhere else (they load, store and compare
keys); the two hot operations go through :mod:`gridsim._core` (curve25519-dalek),
which signs about 2x and verifies about 2x faster than OpenSSL's portable Ed25519
code on the development machines. Signatures are identical (Ed25519 is
deterministic); verification is strict: besides RFC 8032's checks it refuses
small-order public keys and ``R`` values, which no honest signer produces.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gridsim import _core


@functools.lru_cache(maxsize=8192)
def _signer(seed: bytes) -> _core.Ed25519Signer:
    # Expanding a seed costs a SHA-512 and a base-point multiplication; a process
    # signs with the same few thousand keys over and over.
    return _core.Ed25519Signer(seed)


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """``key``'s 64-byte Ed25519 signature of ``data`` (equal to ``key.sign(data)``)."""
    return _signer(key.private_bytes_raw()).sign(data)


def verify(key: Ed25519PublicKey | bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``key``'s Ed25519 signature of ``data`` (strict)."""
    raw = key if isinstance(key, bytes) else key.public_bytes_raw()
    return _core.ed25519_verify(raw, data, signature)
