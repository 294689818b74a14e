//! X25519 for eight agreements at once: the Montgomery ladder of RFC 7748
//! section 5, one agreement per 64-bit lane of AVX-512 registers, its products
//! on AVX-512 IFMA (52-bit multiply-accumulate).
//!
//! The parent module's Edwards path runs one agreement at a time, each point
//! operation spread over four lanes; a process simulating hundreds of meters
//! has dozens of independent agreements per meter, so here every lane is a
//! different agreement and no lane idles or waits for a shuffle. Every input
//! takes the same instructions (points on the curve, on the twist, of low
//! order; canonical or not), as in the RFC: the only branches depend on the
//! public bit index of the loop.
//!
//! A field element is five limbs in radix 2^51, one register per limb, each
//! lane a different element. IFMA multiplies the low 52 bits of its inputs, so
//! every operand of a product is kept below 2^52: products and sums leave
//! limbs below 2^51 + 2^15 ([`carry`] after each), which is within that
//! bound, and differences add 2p before subtracting so no lane goes negative.
//! The product of two limbs is taken in two halves, bits 0-51 at the limbs'
//! weight and bits 52-103 at twice the next limb's weight (2^52 = 2 * 2^51);
//! coefficients of weight 2^255 and above come back multiplied by 19
//! (2^255 = 19 mod p). Bounds are stated where they are used.
//!
//! Every function here needs AVX-512F, AVX-512DQ and AVX-512 IFMA; an [`Ifma`]
//! exists only where the CPU has them. Secret scalars are wiped from memory
//! after use; what the compiler leaves in registers or spills is not (as for
//! the rest of the crate).

use std::arch::x86_64::*;

use zeroize::Zeroize;

use super::KEY_LEN;

/// Agreements per call of [`Ifma::agree`]: the 64-bit lanes of a `zmm` register.
pub(super) const LANES: usize = 8;

const MASK51: u64 = (1 << 51) - 1;

/// Proof that the CPU has AVX-512F, AVX-512DQ (`vpmullq`) and AVX-512 IFMA.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ifma(());

impl Ifma {
    /// `Some` when the CPU has every feature this module uses.
    pub(super) fn detect() -> Option<Self> {
        let has = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512ifma");
        has.then_some(Ifma(()))
    }

    /// X25519 (RFC 7748) of each `(secret, public)` of `pairs`, at most
    /// [`LANES`] of them, in order. An all-zero result (a low-order peer) is
    /// returned as it is; the caller refuses it.
    pub(super) fn agree(self, pairs: &[([u8; KEY_LEN], [u8; KEY_LEN])]) -> Vec<[u8; KEY_LEN]> {
        assert!(
            !pairs.is_empty() && pairs.len() <= LANES,
            "1 to {LANES} pairs per call"
        );
        // Unused lanes repeat the first pair; their results are dropped.
        let mut scalars = [[0u64; 4]; LANES];
        let mut us = [[0u64; 5]; LANES];
        for lane in 0..LANES {
            let (secret, public) = &pairs[if lane < pairs.len() { lane } else { 0 }];
            scalars[lane] = clamped_words(secret);
            us[lane] = limbs_of(public);
        }
        // SAFETY: an `Ifma` exists only where `detect` found every feature
        // `ladder` enables.
        let mut out = unsafe { ladder(&scalars, &us) };
        scalars.zeroize();
        let shared = out
            .iter()
            .take(pairs.len())
            .map(|limbs| to_bytes(*limbs))
            .collect();
        out.zeroize(); // the shared secrets, as limbs
        shared
    }
}

