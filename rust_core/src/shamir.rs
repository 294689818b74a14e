//! Shamir t-of-n secret sharing of 32-byte secrets (mask seeds and pairwise
//! keys), as used by SecAgg for dropout recovery.
//!
//! # Field and encoding of the secret
//!
//! Arithmetic is in GF(p) with the Mersenne prime p = 2^127 - 1. The 32-byte
//! secret is cut into four 8-byte chunks; chunk `c` (bytes `8c..8c+8`) read as a
//! little-endian u64 is a field element below 2^64 < p, and each chunk is shared
//! with its own random polynomial of degree t-1 whose constant term is the
//! chunk. All four polynomials are evaluated at the same x-coordinate, so a
//! share is one x and four field elements. Each chunk is perfectly hidden by
//! any t-1 shares, since its coefficients are uniform over the whole field; a
//! reconstructed chunk at or above 2^64 proves the shares inconsistent.
//!
//! # Randomness
//!
//! Coefficients come from the caller's CSPRNG ([`rand_core::RngCore`]); with
//! a seeded `rand_chacha::ChaCha20Rng` the shares are reproducible, which the
//! known-answer vectors use. For chunk `c = 0..4`, then degree `j = 1..t`, the
//! coefficient is drawn by `fill_bytes` of 16 bytes, read little-endian, with
//! the top bit cleared; the value p itself (all 127 bits set) is rejected and
//! drawn again, which leaves the coefficient uniform in `[0, p)`.
//!
//! # Share bytes
//!
//! A share is [`SHARE_LEN`] = 73 bytes: `version` (1 byte, = 1), the threshold
//! `t` (u32 LE), the x-coordinate (u32 LE, non-zero), then the four
//! y-coordinates (16 bytes LE each, each below p). The threshold travels with
//! the share so that [`combine`] can refuse fewer than t shares instead of
//! silently interpolating a wrong secret.

use rand_core::RngCore;
use zeroize::Zeroize;

use crate::error::{CoreError, Result};

/// The field modulus, the Mersenne prime 2^127 - 1.
pub const P: u128 = (1u128 << 127) - 1;
/// Bytes in a shared secret.
pub const SECRET_LEN: usize = 32;
/// Field elements per share (one per 8-byte chunk of the secret).
pub const CHUNKS: usize = SECRET_LEN / 8;
/// Version byte opening every encoded share.
pub const SHARE_VERSION: u8 = 1;
/// Bytes in an encoded share.
pub const SHARE_LEN: usize = 1 + 4 + 4 + 16 * CHUNKS;

/// One share: the point `x` of the four chunk polynomials of a `threshold`-of-n
/// sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub threshold: u32,
    pub x: u32,
    pub y: [u128; CHUNKS],
}

impl Share {
    /// The fixed 73-byte encoding (see the module documentation).
    pub fn to_bytes(&self) -> [u8; SHARE_LEN] {
        let mut out = [0u8; SHARE_LEN];
        out[0] = SHARE_VERSION;
        out[1..5].copy_from_slice(&self.threshold.to_le_bytes());
        out[5..9].copy_from_slice(&self.x.to_le_bytes());
        for (c, y) in self.y.iter().enumerate() {
            out[9 + 16 * c..25 + 16 * c].copy_from_slice(&y.to_le_bytes());
        }
        out
    }

    /// Parses and validates an encoded share; malformed bytes are an
    /// [`CoreError::Integrity`] error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |why: String| Err(CoreError::Integrity(format!("malformed share: {why}")));
        if bytes.len() != SHARE_LEN {
            return bad(format!("{} bytes, expected {SHARE_LEN}", bytes.len()));
        }
        if bytes[0] != SHARE_VERSION {
            return bad(format!("unknown version {}", bytes[0]));
        }
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let (threshold, x) = (word(1), word(5));
        if threshold == 0 {
            return bad("threshold 0".into());
        }
        if x == 0 {
            return bad("x-coordinate 0 would be the secret itself".into());
        }
        let mut y = [0u128; CHUNKS];
        for (c, yc) in y.iter_mut().enumerate() {
            let start = 9 + 16 * c;
            *yc = u128::from_le_bytes(bytes[start..start + 16].try_into().expect("16 bytes"));
            if *yc >= P {
                return bad(format!("y-coordinate {c} is not below p"));
            }
        }
        Ok(Self { threshold, x, y })
    }
}

