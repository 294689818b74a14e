"""Ed25519 through the Rust core agrees with OpenSSL (via ``cryptography``)."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridsim import _core, signatures


def test_signatures_equal_openssl_and_verify_both_ways() -> None:
    rng = random.Random(3)
    for size in (0, 1, 63, 64, 1000, 40_000):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        data = rng.randbytes(size)
        sig = signatures.sign(key, data)
        assert sig == key.sign(data)  # Ed25519 is deterministic
        key.public_key().verify(sig, data)  # OpenSSL accepts ours
        assert signatures.verify(key.public_key(), sig, data)
        assert signatures.verify(key.public_key().public_bytes_raw(), sig, data)


def test_any_change_fails_verification() -> None:
    rng = random.Random(4)
    key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    other = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    data = b"masked input of meter 7, round 3"
    sig = signatures.sign(key, data)
    assert not signatures.verify(other.public_key(), sig, data)
    assert not signatures.verify(key.public_key(), sig, data + b"!")
    assert not signatures.verify(key.public_key(), sig[:-1], data)
    for i in range(0, 64, 7):
        bad = bytearray(sig)
        bad[i] ^= 0x01
        assert not signatures.verify(key.public_key(), bytes(bad), data)


def test_verify_many_flags_exactly_the_bad_ones() -> None:
    rng = random.Random(5)
    keys = [Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) for _ in range(50)]
    msgs = [rng.randbytes(rng.randrange(200)) for _ in keys]
    sigs = [signatures.sign(k, m) for k, m in zip(keys, msgs, strict=True)]
    bad = {3, 17, 49}
    for i in bad:
        sigs[i] = bytes([sigs[i][0] ^ 0x80]) + sigs[i][1:]
    publics = [k.public_key().public_bytes_raw() for k in keys]
    got = _core.ed25519_verify_many(publics, msgs, sigs)
    assert [i for i, ok in enumerate(got) if not ok] == sorted(bad)
