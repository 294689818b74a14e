//! Exact sampling from the discrete Gaussian N_Z(0, sigma^2).
//!
//! The algorithms are those of Canonne, Kamath and Steinke, "The Discrete
//! Gaussian for Differential Privacy" (NeurIPS 2020):
//!
//! * Algorithm 1, Bernoulli(exp(-gamma)) for rational gamma, built from
//!   Bernoulli draws with rational parameters only;
//! * Algorithm 2, the discrete Laplace with integer scale t, by rejection;
//! * Algorithm 3, the discrete Gaussian, by rejection from the discrete Laplace
//!   with t = floor(sigma) + 1 (t = sigma when sigma is an integer, which makes
//!   gamma a small fraction; the algorithm is exact for every positive t).
//!
//! No floating-point number ever decides a coin: every Bernoulli draw compares
//! integers, with ties between a random word and a threshold resolved by drawing
//! further words, so the output follows the exact distribution and not one that
//! differs from it in its low-order bits (Mironov, CCS 2012). Floating point is
//! used only to *guess* a quotient that is then checked with integer arithmetic.
//!
//! # Which sigma
//! `sigma` arrives as an `f64` and is taken at its exact binary value
//! `m * 2^e`, so `sigma^2` is the rational `m^2 * 4^e`. An integer-valued sigma up
//! to 2^31 takes a fast path whose arithmetic fits in `u128`; any other sigma goes
//! through the same algorithms on 512-bit integers ([`Wide`]).
//!
//! # Randomness
//! ChaCha20 (`rand_chacha`). The 256-bit key is SHA-256 of a domain-separation
//! label and a 32-byte seed, which comes from the OS (`getrandom`) unless the
//! caller passes one for a reproducible run. The output is cut into chunks of
//! [`CHUNK_LEN`] samples and chunk `i` draws from ChaCha20 stream `i`, so a seeded
//! result does not depend on how many threads filled it, and a longer seeded
//! array extends a shorter one.
//!
//! # Range
//! The output is an `i64`, so a sampler must stop somewhere: samples with
//! `|x| > 2^62` are rejected like any other proposal, which makes the output
//! exactly the discrete Gaussian conditioned on `|x| <= 2^62`. For sigma up to
//! [`MAX_SIGMA`] = 2^40 the conditioning event has probability below
//! `exp(-2^43)`.

use std::cmp::Ordering;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};

/// Smallest sigma accepted. Below it a sample is nonzero with probability under
/// `2 * exp(-2^31)`, and the exact arithmetic would need ever wider integers.
pub const MIN_SIGMA: f64 = 1.0 / 65536.0;
/// Largest sigma accepted (2^40, about 1.1e12).
pub const MAX_SIGMA: f64 = 1_099_511_627_776.0;
/// Samples per ChaCha20 stream: the unit of parallel work and of determinism.
pub const CHUNK_LEN: usize = 1 << 14;
/// Largest magnitude a sample can take (see the module documentation).
pub const X_MAX: u64 = 1 << 62;

/// Largest sigma handled by the `u128` fast path: `2 * sigma^2 < 2^63`.
const INT_PATH_MAX: u64 = 1 << 31;
/// Label hashed with the seed, so a seed used elsewhere (e.g. for masks) never
/// yields the same ChaCha20 key as the noise.
const KEY_LABEL: &[u8] = b"gridsim/dgauss/v1\0";

// ---------------------------------------------------------------------------
// Random bits
// ---------------------------------------------------------------------------

/// ChaCha20 output consumed as 32-bit words, 64-bit words and single bits.
pub struct Coins {
    rng: ChaCha20Rng,
    bits: u64,
    nbits: u32,
}

impl Coins {
    /// The stream `stream` of the ChaCha20 key `key`.
    pub fn new(key: &[u8; 32], stream: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(*key);
        rng.set_stream(stream);
        Coins {
            rng,
            bits: 0,
            nbits: 0,
        }
    }

    #[inline(always)]
    fn word32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    #[inline(always)]
    fn word64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    #[inline(always)]
    fn bit(&mut self) -> bool {
        if self.nbits == 0 {
            self.bits = self.word64();
            self.nbits = 64;
        }
        let b = self.bits & 1 == 1;
        self.bits >>= 1;
        self.nbits -= 1;
        b
    }

    /// Uniform on `[0, n)`, `n >= 1` (Lemire's multiply-and-reject).
    #[inline(always)]
    fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n >= 1);
        let mut m = u128::from(self.word64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.word64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }
}

