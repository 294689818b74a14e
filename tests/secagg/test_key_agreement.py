"""X25519 agreement in the Rust core, HKDF, and the memo of verified signatures.

The client derives its pairwise secrets with the Rust core's batched X25519; it
must agree with OpenSSL's (through ``cryptography``) bit for bit, or meters and a
server recovering a dropped meter's masks would disagree.
"""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from gridsim import _core
from gridsim.exceptions import InvalidInputError, ProtocolError
from gridsim.secagg import messages as msg
from gridsim.secagg.client import (
    PAIRWISE_SEED_INFO,
    SHARE_AD,
    SHARE_KEY_INFO,
    _labels,
    derive_pair_keys,
    pairwise_seed_info,
    share_ad,
    share_key_info,
)

from .reference import hkdf as _hkdf
from .reference import pairwise_seed, public_bytes, share_key
from .test_protocol import _config, federation, inputs_for, run_round

keys = st.binary(min_size=32, max_size=32)


@settings(max_examples=50, deadline=None)
@given(a=keys, b=keys)
def test_rust_x25519_agrees_with_openssl(a: bytes, b: bytes) -> None:
    ska, skb = X25519PrivateKey.from_private_bytes(a), X25519PrivateKey.from_private_bytes(b)
    assert _core.x25519_public_key(a) == public_bytes(ska)
    shared = _core.x25519_agree([a, b], [public_bytes(skb), public_bytes(ska)])
    assert shared == [ska.exchange(skb.public_key())] * 2


def test_rust_x25519_reports_low_order_points_and_bad_lengths() -> None:
    sk = bytes(range(32))
    assert _core.x25519_agree([sk, sk], [bytes(32), b"\x01" + bytes(31)]) == [None, None]
    with pytest.raises(InvalidInputError, match="32 bytes"):
        _core.x25519_agree([sk], [bytes(31)])
    with pytest.raises(InvalidInputError, match="length mismatch"):
        _core.x25519_agree([sk, sk], [bytes(32)])


@settings(max_examples=25, deadline=None)
@given(a=keys, b=keys, round_=st.integers(0, 2**40), u=st.integers(0, 2**31 - 1))
def test_batched_pair_keys_equal_openssl_agreement_and_hkdf(
    a: bytes, b: bytes, round_: int, u: int
) -> None:
    """The client's one-call key schedule equals X25519 + HKDF done with ``cryptography``."""
    v = u ^ 1
    ska, skb = X25519PrivateKey.from_private_bytes(a), X25519PrivateKey.from_private_bytes(b)
    pkb = public_bytes(skb)
    [[seed], [out, inbound]] = derive_pair_keys(
        [a, a],
        [pkb, pkb],
        [
            [pairwise_seed_info("sess", round_, u, v)],
            [share_key_info("sess", round_, u, v), share_key_info("sess", round_, v, u)],
        ],
        [v, v],
    )
    assert seed == pairwise_seed(ska, pkb, "sess", round_, u, v)
    assert seed == pairwise_seed(skb, public_bytes(ska), "sess", round_, v, u)
    assert out == share_key(ska, pkb, "sess", round_, u, v)
    assert inbound == share_key(skb, public_bytes(ska), "sess", round_, v, u)
    assert len({seed, out, inbound}) == 3


@settings(max_examples=50, deadline=None)
@given(
    session=st.text(max_size=20),
    round_=st.integers(0, 2**63),
    u=st.integers(0, 2**32 - 1),
    peers=st.lists(st.integers(0, 2**32 - 1), max_size=5),
)
def test_labels_have_the_documented_layout(
    session: str, round_: int, u: int, peers: list[int]
) -> None:
    """The HKDF infos and AEAD associated data of a pair are the documented layout:
    domain tag, session length (u32 LE), session (UTF-8), round (u64 LE), two meter
    ids (u32 LE each); the Rust core appends the ids to the same prefixes."""
    s = session.encode()
    ctx = len(s).to_bytes(4, "little") + s + round_.to_bytes(8, "little")

    def layout(tag: bytes, a: int, b: int) -> bytes:
        return tag + ctx + a.to_bytes(4, "little") + b.to_bytes(4, "little")

    for v in peers:
        lo, hi = min(u, v), max(u, v)
        assert pairwise_seed_info(session, round_, u, v) == layout(PAIRWISE_SEED_INFO, lo, hi)
        assert pairwise_seed_info(session, round_, v, u) == layout(PAIRWISE_SEED_INFO, lo, hi)
        assert share_key_info(session, round_, u, v) == layout(SHARE_KEY_INFO, u, v)
        assert share_ad(session, round_, v, u) == layout(SHARE_AD, v, u)