/// The clamped scalar of `secret` (RFC 7748 section 5) as little-endian words.
fn clamped_words(secret: &[u8; KEY_LEN]) -> [u64; 4] {
    let mut k = *secret;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    let mut words = [0u64; 4];
    for (w, chunk) in words.iter_mut().zip(k.chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    k.zeroize();
    words
}

fn load64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The u-coordinate `bytes` as radix-2^51 limbs, its top bit ignored (RFC 7748
/// section 5); values from p to 2^255 - 1 are kept as they are (they are
/// reduced by the arithmetic, as the RFC allows).
fn limbs_of(bytes: &[u8; KEY_LEN]) -> [u64; 5] {
    [
        load64(bytes, 0) & MASK51,
        (load64(bytes, 6) >> 3) & MASK51,
        (load64(bytes, 12) >> 6) & MASK51,
        (load64(bytes, 19) >> 1) & MASK51,
        (load64(bytes, 24) >> 12) & MASK51,
    ]
}

/// The canonical 32-byte encoding of the element with limbs `l` (each below 2^52).
fn to_bytes(mut l: [u64; 5]) -> [u8; KEY_LEN] {
    // Two carry passes leave l1..l4 below 2^51 and l0 below 2^51 + 19, so the
    // value is below 2p and one conditional subtraction of p makes it canonical.
    for _ in 0..2 {
        for i in 0..4 {
            l[i + 1] += l[i] >> 51;
            l[i] &= MASK51;
        }
        l[0] += 19 * (l[4] >> 51);
        l[4] &= MASK51;
    }
    // q = 1 exactly when the value is at least p = 2^255 - 19.
    let mut q = (l[0] + 19) >> 51;
    for limb in &l[1..] {
        q = (limb + q) >> 51;
    }
    l[0] += 19 * q;
    for i in 0..4 {
        l[i + 1] += l[i] >> 51;
        l[i] &= MASK51;
    }
    l[4] &= MASK51; // drops q * 2^255
    let mut out = [0u8; KEY_LEN];
    let mut acc: u128 = 0;
    let mut bits = 0;
    let mut at = 0;
    for limb in l {
        acc |= u128::from(limb) << bits;
        bits += 51;
        while bits >= 8 {
            out[at] = acc as u8;
            acc >>= 8;
            bits -= 8;
            at += 1;
        }
    }
    out[at] = acc as u8; // the last 7 bits
    l.zeroize();
    acc.zeroize();
    out
}

/// Eight field elements: limb `i` of lane `j` is lane `j` of register `i`.
#[derive(Clone, Copy)]
struct Fe([__m512i; 5]);

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(x: u64) -> __m512i {
    _mm512_set1_epi64(x as i64)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn from_lanes(lanes: [u64; LANES]) -> __m512i {
    // SAFETY: both are 64 plain bytes; every bit pattern is valid for each.
    unsafe { std::mem::transmute::<[u64; LANES], __m512i>(lanes) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn to_lanes(v: __m512i) -> [u64; LANES] {
    // SAFETY: as in `from_lanes`.
    unsafe { std::mem::transmute::<__m512i, [u64; LANES]>(v) }
}

impl Fe {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn constant(x: u64) -> Fe {
        let zero = _mm512_setzero_si512();
        Fe([splat(x), zero, zero, zero, zero])
    }
}

/// Limbs below 2^51, the carries moved up (the top one times 19 to limb 0).
///
/// With every `r[i]` below 2^64 the carries are below 2^13, so the result's
/// limbs are below 2^51 + 2^13 (limb 0 below 2^51 + 19 * 2^13 < 2^51 + 2^18);
/// with `r[i]` below 2^61, below 2^51 + 2^10 (limb 0: 2^51 + 2^15).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn carry(r: [__m512i; 5]) -> Fe {
    let mask = splat(MASK51);
    let c = r.map(|x| _mm512_srli_epi64::<51>(x));
    let m = r.map(|x| _mm512_and_si512(x, mask));
    Fe([
        // m0 + 19 * c4: both below 2^52, so IFMA's low half is the whole product.
        _mm512_madd52lo_epu64(m[0], c[4], splat(19)),
        _mm512_add_epi64(m[1], c[0]),
        _mm512_add_epi64(m[2], c[1]),
        _mm512_add_epi64(m[3], c[2]),
        _mm512_add_epi64(m[4], c[3]),
    ])
}

/// `a + b`; limbs of `a` and `b` below 2^51 + 2^18 give limbs below 2^51 + 38.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add(a: &Fe, b: &Fe) -> Fe {
    carry(std::array::from_fn(|i| _mm512_add_epi64(a.0[i], b.0[i])))
}

/// `a - b`, computed as `a + 2p - b` so that no lane goes below zero (every
/// limb of 2p is at least 2^52 - 38, above any limb of `b`).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn sub(a: &Fe, b: &Fe) -> Fe {
    const TWO_P: [u64; 5] = [
        (1 << 52) - 38,
        (1 << 52) - 2,
        (1 << 52) - 2,
        (1 << 52) - 2,
        (1 << 52) - 2,
    ];
    carry(std::array::from_fn(|i| {
        _mm512_sub_epi64(_mm512_add_epi64(a.0[i], splat(TWO_P[i])), b.0[i])
    }))
}

/// The product whose limb products left their low halves in `lo` (at weight
/// `2^(51k)`) and high halves in `hi` (at twice weight `2^(51(k+1))`), as five
/// limbs: the ten coefficients `z[k] = lo[k] + 2 hi[k - 1]`, each below 2^56,
/// folded as `z[k] + 19 z[k + 5]` (below 2^61), then [`carry`].
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn reduce_halves(lo: [__m512i; 9], hi: [__m512i; 9]) -> Fe {
    let z: [__m512i; 10] = std::array::from_fn(|k| match k {
        0 => lo[0],
        9 => _mm512_slli_epi64::<1>(hi[8]),
        _ => _mm512_add_epi64(lo[k], _mm512_slli_epi64::<1>(hi[k - 1])),
    });
    let nineteen = splat(19);
    carry(std::array::from_fn(|k| {
        _mm512_add_epi64(z[k], _mm512_mullo_epi64(z[k + 5], nineteen))
    }))
}

/// `a * b`. The low halves of the products of limbs `i` and `j` add up at
/// weight `i + j`, the high halves at twice weight `i + j + 1`: with operands
/// below 2^52 a coefficient gathers at most five low halves and five doubled
/// high halves, each below 2^52, so it stays below 15 * 2^52 < 2^56.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn mul(a: &Fe, b: &Fe) -> Fe {
    let zero = _mm512_setzero_si512();
    let mut lo = [zero; 9];
    let mut hi = [zero; 9];
    for i in 0..5 {
        for j in 0..5 {
            lo[i + j] = _mm512_madd52lo_epu64(lo[i + j], a.0[i], b.0[j]);
            hi[i + j] = _mm512_madd52hi_epu64(hi[i + j], a.0[i], b.0[j]);
        }
    }
    reduce_halves(lo, hi)
}

/// `a * a` with 15 limb products instead of 25: each cross product is taken
/// once and doubled, so every coefficient is the one [`mul`] computes (and has
/// its bound).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn square(a: &Fe) -> Fe {
    let zero = _mm512_setzero_si512();
    let (mut lo, mut hi) = ([zero; 9], [zero; 9]); // the squares a_i * a_i
    let (mut clo, mut chi) = ([zero; 9], [zero; 9]); // the cross products, once
    for i in 0..5 {
        lo[2 * i] = _mm512_madd52lo_epu64(lo[2 * i], a.0[i], a.0[i]);
        hi[2 * i] = _mm512_madd52hi_epu64(hi[2 * i], a.0[i], a.0[i]);
        for j in i + 1..5 {
            clo[i + j] = _mm512_madd52lo_epu64(clo[i + j], a.0[i], a.0[j]);
            chi[i + j] = _mm512_madd52hi_epu64(chi[i + j], a.0[i], a.0[j]);
        }
    }
    let lo: [__m512i; 9] =
        std::array::from_fn(|k| _mm512_add_epi64(lo[k], _mm512_slli_epi64::<1>(clo[k])));
    let hi: [__m512i; 9] =
        std::array::from_fn(|k| _mm512_add_epi64(hi[k], _mm512_slli_epi64::<1>(chi[k])));
    reduce_halves(lo, hi)
}

