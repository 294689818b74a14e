"""Batched ChaCha20-Poly1305 of the Rust core, which encrypts the shares a meter
sends its neighbours: it must equal OpenSSL's (through ``cryptography``) bit for
bit, or meters on different implementations could not read each other's shares."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from gridsim import _core
from gridsim.exceptions import InvalidInputError

messages = st.tuples(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=12, max_size=12),
    st.binary(max_size=300),
    st.binary(max_size=80),
)


@settings(max_examples=50, deadline=None)
@given(batch=st.lists(messages, min_size=1, max_size=6))
def test_seal_and_open_equal_openssl(batch: list[tuple[bytes, bytes, bytes, bytes]]) -> None:
    keys, nonces, plaintexts, ads = (list(column) for column in zip(*batch, strict=True))
    sealed = _core.chacha20poly1305_seal(keys, nonces, plaintexts, ads)
    assert sealed == [ChaCha20Poly1305(k).encrypt(n, p, a) for k, n, p, a in batch]
    assert _core.chacha20poly1305_open(keys, nonces, sealed, ads) == plaintexts
    # One flipped bit fails that message alone.
    broken = [sealed[0][:-1] + bytes([sealed[0][-1] ^ 1]), *sealed[1:]]
    assert _core.chacha20poly1305_open(keys, nonces, broken, ads) == [None, *plaintexts[1:]]


def test_too_short_wrong_key_and_bad_arguments() -> None:
    key, nonce = bytes(32), bytes(12)
    sealed = _core.chacha20poly1305_seal([key], [nonce], [b"share"], [b"ad"])[0]
    assert _core.chacha20poly1305_open([key], [nonce], [sealed[:15]], [b"ad"]) == [None]
    assert _core.chacha20poly1305_open([bytes([1]) * 32], [nonce], [sealed], [b"ad"]) == [None]
    with pytest.raises(InvalidInputError, match="AEAD key is 32 bytes"):
        _core.chacha20poly1305_seal([bytes(31)], [nonce], [b""], [b""])
    with pytest.raises(InvalidInputError, match="AEAD nonce is 12 bytes"):
        _core.chacha20poly1305_open([key], [bytes(8)], [sealed], [b""])
    with pytest.raises(InvalidInputError, match="length mismatch"):
        _core.chacha20poly1305_seal([key, key], [nonce], [b"", b""], [b"", b""])


def test_a_batch_large_enough_to_release_the_gil_equals_openssl() -> None:
    # From 256 items the batch runs with the GIL released: the same bytes either way.
    n = 300
    keys = [bytes([i % 251]) * 32 for i in range(n)]
    nonces = [i.to_bytes(12, "little") for i in range(n)]
    plaintexts = [bytes([i % 7]) * (i % 150) for i in range(n)]
    ads = [b"ad" + i.to_bytes(4, "little") for i in range(n)]
    sealed = _core.chacha20poly1305_seal(keys, nonces, plaintexts, ads)
    assert sealed == [
        ChaCha20Poly1305(k).encrypt(nc, p, a)
        for k, nc, p, a in zip(keys, nonces, plaintexts, ads, strict=True)
    ]
    assert _core.chacha20poly1305_open(keys, nonces, sealed, ads) == plaintexts