// ---------------------------------------------------------------------------
// Bernoulli draws with rational parameters
// ---------------------------------------------------------------------------
//
// All of them draw a uniform real V = 0.w1 w2 w3 ... (32-bit digits) lazily and
// answer V < a/d. With the first digit w: if (w+1)*d <= a*2^32 then V < a/d for
// every continuation; if w*d >= a*2^32 then V >= a/d; otherwise (probability
// below 2^-32) the question becomes "0.w2 w3 ... < (a*2^32 - w*d)/d", the same
// question with a smaller numerator.

/// True with probability `a / d`, `0 <= a <= d < 2^32`, `d > 0`.
#[inline(always)]
fn bern_ratio_small(c: &mut Coins, mut a: u64, d: u64) -> bool {
    debug_assert!(a <= d && d > 0 && d < 1 << 32);
    loop {
        let lhs = u64::from(c.word32()) * d;
        let rhs = a << 32;
        if lhs + d <= rhs {
            return true;
        }
        if lhs >= rhs {
            return false;
        }
        a = rhs - lhs;
    }
}

/// True with probability `a / d`, `0 <= a <= d < 2^96`, `d > 0`.
#[inline(always)]
fn bern_ratio_u128(c: &mut Coins, mut a: u128, d: u128) -> bool {
    debug_assert!(a <= d && d > 0 && d < 1 << 96);
    loop {
        let lhs = u128::from(c.word32()) * d;
        let rhs = a << 32;
        if lhs + d <= rhs {
            return true;
        }
        if lhs >= rhs {
            return false;
        }
        a = rhs - lhs;
    }
}

/// True with probability `a / d` for wide `0 <= a <= d < 2^470`, `d > 0`.
fn bern_ratio_wide(c: &mut Coins, mut a: Wide, d: &Wide) -> bool {
    loop {
        let w = u64::from(c.word32());
        let lhs = d.mul_u64(w).expect("d < 2^470");
        let rhs = a.shl32().expect("a < 2^470");
        let hi = lhs.add(d).expect("d < 2^470");
        if hi.cmp(&rhs) != Ordering::Greater {
            return true;
        }
        if lhs.cmp(&rhs) != Ordering::Less {
            return false;
        }
        a = rhs.sub(&lhs);
    }
}

/// True with probability `a / (b * k)`, `a <= b`, `b > 0`, `k >= 1`.
#[inline(always)]
fn bern_ratio_scaled(c: &mut Coins, a: u128, b: u128, k: u64) -> bool {
    match b.checked_mul(u128::from(k)) {
        Some(d) if d < 1 << 32 => bern_ratio_small(c, a as u64, d as u64),
        Some(d) if d < 1 << 96 => bern_ratio_u128(c, a, d),
        // Only reachable after ~2^30 consecutive successes of Algorithm 1.
        _ => bern_ratio_wide(
            c,
            Wide::from_u128(a),
            &Wide::from_u128(b).mul_u64(k).expect("fits in 192 bits"),
        ),
    }
}

/// Bernoulli(exp(-1)): Algorithm 1 with gamma = 1. Its first draw,
/// Bernoulli(1/1), always succeeds; the second is one fair bit.
#[inline(always)]
fn bern_exp_minus_one(c: &mut Coins) -> bool {
    if !c.bit() {
        return false; // K = 2
    }
    let mut k: u64 = 3;
    loop {
        if !bern_ratio_scaled(c, 1, 1, k) {
            return k & 1 == 1;
        }
        k += 1;
    }
}

/// Bernoulli(exp(-a/b)) for `0 <= a <= b`, `b > 0` (Algorithm 1): draw
/// A_k ~ Bernoulli(gamma/k) for k = 1, 2, ... until one fails; output 1 iff the
/// failing k is odd.
#[inline(always)]
fn bern_exp_frac(c: &mut Coins, a: u128, b: u128) -> bool {
    if a == 0 {
        return true;
    }
    let mut k: u64 = 1;
    loop {
        if !bern_ratio_scaled(c, a, b, k) {
            return k & 1 == 1;
        }
        k += 1;
    }
}