/// `a` squared `n` times.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn square_times(a: &Fe, n: u32) -> Fe {
    let mut r = *a;
    for _ in 0..n {
        r = square(&r);
    }
    r
}

/// `a + 121665 * e`, the factor of the ladder's z2 (RFC 7748: a24 = 121665).
/// `e * 121665` is below 2^69: its low 52 bits stay at the limb's weight, the
/// high part (below 2^17) goes to twice the next weight, 38 times to limb 0.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn add_a24_times(a: &Fe, e: &Fe) -> Fe {
    let a24 = splat(121_665);
    let zero = _mm512_setzero_si512();
    let h: [__m512i; 5] = std::array::from_fn(|i| _mm512_madd52hi_epu64(zero, e.0[i], a24));
    carry(std::array::from_fn(|i| {
        let low = _mm512_madd52lo_epu64(a.0[i], e.0[i], a24);
        let high = if i == 0 {
            _mm512_mullo_epi64(h[4], splat(38))
        } else {
            _mm512_slli_epi64::<1>(h[i - 1])
        };
        _mm512_add_epi64(low, high)
    }))
}

/// `z^(p - 2)` = 1/z (0 for 0), by the usual chain of 254 squarings and 11
/// multiplications.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn invert(z: &Fe) -> Fe {
    let z2 = square(z); // 2
    let z9 = mul(&square_times(&z2, 2), z); // 9
    let z11 = mul(&z9, &z2); // 11
    let z_5_0 = mul(&square(&z11), &z9); // 2^5 - 1
    let z_10_0 = mul(&square_times(&z_5_0, 5), &z_5_0);
    let z_20_0 = mul(&square_times(&z_10_0, 10), &z_10_0);
    let z_40_0 = mul(&square_times(&z_20_0, 20), &z_20_0);
    let z_50_0 = mul(&square_times(&z_40_0, 10), &z_10_0);
    let z_100_0 = mul(&square_times(&z_50_0, 50), &z_50_0);
    let z_200_0 = mul(&square_times(&z_100_0, 100), &z_100_0);
    let z_250_0 = mul(&square_times(&z_200_0, 50), &z_50_0);
    mul(&square_times(&z_250_0, 5), &z11) // 2^255 - 32 + 11 = p - 2
}