fn add(a: u128, b: u128) -> u128 {
    // a, b < 2^127, so the sum fits.
    let s = a + b;
    if s >= P {
        s - P
    } else {
        s
    }
}

fn sub(a: u128, b: u128) -> u128 {
    if a >= b {
        a - b
    } else {
        a + P - b
    }
}

fn mul(a: u128, b: u128) -> u128 {
    // Schoolbook 128x128 -> 256-bit product from 64-bit limbs, then the
    // Mersenne reduction 2^127 = 1 (mod p).
    let (a0, a1) = (a as u64 as u128, a >> 64);
    let (b0, b1) = (b as u64 as u128, b >> 64);
    let lo_lo = a0 * b0;
    let hi_hi = a1 * b1; // a1, b1 < 2^63
    let (mid, mid_carry) = (a0 * b1).overflowing_add(a1 * b0);
    let (lo, carry) = lo_lo.overflowing_add(mid << 64);
    let hi = hi_hi + (mid >> 64) + (u128::from(mid_carry) << 64) + u128::from(carry);
    // product = hi * 2^128 + lo, with hi < 2^126; 2^128 = 2 (mod p).
    let s = (hi << 1) + (lo >> 127) + (lo & P);
    let r = (s & P) + (s >> 127);
    if r >= P {
        r - P
    } else {
        r
    }
}

/// `a * x` for a 32-bit `x` (an x-coordinate): two 64-bit products instead of
/// four. `a * x` is below 2^159; with `a * x = hi * 2^128 + lo`, 2^128 = 2 (mod p).
fn mul_small(a: u128, x: u32) -> u128 {
    let x = u128::from(x);
    let p0 = (a as u64 as u128) * x; // below 2^96
    let p1 = (a >> 64) * x; // below 2^95
    let (lo, carry) = p0.overflowing_add(p1 << 64);
    let hi = (p1 >> 64) + u128::from(carry); // below 2^31 + 1
    let r = (lo & P) + (lo >> 127) + (hi << 1); // below 2^127 + 2^33: under 2p
    if r >= P {
        r - P
    } else {
        r
    }
}

/// The inverses of `values` (none zero), with one field inversion for all of
/// them (Montgomery's trick: three multiplications per value).
fn invert_all(values: &[u128]) -> Vec<u128> {
    let mut prefix = Vec::with_capacity(values.len());
    let mut acc = 1u128;
    for &v in values {
        prefix.push(acc);
        acc = mul(acc, v);
    }
    let mut inv_acc = inv(acc);
    let mut out = vec![0u128; values.len()];
    for i in (0..values.len()).rev() {
        out[i] = mul(inv_acc, prefix[i]);
        inv_acc = mul(inv_acc, values[i]);
    }
    out
}

fn pow(mut base: u128, mut exp: u128) -> u128 {
    let mut acc = 1u128;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    acc
}

fn inv(a: u128) -> u128 {
    debug_assert!(a != 0);
    pow(a, P - 2)
}

fn random_element<R: RngCore>(rng: &mut R) -> u128 {
    loop {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        let v = u128::from_le_bytes(b) & P;
        if v != P {
            return v;
        }
    }
}

/// Splits `secret` into one share per x-coordinate in `xs`, any `threshold` of
/// which reconstruct it and any `threshold - 1` of which reveal nothing.
pub fn split<R: RngCore>(
    secret: &[u8; SECRET_LEN],
    threshold: u32,
    xs: &[u32],
    rng: &mut R,
) -> Result<Vec<Share>> {
    if threshold == 0 || threshold as usize > xs.len() {
        return Err(CoreError::InvalidArgument(format!(
            "threshold must be in 1..={}, got {threshold}",
            xs.len()
        )));
    }
    check_xs(xs)?;
    // coeffs[j][c]: the degree-j coefficient of chunk c's polynomial, drawn
    // chunk by chunk as the module documentation says.
    let mut coeffs = vec![[0u128; CHUNKS]; threshold as usize];
    for c in 0..CHUNKS {
        let chunk = u64::from_le_bytes(secret[8 * c..8 * c + 8].try_into().expect("8 bytes"));
        coeffs[0][c] = u128::from(chunk);
        for row in coeffs.iter_mut().skip(1) {
            row[c] = random_element(rng);
        }
    }
    // Horner's rule for the four chunks side by side: four independent chains of
    // multiply-adds keep the multiplier busy where one chain waits on each result.
    let shares = xs
        .iter()
        .map(|&x| {
            let mut y = [0u128; CHUNKS];
            for row in coeffs.iter().rev() {
                for (acc, &k) in y.iter_mut().zip(row) {
                    *acc = add(mul_small(*acc, x), k);
                }
            }
            Share { threshold, x, y }
        })
        .collect();
    coeffs.zeroize();
    Ok(shares)
}