/// Bernoulli(exp(-num/den)) for any `num >= 0`, `den > 0`: floor(gamma) draws of
/// Bernoulli(exp(-1)), then Algorithm 1 on the fractional part.
#[inline(always)]
fn bern_exp(c: &mut Coins, num: u128, den: u128) -> bool {
    if num <= den {
        return bern_exp_frac(c, num, den);
    }
    let q = num / den;
    let r = num - q * den;
    let mut i: u128 = 0;
    while i < q {
        if !bern_exp_minus_one(c) {
            return false;
        }
        i += 1;
    }
    bern_exp_frac(c, r, den)
}

/// Bernoulli(exp(-a/b)), `0 <= a <= b`, for wide integers (Algorithm 1).
fn bern_exp_frac_wide(c: &mut Coins, a: &Wide, b: &Wide) -> bool {
    if a.is_zero() {
        return true;
    }
    let mut k: u64 = 1;
    loop {
        let d = b.mul_u64(k).expect("b < 2^400 and k < 2^64");
        if !bern_ratio_wide(c, *a, &d) {
            return k & 1 == 1;
        }
        k += 1;
    }
}

/// Bernoulli(exp(-num/den)) for wide integers. The integer part of gamma is
/// taken in steps `q` that are checked lower bounds of the quotient (a
/// floating-point guess, verified with integer arithmetic), so no wide division
/// is needed.
fn bern_exp_wide(c: &mut Coins, mut num: Wide, den: &Wide) -> bool {
    loop {
        if num.cmp(den) != Ordering::Greater {
            return bern_exp_frac_wide(c, &num, den);
        }
        let q = num.quotient_lower_bound(den);
        let mut i: u64 = 0;
        while i < q {
            if !bern_exp_minus_one(c) {
                return false;
            }
            i += 1;
        }
        num = num.sub(&den.mul_u64(q).expect("q * den <= num"));
    }
}

/// Algorithm 2: a sample of the discrete Laplace with scale `t >= 1`
/// (P(x) proportional to exp(-|x|/t)), as (magnitude, negative). Magnitudes
/// beyond `u64` saturate; the caller rejects anything above [`X_MAX`].
#[inline(always)]
fn discrete_laplace(c: &mut Coins, t: u64) -> (u64, bool) {
    loop {
        let u = if t == 1 { 0 } else { c.below(t) };
        if !bern_exp_frac(c, u128::from(u), u128::from(t)) {
            continue;
        }
        let mut v: u64 = 0;
        while bern_exp_minus_one(c) {
            v = v.saturating_add(1);
        }
        let x = t.saturating_mul(v).saturating_add(u);
        let negative = c.bit();
        if negative && x == 0 {
            continue;
        }
        return (x, negative);
    }
}

#[inline(always)]
fn signed(x: u64, negative: bool) -> i64 {
    debug_assert!(x <= X_MAX);
    let x = x as i64;
    if negative {
        -x
    } else {
        x
    }
}

// ---------------------------------------------------------------------------
// The sampler
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Params {
    /// sigma is an integer `s <= 2^31`; t = s and gamma = (|y| - s)^2 / (2 s^2).
    Int { s: u64, den: u128 },
    /// sigma^2 = n / d with d a power of four; t = floor(sigma) + 1 and
    /// gamma = (|y| d t - n)^2 / (2 n d t^2).
    General {
        t: u64,
        n: Wide,
        dt: Wide,
        den: Wide,
    },
}

/// The discrete Gaussian N_Z(0, sigma^2) for one sigma.
#[derive(Clone, Debug)]
pub struct DiscreteGaussian {
    sigma: f64,
    params: Params,
}