/// Swaps `a` and `b` in the lanes where `mask` is all ones.
#[inline]
#[target_feature(enable = "avx512f")]
fn swap(a: &mut Fe, b: &mut Fe, mask: __m512i) {
    for i in 0..5 {
        let t = _mm512_and_si512(mask, _mm512_xor_si512(a.0[i], b.0[i]));
        a.0[i] = _mm512_xor_si512(a.0[i], t);
        b.0[i] = _mm512_xor_si512(b.0[i], t);
    }
}

/// The ladder of RFC 7748 section 5 in every lane: the u-coordinate of
/// `scalars[j]` times `us[j]`, as limbs below 2^52 (not yet canonical).
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn ladder(scalars: &[[u64; 4]; LANES], us: &[[u64; 5]; LANES]) -> [[u64; 5]; LANES] {
    let words: [__m512i; 4] = std::array::from_fn(|w| from_lanes(scalars.map(|s| s[w])));
    let x1 = Fe(std::array::from_fn(|i| from_lanes(us.map(|u| u[i]))));
    let (mut x2, mut z2) = (Fe::constant(1), Fe::constant(0));
    let (mut x3, mut z3) = (x1, Fe::constant(1));
    let one = splat(1);
    let zero = _mm512_setzero_si512();
    let mut swapped = zero;
    for t in (0..255u64).rev() {
        let bit = _mm512_and_si512(
            _mm512_srlv_epi64(words[(t / 64) as usize], splat(t % 64)),
            one,
        );
        // All ones in the lanes whose bit differs from the last one.
        let mask = _mm512_sub_epi64(zero, _mm512_xor_si512(swapped, bit));
        swap(&mut x2, &mut x3, mask);
        swap(&mut z2, &mut z3, mask);
        swapped = bit;

        let a = add(&x2, &z2);
        let b = sub(&x2, &z2);
        let c = add(&x3, &z3);
        let d = sub(&x3, &z3);
        let aa = square(&a);
        let bb = square(&b);
        let e = sub(&aa, &bb);
        let da = mul(&d, &a);
        let cb = mul(&c, &b);
        x3 = square(&add(&da, &cb));
        z3 = mul(&x1, &square(&sub(&da, &cb)));
        x2 = mul(&aa, &bb);
        z2 = mul(&e, &add_a24_times(&aa, &e));
    }
    let mask = _mm512_sub_epi64(zero, swapped);
    swap(&mut x2, &mut x3, mask);
    swap(&mut z2, &mut z3, mask);
    let u = mul(&x2, &invert(&z2));
    let mut limbs = u.0.map(|v| to_lanes(v));
    let out = std::array::from_fn(|lane| std::array::from_fn(|i| limbs[i][lane]));
    limbs.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bytes, unhex};
    use super::*;

    fn reference(secret: &[u8; KEY_LEN], public: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
        x25519_dalek::x25519(*secret, *public)
    }

    fn ifma() -> Option<Ifma> {
        let found = Ifma::detect();
        if found.is_none() {
            eprintln!("this CPU has no AVX-512 IFMA: the 8-lane ladder is not tested here");
        }
        found
    }

    /// An independent reference: integers below 2^320 as five u64 words,
    /// reduced modulo p by schoolbook arithmetic (no radix-2^51 tricks).
    mod reference {
        pub type N = [u64; 5];
        const P: N = [
            0xffff_ffff_ffff_ffed,
            0xffff_ffff_ffff_ffff,
            0xffff_ffff_ffff_ffff,
            0x7fff_ffff_ffff_ffff,
            0,
        ];

        /// The value of radix-2^51 limbs (each below 2^64).
        pub fn from_limbs(l: &[u64; 5]) -> N {
            let mut out = [0u64; 5];
            for (i, &limb) in l.iter().enumerate() {
                let bit = 51 * i;
                let (w, s) = (bit / 64, bit % 64);
                let wide = u128::from(limb) << s;
                let mut carry = 0u128;
                for (k, part) in [wide as u64, (wide >> 64) as u64].into_iter().enumerate() {
                    if w + k < 5 {
                        let t = u128::from(out[w + k]) + u128::from(part) + carry;
                        out[w + k] = t as u64;
                        carry = t >> 64;
                    }
                }
                let mut k = w + 2;
                while carry > 0 && k < 5 {
                    let t = u128::from(out[k]) + carry;
                    out[k] = t as u64;
                    carry = t >> 64;
                    k += 1;
                }
            }
            reduce(out)
        }

        fn ge(a: &N, b: &N) -> bool {
            for i in (0..5).rev() {
                if a[i] != b[i] {
                    return a[i] > b[i];
                }
            }
            true
        }

        fn sub_raw(a: &N, b: &N) -> N {
            let mut out = [0u64; 5];
            let mut borrow = 0i128;
            for i in 0..5 {
                let t = i128::from(a[i]) - i128::from(b[i]) - borrow;
                out[i] = t as u64;
                borrow = i128::from(t < 0);
            }
            out
        }

        /// `a mod p` by shift-and-subtract.
        pub fn reduce(mut a: N) -> N {
            for shift in (0..66).rev() {
                let mut m = [0u64; 5];
                // m = p << shift, if it fits in 320 bits
                let (w, s) = (shift / 64, shift % 64);
                let mut fits = true;
                for i in 0..5 {
                    let lo = if i >= w { P[i - w] << s } else { 0 };
                    let hi = if s > 0 && i > w {
                        P[i - w - 1] >> (64 - s)
                    } else {
                        0
                    };
                    m[i] = lo | hi;
                }
                if s > 0 && P[4 - w] >> (64 - s) != 0 {
                    fits = false;
                }
                if fits && ge(&a, &m) {
                    a = sub_raw(&a, &m);
                }
            }
            a
        }

        fn add_raw(a: &N, b: &N) -> N {
            let mut out = [0u64; 5];
            let mut carry = 0u128;
            for i in 0..5 {
                let t = u128::from(a[i]) + u128::from(b[i]) + carry;
                out[i] = t as u64;
                carry = t >> 64;
            }
            out
        }

        pub fn add(a: &N, b: &N) -> N {
            reduce(add_raw(a, b))
        }

        pub fn sub(a: &N, b: &N) -> N {
            let (a, b) = (reduce(*a), reduce(*b));
            if ge(&a, &b) {
                sub_raw(&a, &b)
            } else {
                sub_raw(&add_raw(&a, &P), &b)
            }
        }

        /// `a * b mod p` for reduced a and b: 2^256 = 38 (mod p), folded twice.
        pub fn mul(a: &N, b: &N) -> N {
            let mut wide = [0u128; 8];
            for i in 0..4 {
                for j in 0..4 {
                    let t = u128::from(a[i]) * u128::from(b[j]);
                    wide[i + j] += t & u128::from(u64::MAX);
                    wide[i + j + 1] += t >> 64;
                }
            }
            let mut words = [0u64; 8];
            let mut carry = 0u128;
            for k in 0..8 {
                let t = wide[k] + carry;
                words[k] = t as u64;
                carry = t >> 64;
            }
            let mut out = [0u64; 5];
            let mut carry = 0u128;
            for k in 0..4 {
                let t = u128::from(words[k]) + 38 * u128::from(words[k + 4]) + carry;
                out[k] = t as u64;
                carry = t >> 64;
            }
            out[4] = carry as u64;
            reduce(out)
        }
    }

    fn lanes_of(fe: &Fe) -> [[u64; 5]; LANES] {
        let limbs = fe.0.map(|v| unsafe { to_lanes(v) });
        std::array::from_fn(|lane| std::array::from_fn(|i| limbs[i][lane]))
    }

    fn fe_of(lanes: &[[u64; 5]; LANES]) -> Fe {
        Fe(std::array::from_fn(|i| unsafe {
            from_lanes(lanes.map(|l| l[i]))
        }))
    }

    #[test]
    fn field_operations_at_the_largest_limbs_match_a_reference() {
        // Operands at the bounds the module documentation states: every limb at
        // 2^52 - 1 (the largest an IFMA operand may be), at 2^51 + 2^18 - 1 (the
        // largest the carries leave), at 2p - 1 limb-wise for sub's subtrahend,
        // and mixed; each result is checked against the reference and for the
        // stated output bound (below 2^51 + 2^15, within IFMA's 52 bits).
        if ifma().is_none() {
            return;
        }
        let top = (1u64 << 52) - 1;
        let carried = (1u64 << 51) + (1 << 18) - 1;
        let mut state = 5;
        let mut random = || {
            let b = bytes(&mut state);
            std::array::from_fn(|i| load64(&b, 6 * i) & top)
        };
        let a: [[u64; 5]; LANES] = [
            [top; 5],
            [carried; 5],
            [top, 0, top, 0, top],
            [0, carried, 0, carried, 0],
            [MASK51; 5],
            random(),
            random(),
            [1, 0, 0, 0, 0],
        ];
        let b: [[u64; 5]; LANES] = [
            [top; 5],
            [carried; 5],
            [carried, top, 1, top, carried],
            [top; 5],
            random(),
            [
                (1 << 52) - 39,
                (1 << 52) - 3,
                (1 << 52) - 3,
                (1 << 52) - 3,
                (1 << 52) - 3,
            ],
            [carried; 5],
            random(),
        ];
        let (fa, fb) = (fe_of(&a), fe_of(&b));
        // SAFETY: ifma() found every feature these functions enable.
        let results = unsafe {
            [
                ("mul", mul(&fa, &fb)),
                ("square", square(&fa)),
                ("add", add(&fa, &fb)),
                ("a24", add_a24_times(&fa, &fb)),
                ("invert", invert(&fa)),
            ]
        };
        for (name, got) in results {
            for (lane, limbs) in lanes_of(&got).iter().enumerate() {
                assert!(
                    limbs.iter().all(|&l| l < (1 << 51) + (1 << 15)),
                    "{name}: {limbs:x?}"
                );
                let (ra, rb) = (
                    reference::from_limbs(&a[lane]),
                    reference::from_limbs(&b[lane]),
                );
                let want = match name {
                    "mul" => reference::mul(&ra, &rb),
                    "square" => reference::mul(&ra, &ra),
                    "add" => reference::add(&ra, &rb),
                    "a24" => reference::add(&ra, &reference::mul(&rb, &[121_665, 0, 0, 0, 0])),
                    _ => {
                        // a * a^-1 = 1 unless a = 0 mod p (then 0).
                        let back = reference::mul(&ra, &reference::from_limbs(limbs));
                        let zero = ra == [0; 5];
                        assert_eq!(back, if zero { [0; 5] } else { [1, 0, 0, 0, 0] }, "{name}");
                        continue;
                    }
                };
                assert_eq!(reference::from_limbs(limbs), want, "{name}, lane {lane}");
                assert_eq!(
                    to_bytes(*limbs),
                    bytes_of(&want),
                    "{name}: to_bytes, lane {lane}"
                );
            }
        }
        // sub's subtrahend may be as large as 2p - 1 limb-wise minus a little.
        let subtrahend: [[u64; 5]; LANES] = std::array::from_fn(|lane| {
            if lane % 2 == 0 {
                [
                    (1 << 52) - 39,
                    (1 << 52) - 3,
                    (1 << 52) - 3,
                    (1 << 52) - 3,
                    (1 << 52) - 3,
                ]
            } else {
                [carried; 5]
            }
        });
        let got = unsafe { sub(&fa, &fe_of(&subtrahend)) };
        for (lane, limbs) in lanes_of(&got).iter().enumerate() {
            assert!(
                limbs.iter().all(|&l| l < (1 << 51) + (1 << 15)),
                "sub: {limbs:x?}"
            );
            let want = reference::sub(
                &reference::from_limbs(&a[lane]),
                &reference::from_limbs(&subtrahend[lane]),
            );
            assert_eq!(reference::from_limbs(limbs), want, "sub, lane {lane}");
        }
    }

    /// The canonical little-endian bytes of a reduced reference value.
    fn bytes_of(n: &reference::N) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        for (i, w) in n[..4].iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    #[test]
    fn rfc7748_section_5_2_vectors() {
        let Some(ifma) = ifma() else { return };
        let pairs = [
            (
                unhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                unhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
            ),
            (
                unhex("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
                unhex("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493"),
            ),
        ];
        let out = ifma.agree(&pairs);
        assert_eq!(
            out[0],
            unhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
        );
        assert_eq!(
            out[1],
            unhex("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957")
        );
    }

    #[test]
    fn rfc7748_section_5_2_iterated_1000_times() {
        let Some(ifma) = ifma() else { return };
        // k <- X25519(k, u), u <- old k, starting from k = u = 9: in every lane.
        let mut k = [0u8; KEY_LEN];
        k[0] = 9;
        let mut u = k;
        for i in 1..=1000 {
            let out = ifma.agree(&[(k, u); LANES]);
            assert!(out.iter().all(|o| *o == out[0]));
            u = k;
            k = out[0];
            if i == 1 {
                assert_eq!(
                    k,
                    unhex("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
                );
            }
        }
        assert_eq!(
            k,
            unhex("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
    }

    #[test]
    fn random_inputs_match_x25519_dalek() {
        // Random u-coordinates: on the curve and on the twist about half each,
        // some with the top bit set or at least p; every batch size.
        let Some(ifma) = ifma() else { return };
        let mut state = 7;
        for round in 0..800 {
            let n = 1 + round % LANES;
            let pairs: Vec<_> = (0..n)
                .map(|_| (bytes(&mut state), bytes(&mut state)))
                .collect();
            let out = ifma.agree(&pairs);
            assert_eq!(out.len(), n);
            for ((secret, public), got) in pairs.iter().zip(out) {
                assert_eq!(got, reference(secret, public));
            }
        }
    }

    #[test]
    fn edge_coordinates_match_x25519_dalek() {
        // 0, 1, small values, p - 1, p, p + 1, 2^255 - 1 and the top bit set on
        // them, the low-order points of the curve and twist (the results of
        // those are all zeros), and limbs at their largest.
        let p_plus = |add: u8| {
            let mut b = [0xffu8; KEY_LEN];
            b[0] = 0xed_u8.wrapping_add(add);
            b[31] = 0x7f;
            b
        };
        let mut publics = vec![
            [0u8; KEY_LEN],
            p_plus(0xff), // p - 1
            p_plus(0),    // p
            p_plus(1),    // p + 1
            p_plus(0x12), // 2^255 - 1
            [0xff; KEY_LEN],
            unhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            unhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        ];
        for v in [1u8, 2, 9, 0x7f] {
            let mut b = [0u8; KEY_LEN];
            b[0] = v;
            publics.push(b);
            b[31] = 0x80;
            publics.push(b);
        }
        let Some(ifma) = ifma() else { return };
        let mut state = 11;
        for chunk in publics.chunks(LANES) {
            let pairs: Vec<_> = chunk.iter().map(|p| (bytes(&mut state), *p)).collect();
            for ((secret, public), got) in pairs.iter().zip(ifma.agree(&pairs)) {
                assert_eq!(got, reference(secret, public), "u = {public:02x?}");
            }
        }
    }
}
