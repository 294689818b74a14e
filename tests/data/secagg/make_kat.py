"""Writes the known-answer vectors of gridsim's secure-aggregation primitives.

Usage (from the repository root; needs only ``cryptography``)::

    python tests/data/secagg/make_kat.py

It rewrites ``prg_kat.json`` and ``shamir_kat.json`` beside this file. The vectors
are computed here, by a reference written from the specification in
``gridsim/secagg/masking.py`` on Python's ``hashlib`` and the ``cryptography``
package (OpenSSL's AES-256-CTR and ChaCha20), not by gridsim's Rust core; the test
suite checks the core against them. Every input is fixed, so running the script
again reproduces the files byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MASK_KEY_DOMAIN = b"gridsim/secagg/mask-prg/v1/aes-256-ctr"
P = 2**127 - 1
HERE = Path(__file__).resolve().parent


# ---- masks ---------------------------------------------------------------------


def mask_key(
    seed: bytes, session: bytes, round_: int, vector: int, stream: int, word_bits: int
) -> bytes:
    """SHA-256 over the documented, unambiguous encoding of the context and seed."""
    msg = (
        MASK_KEY_DOMAIN
        + struct.pack("<I", len(session))
        + session
        + struct.pack("<QIQB", round_, vector, stream, word_bits)
        + seed
    )
    return hashlib.sha256(msg).digest()


def keystream(key: bytes, nbytes: int) -> bytes:
    """AES-256-CTR keystream, 128-bit big-endian counter starting at zero."""
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def mask_words(
    seed: bytes,
    session: bytes,
    round_: int,
    vector: int,
    stream: int,
    word_bits: int,
    bits: int,
    d: int,
) -> list[int]:
    """The first ``d`` words of a mask, reduced modulo ``2**bits``."""
    width = word_bits // 8
    ks = keystream(mask_key(seed, session, round_, vector, stream, word_bits), width * d)
    return [
        int.from_bytes(ks[width * i : width * (i + 1)], "little") % (1 << bits) for i in range(d)
    ]


def pair_stream_id(a: int, b: int) -> int:
    return (min(a, b) << 32) | max(a, b)


# ---- Shamir ----------------------------------------------------------------------


class ChaCha20Stream:
    """The byte stream of rand_chacha's ChaCha20Rng: the ChaCha20 keystream under the
    seed as key, block counter and stream id zero (counter and nonce all zero)."""

    def __init__(self, seed: bytes) -> None:
        cipher = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None)
        self._enc = cipher.encryptor()

    def read(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


def random_element(rng: ChaCha20Stream) -> int:
    while True:
        v = int.from_bytes(rng.read(16), "little") & P
        if v != P:
            return v


def shamir_split(secret: bytes, t: int, xs: list[int], rng_seed: bytes) -> list[bytes]:
    """Shares as documented in rust_core/src/shamir.rs."""
    rng = ChaCha20Stream(rng_seed)
    polys = []
    for c in range(4):
        coeffs = [int.from_bytes(secret[8 * c : 8 * c + 8], "little")]
        coeffs += [random_element(rng) for _ in range(t - 1)]
        polys.append(coeffs)
    shares = []
    for x in xs:
        ys = [sum(k * pow(x, j, P) for j, k in enumerate(poly)) % P for poly in polys]
        shares.append(
            bytes([1]) + struct.pack("<II", t, x) + b"".join(y.to_bytes(16, "little") for y in ys)
        )
    return shares


def shamir_combine(shares: list[bytes]) -> bytes:
    """Lagrange interpolation at zero from the first t shares."""
    t = int.from_bytes(shares[0][1:5], "little")
    pts = [
        (
            int.from_bytes(s[5:9], "little"),
            [int.from_bytes(s[9 + 16 * c : 25 + 16 * c], "little") for c in range(4)],
        )
        for s in shares[:t]
    ]
    out = b""
    for c in range(4):
        acc = 0
        for i, (xi, yi) in enumerate(pts):
            num, den = 1, 1
            for j, (xj, _) in enumerate(pts):
                if i != j:
                    num = num * xj % P
                    den = den * (xj - xi) % P
            acc = (acc + yi[c] * num * pow(den, P - 2, P)) % P
        out += acc.to_bytes(8, "little")
    return out


# ---- the files -------------------------------------------------------------------


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"gridsim kat seed " + label.encode()).digest()


def prg_vectors() -> dict[str, object]:
    cases = [
        # session, round, vector, stream, word_bits, bits, d
        (b"kat-session", 7, 0, pair_stream_id(3, 9), 32, 32, 16),
        (b"kat-session", 7, 0, pair_stream_id(3, 3), 32, 20, 9),
        (b"", 0, 0, 0, 32, 1, 33),
        (bytes(range(40)), 2**64 - 1, 2**32 - 1, 2**64 - 1, 32, 31, 5),
        (b"kat-session", 7, 1, pair_stream_id(3, 9), 64, 64, 8),
        (b"kat-session", 8, 0, pair_stream_id(9, 3), 64, 40, 7),
    ]
    vectors = []
    for i, (session, rnd, vec, stream, wb, bits, d) in enumerate(cases):
        seed = _seed(f"prg {i}")
        vectors.append(
            {
                "seed": seed.hex(),
                "session": session.hex(),
                "round": rnd,
                "vector": vec,
                "stream": stream,
                "word_bits": wb,
                "bits": bits,
                "key": mask_key(seed, session, rnd, vec, stream, wb).hex(),
                "mask": mask_words(seed, session, rnd, vec, stream, wb, bits, d),
            }
        )
    # Several masks added and subtracted into one accumulator in one call.
    session, rnd, bits, d = b"kat-expand", 3, 24, 11
    init = [(i * 2654435761) % (1 << bits) for i in range(d)]
    streams = [
        {"seed": _seed(f"expand {j}").hex(), "stream": pair_stream_id(j, j + 1), "sign": sign}
        for j, sign in enumerate([1, -1, 1, 1, -1])
    ]
    acc = list(init)
    for s in streams:
        m = mask_words(
            bytes.fromhex(str(s["seed"])), session, rnd, 0, int(s["stream"]), 32, bits, d
        )
        acc = [(a + int(s["sign"]) * w) % (1 << bits) for a, w in zip(acc, m, strict=True)]
    return {
        "description": "Known-answer vectors for gridsim's secure-aggregation mask PRG.",
        "reproduce": "python tests/data/secagg/make_kat.py (reference on hashlib + cryptography)",
        "prg": "AES-256-CTR, 128-bit big-endian counter block starting at 0",
        "key_derivation": (
            "key = SHA-256(domain || u32le(len(session)) || session || u64le(round) || "
            "u32le(vector) || u64le(stream) || u8(word_bits) || seed)"
        ),
        "domain": MASK_KEY_DOMAIN.decode(),
        "words": (
            "mask word i = keystream bytes [i*w, (i+1)*w) little-endian, "
            "w = word_bits/8, reduced mod 2^bits"
        ),
        "stream_ids": (
            "pairwise mask of meters a, b: min(a,b) << 32 | max(a,b); self mask of m: (m, m)"
        ),
        "vectors": vectors,
        "expand": {
            "session": session.hex(),
            "round": rnd,
            "vector": 0,
            "word_bits": 32,
            "bits": bits,
            "acc_in": init,
            "streams": streams,
            "acc_out": acc,
        },
    }


def shamir_vectors() -> dict[str, object]:
    cases = [(1, [1, 2]), (2, [1, 2, 3]), (3, [1, 2, 3, 4, 5]), (4, [7, 1000, 2**32 - 1, 42, 5])]
    vectors = []
    for i, (t, xs) in enumerate(cases):
        secret = _seed(f"shamir secret {i}")
        rng_seed = _seed(f"shamir rng {i}")
        shares = shamir_split(secret, t, xs, rng_seed)
        assert shamir_combine(shares[::-1]) == secret
        vectors.append(
            {
                "secret": secret.hex(),
                "t": t,
                "xs": xs,
                "rng_seed": rng_seed.hex(),
                "shares": [s.hex() for s in shares],
            }
        )
    return {
        "description": "Known-answer vectors for gridsim's Shamir sharing of 32-byte secrets.",
        "reproduce": (
            "python tests/data/secagg/make_kat.py (reference on Python integers + cryptography)"
        ),
        "field": "GF(p), p = 2^127 - 1",
        "secret_encoding": (
            "four 8-byte chunks, chunk c = bytes [8c, 8c+8) as u64 little-endian, "
            "one polynomial each"
        ),
        "randomness": (
            "rand_chacha ChaCha20Rng from rng_seed = ChaCha20 keystream "
            "(key rng_seed, counter and nonce 0); for chunk c in 0..4, degree j in 1..t: "
            "16 bytes LE with bit 127 cleared, value p rejected"
        ),
        "share_encoding": (
            "u8 version=1 || u32le t || u32le x || 4 x 16-byte LE y (each < p); 73 bytes"
        ),
        "vectors": vectors,
    }


def main() -> None:
    for name, doc in (("prg_kat.json", prg_vectors()), ("shamir_kat.json", shamir_vectors())):
        (HERE / name).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