impl DiscreteGaussian {
    /// Checks sigma and precomputes the exact constants of Algorithm 3.
    pub fn new(sigma: f64) -> Result<Self> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(CoreError::InvalidArgument(format!(
                "sigma must be a positive finite number, got {sigma}"
            )));
        }
        if !(MIN_SIGMA..=MAX_SIGMA).contains(&sigma) {
            return Err(CoreError::InvalidArgument(format!(
                "sigma must lie in [2^-16, 2^40], got {sigma}"
            )));
        }
        // sigma = m * 2^exp exactly, m odd (sigma is a normal number here).
        let bits = sigma.to_bits();
        let biased = ((bits >> 52) & 0x7ff) as i32;
        let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
        let tz = mantissa.trailing_zeros();
        let m = mantissa >> tz;
        let exp = biased - 1075 + tz as i32;

        let params = if exp >= 0 {
            let s = m << exp; // < 2^41 by the range check
            if s <= INT_PATH_MAX {
                Params::Int {
                    s,
                    den: 2 * u128::from(s) * u128::from(s),
                }
            } else {
                let n = Wide::from_u128(u128::from(s) * u128::from(s));
                Self::general(s + 1, n, Wide::from_u128(1))
            }
        } else {
            let k = exp.unsigned_abs(); // sigma = m / 2^k, k <= 68
            let floor = if k >= 64 { 0 } else { m >> k };
            let n = Wide::from_u128(u128::from(m) * u128::from(m));
            let d = Wide::pow2(2 * k);
            Self::general(floor + 1, n, d)
        };
        Ok(DiscreteGaussian { sigma, params })
    }

    fn general(t: u64, n: Wide, d: Wide) -> Params {
        let dt = d.mul_u64(t).expect("d * t < 2^177");
        let den = n
            .mul(&dt)
            .and_then(|x| x.mul_u64(t))
            .and_then(|x| x.mul_u64(2))
            .expect("2 n d t^2 < 2^330");
        Params::General { t, n, dt, den }
    }

    /// The sigma this sampler was built for.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Whether this sigma takes the `u128` fast path.
    pub fn is_integer_path(&self) -> bool {
        matches!(self.params, Params::Int { .. })
    }

    /// One exact sample (Algorithm 3).
    pub fn sample(&self, c: &mut Coins) -> i64 {
        match &self.params {
            Params::Int { s, den } => sample_int(c, *s, *den),
            Params::General { t, n, dt, den } => sample_general(c, *t, n, dt, den),
        }
    }

    /// Fills `out` with independent samples from ChaCha20 keyed by `seed`.
    /// `threads` = 0 uses rayon's global pool (all cores), 1 runs on the calling
    /// thread, n > 1 uses a pool of n threads. The result depends only on
    /// `seed` and `out.len()`, never on `threads`.
    pub fn fill(&self, out: &mut [i64], seed: &[u8; 32], threads: usize) -> Result<()> {
        let key = derive_key(seed);
        let fill_chunk = |(i, chunk): (usize, &mut [i64])| {
            let mut c = Coins::new(&key, i as u64);
            match &self.params {
                Params::Int { s, den } => {
                    for x in chunk {
                        *x = sample_int(&mut c, *s, *den);
                    }
                }
                Params::General { t, n, dt, den } => {
                    for x in chunk {
                        *x = sample_general(&mut c, *t, n, dt, den);
                    }
                }
            }
        };
        match threads {
            1 => out.chunks_mut(CHUNK_LEN).enumerate().for_each(fill_chunk),
            0 => out
                .par_chunks_mut(CHUNK_LEN)
                .enumerate()
                .for_each(fill_chunk),
            n => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| {
                        CoreError::InvalidArgument(format!("cannot start {n} threads: {e}"))
                    })?;
                pool.install(|| {
                    out.par_chunks_mut(CHUNK_LEN)
                        .enumerate()
                        .for_each(fill_chunk)
                });
            }
        }
        Ok(())
    }
}

#[inline(always)]
fn sample_int(c: &mut Coins, s: u64, den: u128) -> i64 {
    loop {
        let (x, negative) = discrete_laplace(c, s);
        if x > X_MAX {
            continue;
        }
        let diff = u128::from(x.abs_diff(s));
        if bern_exp(c, diff * diff, den) {
            return signed(x, negative);
        }
    }
}

fn sample_general(c: &mut Coins, t: u64, n: &Wide, dt: &Wide, den: &Wide) -> i64 {
    loop {
        let (x, negative) = discrete_laplace(c, t);
        if x > X_MAX {
            continue;
        }
        let a = dt.mul_u64(x).expect("x d t < 2^240");
        let diff = match a.cmp(n) {
            Ordering::Less => n.sub(&a),
            _ => a.sub(n),
        };
        let num = diff.mul(&diff).expect("(x d t - n)^2 < 2^480");
        if bern_exp_wide(c, num, den) {
            return signed(x, negative);
        }
    }
}

/// The ChaCha20 key for a seed: SHA-256(label || seed).
fn derive_key(seed: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(KEY_LABEL);
    h.update(seed);
    h.finalize().into()
}

/// 32 bytes from the operating system's CSPRNG.
pub fn os_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| CoreError::Integrity(format!("the OS random source failed: {e}")))?;
    Ok(seed)
}

