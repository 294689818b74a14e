"""An independent reference for the SecAgg+ key schedule, on OpenSSL (``cryptography``).

The client and server derive their pairwise mask seeds and share keys in the Rust
core (:func:`gridsim.secagg.client.derive_pair_keys`: X25519, then HKDF-SHA256 without
salt); the tests check those keys against these, computed another way.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gridsim.secagg.client import pairwise_seed_info, share_key_info


def hkdf(shared: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``shared`` without salt, 32 bytes, from HMAC."""
    prk = hmac.digest(bytes(32), shared, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32 bytes of an X25519 private key's public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(peer_public))


def pairwise_seed(
    private: X25519PrivateKey, peer_public: bytes, session: str, round: int, a: int, b: int
) -> bytes:
    """The mask seed of meters ``a`` and ``b``, from ``a``'s key and ``b``'s public key."""
    return hkdf(_exchange(private, peer_public), pairwise_seed_info(session, round, a, b))


def share_key(
    private: X25519PrivateKey,
    peer_public: bytes,
    session: str,
    round: int,
    sender: int,
    recipient: int,
) -> bytes:
    """The ChaCha20-Poly1305 key of shares sent from ``sender`` to ``recipient``."""
    return hkdf(_exchange(private, peer_public), share_key_info(session, round, sender, recipient))