/// [`split`] at the x-coordinates `1..=n`.
pub fn split_n<R: RngCore>(
    secret: &[u8; SECRET_LEN],
    threshold: u32,
    n: u32,
    rng: &mut R,
) -> Result<Vec<Share>> {
    let xs: Vec<u32> = (1..=n).collect();
    split(secret, threshold, &xs, rng)
}

fn check_xs(xs: &[u32]) -> Result<()> {
    if xs.contains(&0) {
        return Err(CoreError::InvalidArgument(
            "x-coordinate 0 is reserved for the secret".into(),
        ));
    }
    let mut sorted = xs.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(CoreError::InvalidArgument(format!(
            "x-coordinate {} appears twice",
            w[0]
        )));
    }
    Ok(())
}

/// The values at each of `zs` of the polynomials (one per chunk) through the
/// points `(xs[i], ys[i])`, by the barycentric form of Lagrange interpolation:
/// with the weights `w_i = 1 / prod_{j != i} (x_i - x_j)` (computed once),
/// `f(z) = sum_i y_i * w_i * N(z) / (z - x_i)` where `N(z) = prod_j (z - x_j)`.
/// No `z` may equal an `x`. Cost: `t^2` multiplications for the weights, then
/// about `10 t` per point, and two field inversions in all; a point of the
/// textbook form costs `2 t^2`, which made checking 41 surplus shares of a
/// 103-of-204 sharing take 7 ms.
fn interpolate_at(xs: &[u128], ys: &[[u128; CHUNKS]], zs: &[u128]) -> Vec<[u128; CHUNKS]> {
    let t = xs.len();
    let mut den = vec![1u128; t];
    for (i, &xi) in xs.iter().enumerate() {
        for (j, &xj) in xs.iter().enumerate() {
            if i != j {
                den[i] = mul(den[i], sub(xi, xj));
            }
        }
    }
    let weights = invert_all(&den);
    let diffs: Vec<u128> = zs
        .iter()
        .flat_map(|&z| xs.iter().map(move |&x| sub(z, x)))
        .collect();
    let inverses = invert_all(&diffs);
    (0..zs.len())
        .map(|m| {
            let (d, inv_d) = (&diffs[m * t..(m + 1) * t], &inverses[m * t..(m + 1) * t]);
            let n = d.iter().fold(1u128, |acc, &v| mul(acc, v));
            let mut out = [0u128; CHUNKS];
            for i in 0..t {
                let l = mul(mul(weights[i], n), inv_d[i]);
                for (o, &y) in out.iter_mut().zip(&ys[i]) {
                    *o = add(*o, mul(y, l));
                }
            }
            out
        })
        .collect()
}