/// Fills `out` with exact samples of N_Z(0, sigma^2); `seed` = None draws a
/// fresh seed from the OS. See [`DiscreteGaussian::fill`] for `threads`.
pub fn sample_into(
    out: &mut [i64],
    sigma: f64,
    seed: Option<&[u8; 32]>,
    threads: usize,
) -> Result<()> {
    let sampler = DiscreteGaussian::new(sigma)?;
    let seed = match seed {
        Some(s) => *s,
        None => os_seed()?,
    };
    sampler.fill(out, &seed, threads)
}

// ---------------------------------------------------------------------------
// 512-bit unsigned integers, just what Algorithm 3 needs for a general sigma
// ---------------------------------------------------------------------------

const LIMBS: usize = 8;

/// An unsigned 512-bit integer, little-endian 64-bit limbs. Operations that
/// could overflow return `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wide([u64; LIMBS]);

impl Wide {
    pub const ZERO: Wide = Wide([0; LIMBS]);

    pub fn from_u128(x: u128) -> Wide {
        let mut w = Wide::ZERO;
        w.0[0] = x as u64;
        w.0[1] = (x >> 64) as u64;
        w
    }

    /// 2^k, `k < 512`.
    pub fn pow2(k: u32) -> Wide {
        let mut w = Wide::ZERO;
        w.0[(k / 64) as usize] = 1 << (k % 64);
        w
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&l| l == 0)
    }

    pub fn cmp(&self, other: &Wide) -> Ordering {
        self.0.iter().rev().cmp(other.0.iter().rev())
    }

    pub fn add(&self, other: &Wide) -> Option<Wide> {
        let mut r = Wide::ZERO;
        let mut carry = false;
        for i in 0..LIMBS {
            let (s1, c1) = self.0[i].overflowing_add(other.0[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            r.0[i] = s2;
            carry = c1 || c2;
        }
        (!carry).then_some(r)
    }

    /// `self - other`, `self >= other`.
    pub fn sub(&self, other: &Wide) -> Wide {
        let mut r = Wide::ZERO;
        let mut borrow = false;
        for i in 0..LIMBS {
            let (d1, b1) = self.0[i].overflowing_sub(other.0[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            r.0[i] = d2;
            borrow = b1 || b2;
        }
        debug_assert!(!borrow, "Wide::sub underflow");
        r
    }

    pub fn mul_u64(&self, m: u64) -> Option<Wide> {
        let mut r = Wide::ZERO;
        let mut carry: u64 = 0;
        for i in 0..LIMBS {
            let p = u128::from(self.0[i]) * u128::from(m) + u128::from(carry);
            r.0[i] = p as u64;
            carry = (p >> 64) as u64;
        }
        (carry == 0).then_some(r)
    }

    pub fn mul(&self, other: &Wide) -> Option<Wide> {
        let mut r = [0u64; 2 * LIMBS];
        for i in 0..LIMBS {
            if self.0[i] == 0 {
                continue;
            }
            let mut carry: u64 = 0;
            for j in 0..LIMBS {
                let p = u128::from(self.0[i]) * u128::from(other.0[j])
                    + u128::from(r[i + j])
                    + u128::from(carry);
                r[i + j] = p as u64;
                carry = (p >> 64) as u64;
            }
            r[i + LIMBS] = carry;
        }
        if r[LIMBS..].iter().any(|&l| l != 0) {
            return None;
        }
        let mut w = Wide::ZERO;
        w.0.copy_from_slice(&r[..LIMBS]);
        Some(w)
    }

    /// `self * 2^32`.
    pub fn shl32(&self) -> Option<Wide> {
        if self.0[LIMBS - 1] >> 32 != 0 {
            return None;
        }
        let mut r = Wide::ZERO;
        r.0[0] = self.0[0] << 32;
        for i in 1..LIMBS {
            r.0[i] = (self.0[i] << 32) | (self.0[i - 1] >> 32);
        }
        Some(r)
    }

    /// An approximation within a relative 2^-63.
    fn to_f64(self) -> f64 {
        let Some(top) = (0..LIMBS).rev().find(|&i| self.0[i] != 0) else {
            return 0.0;
        };
        let hi = self.0[top] as f64;
        let lo = if top > 0 { self.0[top - 1] as f64 } else { 0.0 };
        let scale = 2f64.powi(64 * top as i32);
        (hi + lo / 18_446_744_073_709_551_616.0) * scale
    }

    /// A `q >= 1` with `q * den <= self`, equal to `floor(self / den)` when the
    /// quotient is below about 2^50; requires `self > den > 0`. A floating-point
    /// guess, checked and corrected with integer arithmetic.
    fn quotient_lower_bound(&self, den: &Wide) -> u64 {
        let fits = |q: u64| matches!(den.mul_u64(q), Some(p) if p.cmp(self) != Ordering::Greater);
        // Saturates for huge quotients; any checked lower bound will do there.
        let mut q = (self.to_f64() / den.to_f64()).clamp(1.0, 1e18) as u64;
        for _ in 0..2 {
            if q > 1 && !fits(q) {
                q -= 1;
            }
        }
        while q > 1 && !fits(q) {
            q /= 2;
        }
        for _ in 0..2 {
            if fits(q + 1) {
                q += 1;
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact pmf of N_Z(0, sigma^2) on [-r, r] (mass outside < 1e-30 for the r used).
    fn pmf(sigma: f64, r: i64) -> Vec<f64> {
        let w: Vec<f64> = (-r..=r)
            .map(|x| (-(x as f64).powi(2) / (2.0 * sigma * sigma)).exp())
            .collect();
        let z: f64 = w.iter().sum();
        w.into_iter().map(|p| p / z).collect()
    }

    fn draw(sigma: f64, n: usize, seed: u8) -> Vec<i64> {
        let mut out = vec![0i64; n];
        DiscreteGaussian::new(sigma)
            .unwrap()
            .fill(&mut out, &[seed; 32], 0)
            .unwrap();
        out
    }

    /// Mean and variance of the samples against the exact ones. With n samples
    /// the mean's standard error is sd/sqrt(n) and the variance's is about
    /// sd^2 * sqrt(2/n); the bounds are 5 standard errors (false alarm < 1e-6
    /// each, Gaussian approximation).
    fn check_moments(sigma: f64, n: usize, seed: u8) {
        let r = (40.0 * sigma).ceil() as i64 + 2;
        let p = pmf(sigma, r);
        let var: f64 = (-r..=r).zip(&p).map(|(x, q)| (x * x) as f64 * q).sum();
        let s = draw(sigma, n, seed);
        let nf = n as f64;
        let mean = s.iter().map(|&x| x as f64).sum::<f64>() / nf;
        let m2 = s.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / nf;
        let m4: f64 = (-r..=r).zip(&p).map(|(x, q)| (x as f64).powi(4) * q).sum();
        let se_mean = (var / nf).sqrt();
        let se_m2 = ((m4 - var * var) / nf).sqrt();
        assert!(mean.abs() < 5.0 * se_mean, "sigma {sigma}: mean {mean}");
        assert!(
            (m2 - var).abs() < 5.0 * se_m2,
            "sigma {sigma}: E[x^2] {m2}, exact {var}"
        );
    }

    #[test]
    fn moments_match_exact_distribution() {
        for (i, sigma) in [0.3, 1.0, 2.5, 3.7, 17.0, 1000.0, 12345.678]
            .into_iter()
            .enumerate()
        {
            check_moments(sigma, 200_000, i as u8 + 1);
        }
    }

    /// The mass beyond 2 sigma and 3 sigma, against the exact tails; binomial
    /// bound at 5 standard errors (false alarm < 1e-6 each).
    #[test]
    fn tails_match_exact_distribution() {
        for (i, sigma) in [1.0f64, 3.7, 50.0, 999.5].into_iter().enumerate() {
            let r = (40.0 * sigma).ceil() as i64 + 2;
            let p = pmf(sigma, r);
            let n = 200_000;
            let s = draw(sigma, n, 40 + i as u8);
            for k in [2.0, 3.0] {
                let cut = (k * sigma).floor() as i64;
                let exact: f64 = (-r..=r)
                    .zip(&p)
                    .filter(|(x, _)| x.abs() > cut)
                    .map(|(_, q)| q)
                    .sum();
                let seen = s.iter().filter(|x| x.abs() > cut).count() as f64 / n as f64;
                let se = (exact * (1.0 - exact) / n as f64).sqrt();
                assert!(
                    (seen - exact).abs() < 5.0 * se,
                    "sigma {sigma}, |x| > {cut}: {seen} vs {exact}"
                );
            }
        }
    }

    /// The integer path and the general path sample the same distribution: the
    /// frequencies of small values agree with the pmf for sigma = 4 (integer
    /// path) and sigma = 4 * (1 + 2^-40) (general path).
    #[test]
    fn integer_and_general_paths_agree() {
        let int = DiscreteGaussian::new(4.0).unwrap();
        let gen = DiscreteGaussian::new(4.0 * (1.0 + 2f64.powi(-40))).unwrap();
        assert!(int.is_integer_path());
        assert!(!gen.is_integer_path());
        assert!(!DiscreteGaussian::new(2f64.powi(33))
            .unwrap()
            .is_integer_path());
        let p = pmf(4.0, 200);
        let n = 200_000;
        for (k, sampler) in [int, gen].into_iter().enumerate() {
            let mut s = vec![0i64; n];
            sampler.fill(&mut s, &[70 + k as u8; 32], 0).unwrap();
            for x in -3i64..=3 {
                let exact = p[(x + 200) as usize];
                let seen = s.iter().filter(|&&y| y == x).count() as f64 / n as f64;
                let se = (exact * (1.0 - exact) / n as f64).sqrt();
                assert!(
                    (seen - exact).abs() < 5.0 * se,
                    "path {k}, x = {x}: {seen} vs {exact}"
                );
            }
        }
    }

    /// Bernoulli(exp(-gamma)) for rational gamma below and above 1, on both
    /// arithmetic paths; 5 standard errors (false alarm < 1e-6 each).
    #[test]
    fn bernoulli_exp_frequencies() {
        let mut c = Coins::new(&[9; 32], 0);
        let n = 200_000;
        for (num, den) in [(0u128, 1u128), (1, 3), (1, 1), (7, 2), (22, 7), (5, 1)] {
            let exact = (-(num as f64) / den as f64).exp();
            let se = (exact * (1.0 - exact) / n as f64).sqrt().max(1e-9);
            let hits = (0..n).filter(|_| bern_exp(&mut c, num, den)).count() as f64 / n as f64;
            assert!(
                (hits - exact).abs() <= 5.0 * se,
                "u128 {num}/{den}: {hits} vs {exact}"
            );
            let (wn, wd) = (
                Wide::from_u128(num).mul(&Wide::pow2(200)).unwrap(),
                Wide::from_u128(den).mul(&Wide::pow2(200)).unwrap(),
            );
            let hits = (0..n).filter(|_| bern_exp_wide(&mut c, wn, &wd)).count() as f64 / n as f64;
            assert!(
                (hits - exact).abs() <= 5.0 * se,
                "wide {num}/{den}: {hits} vs {exact}"
            );
        }
    }

    #[test]
    fn seeded_output_is_reproducible_and_thread_independent() {
        let sampler = DiscreteGaussian::new(3.7).unwrap();
        let n = 3 * CHUNK_LEN + 123;
        let mut a = vec![0i64; n];
        let mut b = vec![0i64; n];
        let mut c = vec![0i64; n];
        sampler.fill(&mut a, &[1; 32], 0).unwrap();
        sampler.fill(&mut b, &[1; 32], 1).unwrap();
        sampler.fill(&mut c, &[1; 32], 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        // A longer array with the same seed extends the shorter one.
        let mut longer = vec![0i64; n + 2 * CHUNK_LEN];
        sampler.fill(&mut longer, &[1; 32], 0).unwrap();
        assert_eq!(&longer[..n], &a[..]);
        // Another seed gives another array.
        sampler.fill(&mut b, &[2; 32], 0).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn unseeded_runs_differ() {
        let mut a = vec![0i64; 1000];
        let mut b = vec![0i64; 1000];
        sample_into(&mut a, 100.0, None, 0).unwrap();
        sample_into(&mut b, 100.0, None, 0).unwrap();
        assert_ne!(a, b);
    }

    /// Chunks use distinct ChaCha20 streams: no chunk repeats another, and the
    /// correlation of neighbouring chunks is that of independent samples
    /// (|r| < 5 / sqrt(n), false alarm < 1e-6 per pair).
    #[test]
    fn chunks_are_independent() {
        let s = draw(10.0, 8 * CHUNK_LEN, 5);
        let chunks: Vec<&[i64]> = s.chunks(CHUNK_LEN).collect();
        for i in 0..chunks.len() {
            for j in i + 1..chunks.len() {
                assert_ne!(chunks[i], chunks[j], "chunks {i} and {j} are equal");
            }
        }
        for pair in chunks.windows(2) {
            let (x, y) = (pair[0], pair[1]);
            let n = x.len() as f64;
            let mean = |v: &[i64]| v.iter().map(|&a| a as f64).sum::<f64>() / n;
            let (mx, my) = (mean(x), mean(y));
            let cov: f64 = x
                .iter()
                .zip(y)
                .map(|(&a, &b)| (a as f64 - mx) * (b as f64 - my))
                .sum();
            let vx: f64 = x.iter().map(|&a| (a as f64 - mx).powi(2)).sum();
            let vy: f64 = y.iter().map(|&b| (b as f64 - my).powi(2)).sum();
            let r = cov / (vx * vy).sqrt();
            assert!(
                r.abs() < 5.0 / n.sqrt(),
                "neighbouring chunks correlate: r = {r}"
            );
        }
    }

    #[test]
    fn rejects_invalid_sigma() {
        for sigma in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e-300,
            1e13,
            f64::MAX,
        ] {
            assert!(
                matches!(
                    DiscreteGaussian::new(sigma),
                    Err(CoreError::InvalidArgument(_))
                ),
                "sigma {sigma} accepted"
            );
        }
        assert!(DiscreteGaussian::new(MIN_SIGMA).is_ok());
        assert!(DiscreteGaussian::new(MAX_SIGMA).is_ok());
    }

    /// The extremes of the accepted range run without overflow and give
    /// sensible values.
    #[test]
    fn extreme_sigmas_sample() {
        let tiny = draw(MIN_SIGMA, 1000, 3);
        assert!(tiny.iter().all(|&x| x == 0));
        let huge = draw(MAX_SIGMA, 1000, 4);
        let sd = (huge.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / 1000.0).sqrt();
        assert!((sd / MAX_SIGMA - 1.0).abs() < 0.2, "sd {sd}");
        let odd = draw(MAX_SIGMA * (1.0 - f64::EPSILON), 1000, 6);
        assert!(odd.iter().any(|&x| x != 0));
    }

    #[test]
    fn wide_arithmetic_matches_u128() {
        let vals = [
            0u128,
            1,
            3,
            u64::MAX as u128,
            (1 << 100) + 12345,
            u128::MAX >> 1,
        ];
        for &a in &vals {
            for &b in &vals {
                let (wa, wb) = (Wide::from_u128(a), Wide::from_u128(b));
                assert_eq!(wa.cmp(&wb), a.cmp(&b));
                if let Some(s) = a.checked_add(b) {
                    assert_eq!(wa.add(&wb), Some(Wide::from_u128(s)));
                }
                if a >= b {
                    assert_eq!(wa.sub(&wb), Wide::from_u128(a - b));
                }
                if let Some(p) = a.checked_mul(b) {
                    assert_eq!(wa.mul(&wb), Some(Wide::from_u128(p)));
                }
            }
        }
        let big = Wide::pow2(300);
        assert_eq!(big.mul(&big), None);
        assert_eq!(Wide::pow2(480).shl32(), None);
        assert_eq!(Wide::pow2(479).shl32(), Some(Wide::pow2(511)));
        assert_eq!(Wide::pow2(100).shl32(), Some(Wide::pow2(132)));
        assert_eq!(Wide::pow2(500).mul_u64(1 << 20), None);
        let q = Wide::pow2(300)
            .mul_u64(1_000_003)
            .unwrap()
            .quotient_lower_bound(&Wide::pow2(300));
        assert_eq!(q, 1_000_003);
    }

    /// The exact decomposition of sigma: 3.7 is not 37/10 but the double
    /// nearest to it, whose square has a power-of-four denominator.
    #[test]
    fn sigma_decomposition() {
        let d = DiscreteGaussian::new(0.5).unwrap();
        match d.params {
            Params::General { t, n, dt, den } => {
                assert_eq!(t, 1);
                assert_eq!(n, Wide::from_u128(1));
                assert_eq!(dt, Wide::from_u128(4));
                assert_eq!(den, Wide::from_u128(8));
            }
            Params::Int { .. } => panic!("0.5 is not an integer"),
        }
        match DiscreteGaussian::new(12.0).unwrap().params {
            Params::Int { s, den } => assert_eq!((s, den), (12, 288)),
            Params::General { .. } => panic!("12 is an integer"),
        }
    }

    /// Throughput, for profiling only: `cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        for sigma in [1.0, 10.0, 1000.0, 3.7, 1000.5] {
            let n = 4_000_000;
            let mut out = vec![0i64; n];
            let sampler = DiscreteGaussian::new(sigma).unwrap();
            let start = std::time::Instant::now();
            sampler.fill(&mut out, &[0; 32], 1).unwrap();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "sigma {sigma}: {:.2} M samples/s on one thread",
                n as f64 / secs / 1e6
            );
        }
    }
}