@settings(max_examples=25, deadline=None)
@given(a=keys, b=keys, c=keys, seed=keys, round_=st.integers(0, 2**40))
def test_a_meters_sharing_stage_equals_openssl_and_the_documented_labels(
    a: bytes, b: bytes, c: bytes, seed: bytes, round_: int
) -> None:
    """The Rust core's sharing stage, checked against ``cryptography``: each pairwise
    seed and inbound key is X25519 + HKDF with the documented labels, and each
    neighbour opens its ciphertext with OpenSSL's ChaCha20-Poly1305 under the
    outbound key and the documented associated data, to the meter's Shamir shares
    at x = id + 1 (the same as ``shamir_split`` with the same coefficient seed)."""
    u, peers = 6, [2, 9]
    enc, agree = X25519PrivateKey.from_private_bytes(a), X25519PrivateKey.from_private_bytes(b)
    theirs = [X25519PrivateKey.from_private_bytes(bytes([i]) + c[1:]) for i in (1, 2)]
    fresh = bytes(range(64)) + bytes(range(100, 124))
    labels = _labels("sess", round_)
    seeds, inbound, sealed = _core.secagg_share(
        u,
        2,
        *labels,
        a,
        b,
        seed,
        peers,
        [public_bytes(k) for k in theirs],
        [public_bytes(k) for k in theirs],
        fresh,
    )
    seed_shares = _core.shamir_split(seed, 2, [v + 1 for v in peers], fresh[:32])
    key_shares = _core.shamir_split(b, 2, [v + 1 for v in peers], fresh[32:64])
    for i, (v, k) in enumerate(zip(peers, theirs, strict=True)):
        assert seeds[i] == pairwise_seed(agree, public_bytes(k), "sess", round_, u, v)
        assert seeds[i] == pairwise_seed(k, public_bytes(agree), "sess", round_, v, u)
        assert inbound[i] == share_key(k, public_bytes(enc), "sess", round_, v, u)
        nonce, ct = sealed[i][:12], sealed[i][12:]
        assert nonce == fresh[64 + 12 * i : 76 + 12 * i]
        outbound = share_key(enc, public_bytes(k), "sess", round_, u, v)
        plain = ChaCha20Poly1305(outbound).decrypt(nonce, ct, share_ad("sess", round_, u, v))
        assert plain == seed_shares[i] + key_shares[i]
    assert labels.seed_prefix + (2).to_bytes(4, "little") + (6).to_bytes(4, "little") == (
        pairwise_seed_info("sess", round_, u, 2)
    )


def test_batched_pair_keys_name_the_meter_with_a_degenerate_key() -> None:
    sk = bytes(range(32))
    good = _core.x25519_public_key(bytes(32))
    with pytest.raises(ProtocolError, match="meter 7 advertised a degenerate X25519 key"):
        derive_pair_keys([sk, sk], [good, bytes(32)], [[b"i"], [b"i"]], [3, 7])
    with pytest.raises(InvalidInputError, match="length mismatch"):
        _core.x25519_derive([sk, sk], [good, good], [[b"i"]])


def test_client_refuses_a_low_order_neighbour_key() -> None:
    fed = federation(10, _config(10))
    out = run_round(fed, 1, inputs_for(fed), until=msg.Stage.SHARE)
    meter = min(out.direct)
    request = out.direct[meter]
    assert isinstance(request, msg.ShareRequest)
    roster = list(request.roster)
    i, other = next((i, adv.meter) for i, adv in enumerate(roster) if adv.meter != meter)
    # The neighbour itself signs a degenerate key: the signature holds, the key does not.
    roster[i] = msg.sign(
        msgspec.structs.replace(roster[i], enc_key=bytes(32)), fed.meter_keys[other]
    )
    bad = msg.sign(msgspec.structs.replace(request, roster=roster), fed.server_key)
    with pytest.raises(ProtocolError, match=f"meter {other} advertised a degenerate X25519 key"):
        fed.clients[meter].share_keys(bad)


def test_a_remembered_signature_does_not_cover_a_changed_message() -> None:
    key = Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()
    request = msg.sign(
        msg.UnmaskRequest(msg.SECAGG_WIRE_VERSION, "s", 3, msg.Stage.UNMASK, b"", [1, 2], []), key
    )
    msg.verify_signature(request, key.public_key())  # verified, now remembered
    msg.verify_signature(request, key.public_key())
    changed = msgspec.structs.replace(request, survivors=[1], dropped=[2])
    with pytest.raises(ProtocolError, match="bad signature on UnmaskRequest"):
        msg.verify_signature(changed, key.public_key())
    with pytest.raises(ProtocolError, match="bad signature on UnmaskRequest"):
        msg.verify_signature(request, other.public_key())
    truncated = msgspec.structs.replace(request, sig=request.sig[:63])
    with pytest.raises(ProtocolError, match="bad signature on UnmaskRequest"):
        msg.verify_signature(truncated, key.public_key())


def test_hkdf_matches_rfc5869_and_cryptography() -> None:
    # RFC 5869 test case 3 (no salt, empty info): the first 32 bytes of its OKM.
    okm = bytes.fromhex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d")
    assert _hkdf(b"\x0b" * 22, b"") == okm
    for n in range(20):
        shared, info = bytes([n]) * 32, b"gridsim/info" * n
        reference = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
        assert _hkdf(shared, info) == reference.derive(shared)