/// Reconstructs the secret from at least `t` shares of one sharing.
///
/// The first `t` shares are interpolated; any further shares are checked to
/// lie on the same polynomials, and a share that does not is an
/// [`CoreError::Integrity`] error, as are shares of different thresholds.
/// Fewer than `t` shares, or a repeated x-coordinate, is an
/// [`CoreError::InvalidArgument`] error.
pub fn combine(shares: &[Share]) -> Result<[u8; SECRET_LEN]> {
    let Some(first) = shares.first() else {
        return Err(CoreError::InvalidArgument("no shares given".into()));
    };
    let t = first.threshold as usize;
    if let Some(s) = shares.iter().find(|s| s.threshold != first.threshold) {
        return Err(CoreError::Integrity(format!(
            "shares of different sharings: thresholds {} and {}",
            first.threshold, s.threshold
        )));
    }
    if shares.len() < t {
        return Err(CoreError::InvalidArgument(format!(
            "{} shares given, {t} needed",
            shares.len()
        )));
    }
    let all_xs: Vec<u32> = shares.iter().map(|s| s.x).collect();
    check_xs(&all_xs)?;
    if shares.iter().flat_map(|s| s.y).any(|y| y >= P) {
        return Err(CoreError::Integrity("y-coordinate not below p".into()));
    }
    let (basis, extra) = shares.split_at(t);
    let xs: Vec<u128> = basis.iter().map(|s| u128::from(s.x)).collect();
    let mut ys: Vec<[u128; CHUNKS]> = basis.iter().map(|s| s.y).collect();
    // The secret at 0, then every surplus share's x: all distinct from the basis'
    // x-coordinates (checked above), so no difference is zero.
    let zs: Vec<u128> = std::iter::once(0)
        .chain(extra.iter().map(|s| u128::from(s.x)))
        .collect();
    let mut values = interpolate_at(&xs, &ys, &zs);
    for (s, value) in extra.iter().zip(&values[1..]) {
        if *value != s.y {
            return Err(CoreError::Integrity(format!(
                "share at x = {} is inconsistent with the others",
                s.x
            )));
        }
    }
    let mut chunks = values[0];
    let mut secret = [0u8; SECRET_LEN];
    let mut valid = true;
    for (c, &v) in chunks.iter().enumerate() {
        match u64::try_from(v) {
            Ok(v) => secret[8 * c..8 * c + 8].copy_from_slice(&v.to_le_bytes()),
            Err(_) => valid = false,
        }
    }
    // The shares' y-coordinates and the secret's chunks are wiped; the secret
    // itself goes to the caller.
    chunks.zeroize();
    values.zeroize();
    ys.zeroize();
    if !valid {
        secret.zeroize();
        return Err(CoreError::Integrity(
            "shares do not interpolate to a valid secret".into(),
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::unhex;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u8) -> ChaCha20Rng {
        ChaCha20Rng::from_seed([seed; 32])
    }

    fn secret(fill: u8) -> [u8; 32] {
        core::array::from_fn(|i| fill.wrapping_mul(31).wrapping_add(i as u8))
    }

    #[test]
    fn field_mul_matches_wide_reference() {
        // Compare with a slow shift-and-add reference on edge values.
        fn slow_mul(a: u128, b: u128) -> u128 {
            let mut acc = 0u128;
            let mut a = a % P;
            let mut b = b % P;
            while b > 0 {
                if b & 1 == 1 {
                    acc = add(acc, a);
                }
                a = add(a, a);
                b >>= 1;
            }
            acc
        }
        let edge = [
            0,
            1,
            2,
            P - 1,
            P - 2,
            1 << 64,
            (1 << 64) - 1,
            1 << 126,
            0x1234_5678_9abc_def0_0fed_cba9_8765_4321,
        ];
        for &a in &edge {
            for &b in &edge {
                assert_eq!(mul(a, b), slow_mul(a, b), "{a} * {b}");
            }
        }
        let mut r = rng(9);
        for _ in 0..1000 {
            let (a, b) = (random_element(&mut r), random_element(&mut r));
            assert_eq!(mul(a, b), slow_mul(a, b));
            if a != 0 {
                assert_eq!(mul(a, inv(a)), 1);
            }
            let x = r.next_u32();
            assert_eq!(mul_small(a, x), slow_mul(a, u128::from(x)), "{a} * {x}");
        }
        for &a in &edge {
            for x in [0, 1, 2, u32::MAX - 1, u32::MAX] {
                assert_eq!(mul_small(a, x), slow_mul(a, u128::from(x)), "{a} * {x}");
            }
        }
    }

    #[test]
    fn barycentric_values_equal_the_textbook_lagrange_form() {
        // Random points and polynomials, t up to 40, up to 30 evaluation points.
        fn textbook(xs: &[u128], ys: &[u128], z: u128) -> u128 {
            let mut total = 0;
            for (i, (&xi, &yi)) in xs.iter().zip(ys).enumerate() {
                let mut l = 1;
                for (j, &xj) in xs.iter().enumerate() {
                    if i != j {
                        l = mul(l, mul(sub(z, xj), inv(sub(xi, xj))));
                    }
                }
                total = add(total, mul(yi, l));
            }
            total
        }
        let mut r = rng(10);
        for t in [1usize, 2, 3, 13, 40] {
            let mut pool: Vec<u128> = Vec::new();
            while pool.len() < t + 30 {
                let x = u128::from(r.next_u32() | 1);
                if !pool.contains(&x) {
                    pool.push(x);
                }
            }
            let (xs, zs) = pool.split_at(t);
            let zs: Vec<u128> = std::iter::once(0).chain(zs.iter().copied()).collect();
            let ys: Vec<[u128; CHUNKS]> = (0..t)
                .map(|_| core::array::from_fn(|_| random_element(&mut r)))
                .collect();
            let got = interpolate_at(xs, &ys, &zs);
            for (&z, value) in zs.iter().zip(&got) {
                for c in 0..CHUNKS {
                    let column: Vec<u128> = ys.iter().map(|y| y[c]).collect();
                    assert_eq!(value[c], textbook(xs, &column, z), "t = {t}, z = {z}");
                }
            }
        }
    }

    #[test]
    fn a_large_sharing_with_many_surplus_shares_reconstructs_and_checks_each() {
        // 103 of 204, as a 30% dropout degree gives: all 150 survivors' shares in.
        let s = secret(12);
        let shares = split_n(&s, 103, 204, &mut rng(12)).unwrap();
        assert_eq!(combine(&shares[20..170]).unwrap(), s);
        // A tampered share among the first t changes the interpolated polynomial,
        // so the first surplus share disagrees; a tampered surplus share is named.
        for (bad, named) in [(120, 124), (169, 170)] {
            let mut tampered = shares[20..170].to_vec();
            tampered[bad - 20].y[3] = add(tampered[bad - 20].y[3], 1);
            match combine(&tampered) {
                Err(CoreError::Integrity(why)) => assert!(why.contains(&format!("x = {named}"))),
                other => panic!("tampered share {bad} not caught: {other:?}"),
            }
        }
    }

    #[test]
    fn shares_known_answer() {
        // tests/data/secagg/shamir_kat.json vector 1, computed by the reference
        // on Python integers + OpenSSL's ChaCha20 (tests/data/secagg/make_kat.py).
        let secret: [u8; 32] =
            unhex("9402cebc281424a70c96585a9676a4463ab5bd40b03c0f5f39002034f8ac28e2")
                .try_into()
                .unwrap();
        let seed: [u8; 32] =
            unhex("5d12491ec7f101c485f62dda7cec8d86bea3d6580b8ddea3c2bcfc20e3ecf130")
                .try_into()
                .unwrap();
        let shares = split_n(&secret, 2, 3, &mut ChaCha20Rng::from_seed(seed)).unwrap();
        let expected = [
            "0102000000010000004e94986c456d6edb18bafad102b4ed6ab6cf405c3034d3a46a28d0bd64233939bfb7da8d73d91bbb287cc73aa9d03112c1834921dffa296911fb8db40d9e0f0a",
            "010200000003000000c4b72dcc7e1f0344492ef075081cc9400b43116064af30613f7970392e6aab2bc9bc1428fa123573797456b0fb719536d18a9cfbac962c7732f1a91d29da2e1e",
        ];
        assert_eq!(shares[0].to_bytes().to_vec(), unhex(expected[0]));
        assert_eq!(shares[2].to_bytes().to_vec(), unhex(expected[1]));
        let parsed = [
            Share::from_bytes(&unhex(expected[1])).unwrap(),
            Share::from_bytes(&unhex(expected[0])).unwrap(),
        ];
        assert_eq!(combine(&parsed).unwrap(), secret);
    }

    #[test]
    fn any_t_shares_reconstruct() {
        let s = secret(1);
        let shares = split_n(&s, 3, 5, &mut rng(1)).unwrap();
        for a in 0..5 {
            for b in 0..5 {
                for c in 0..5 {
                    if a != b && b != c && a != c {
                        assert_eq!(combine(&[shares[a], shares[b], shares[c]]).unwrap(), s);
                    }
                }
            }
        }
        assert_eq!(
            combine(&shares).unwrap(),
            s,
            "surplus consistent shares are fine"
        );
    }

    #[test]
    fn fewer_than_t_shares_are_refused() {
        let shares = split_n(&secret(2), 4, 6, &mut rng(2)).unwrap();
        let err = combine(&shares[..3]).unwrap_err();
        assert!(matches!(err, CoreError::InvalidArgument(m) if m.contains("4 needed")));
        assert!(combine(&[]).is_err());
    }

    #[test]
    fn t_minus_one_shares_fit_any_secret() {
        // Perfect secrecy, concretely: for t = 2, one share plus a forged
        // share at another x interpolates to whatever secret the forger wants.
        let shares = split_n(&secret(3), 2, 3, &mut rng(3)).unwrap();
        let other = secret(4);
        // Line through (x1, y1) of the real sharing and (0, other).
        let x1 = u128::from(shares[0].x);
        let y = core::array::from_fn(|c| {
            let c0 = u128::from(u64::from_le_bytes(
                other[8 * c..8 * c + 8].try_into().unwrap(),
            ));
            let slope = mul(sub(shares[0].y[c], c0), inv(x1));
            add(c0, mul(slope, 2))
        });
        let forged = Share {
            threshold: 2,
            x: 2,
            y,
        };
        assert_eq!(combine(&[shares[0], forged]).unwrap(), other);
        assert_eq!(combine(&[shares[0], shares[1]]).unwrap(), secret(3));
    }

    #[test]
    fn duplicate_and_zero_x_are_refused() {
        let s = secret(5);
        assert!(split(&s, 2, &[1, 1, 2], &mut rng(5)).is_err());
        assert!(split(&s, 2, &[0, 1, 2], &mut rng(5)).is_err());
        assert!(split(&s, 0, &[1, 2], &mut rng(5)).is_err());
        assert!(split(&s, 3, &[1, 2], &mut rng(5)).is_err());
        let shares = split_n(&s, 2, 3, &mut rng(5)).unwrap();
        let err = combine(&[shares[0], shares[0]]).unwrap_err();
        assert!(matches!(err, CoreError::InvalidArgument(m) if m.contains("twice")));
    }

    #[test]
    fn tampered_or_mixed_shares_are_detected() {
        let s = secret(6);
        let mut shares = split_n(&s, 2, 4, &mut rng(6)).unwrap();
        shares[3].y[1] = add(shares[3].y[1], 1);
        assert!(matches!(combine(&shares), Err(CoreError::Integrity(_))));
        let other = split_n(&s, 3, 4, &mut rng(7)).unwrap();
        assert!(matches!(
            combine(&[shares[0], other[1], other[2]]),
            Err(CoreError::Integrity(_))
        ));
    }

    #[test]
    fn bytes_round_trip_and_malformed_bytes_are_refused() {
        let shares = split_n(&secret(7), 2, 3, &mut rng(8)).unwrap();
        let b = shares[1].to_bytes();
        assert_eq!(b.len(), SHARE_LEN);
        assert_eq!(&b[..9], &[1, 2, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(Share::from_bytes(&b).unwrap(), shares[1]);
        let malformed = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = b.to_vec();
            f(&mut v);
            matches!(Share::from_bytes(&v), Err(CoreError::Integrity(_)))
        };
        assert!(malformed(&|v| v.truncate(72)));
        assert!(malformed(&|v| v.push(0)));
        assert!(malformed(&|v| v[0] = 2));
        assert!(malformed(&|v| v[1..5].copy_from_slice(&[0; 4])));
        assert!(malformed(&|v| v[5..9].copy_from_slice(&[0; 4])));
        assert!(malformed(&|v| v[9..25].copy_from_slice(&[0xff; 16])));
    }

    #[test]
    fn threshold_one_and_full_threshold() {
        let s = secret(8);
        let one = split_n(&s, 1, 3, &mut rng(9)).unwrap();
        assert!(one.iter().all(|sh| combine(&[*sh]).unwrap() == s));
        let all = split_n(&s, 7, 7, &mut rng(10)).unwrap();
        assert_eq!(combine(&all).unwrap(), s);
        assert!(combine(&all[..6]).is_err());
    }

    #[test]
    fn seeded_split_is_reproducible() {
        let a = split_n(&secret(9), 3, 4, &mut rng(11)).unwrap();
        let b = split_n(&secret(9), 3, 4, &mut rng(11)).unwrap();
        assert_eq!(a, b);
        let c = split_n(&secret(9), 3, 4, &mut rng(12)).unwrap();
        assert_ne!(a, c);
    }
}
