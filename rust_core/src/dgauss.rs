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
//! Every coin is an exact comparison of a uniform real, drawn lazily in 8-bit
//! digits, with a rational threshold: integers decide it, and a tie between a
//! digit and the threshold is resolved by drawing further digits. So the output
//! follows the exact distribution, not one that differs from it in its low-order
//! bits (Mironov, CCS 2012). Floating point appears only as a *filter* in front
//! of exact comparisons, as in exact geometric predicates: it settles a
//! comparison only when a proven error bound puts the exact answer on the same
//! side, and otherwise the comparison is redone in integers on the same digit
//! (see `accept_general`; a test checks that the filtered and the all-integer
//! sampler produce identical output from the same stream).
//!
//! Two reformulations save random bits and branches without changing any
//! distribution: Bernoulli(exp(-1)) draws Algorithm 1's K by inversion from one
//! uniform (P(K > k) = 1/k!), and the digits are 8 bits wide.
//!
//! # Batches without data-dependent branches
//! Written as loops, these algorithms spend most of their time in mispredicted
//! branches: every coin is a coin flip for the branch predictor too. So
//! [`DiscreteGaussian::fill`] runs them in batches (module `batch`): each
//! attempt draws a fixed number of digits up front (the first four coins of
//! the Laplace step's Algorithm 1, four Bernoulli(exp(-1)) coins for its
//! geometric part, the first three coins of the acceptance step), decides
//! every coin from its digit with comparisons and bit operations only, and
//! writes its result whether or not it is accepted, advancing the output by
//! one only if it is. A rejection anywhere restarts the whole attempt, which is
//! still Algorithm 3 (a rejected proposal is discarded either way). Only rare
//! cases branch to the sequential code, which continues with the *same* digits
//! in the same roles: a digit that ties with its threshold, a run of coins that
//! all succeed, a gamma of 1 or more. Coins drawn but not needed (after the
//! first failing one) are ignored, which does not change any distribution
//! because nothing depended on them. About 1.2x (integer sigma) to 1.8x
//! (other sigma) faster than the sequential loops on the same random stream.
//!
//! # Which sigma
//! `sigma` arrives as an `f64` and is taken at its exact binary value
//! `m * 2^e`, so `sigma^2` is the rational `m^2 * 4^e`. An integer-valued sigma up
//! to 2^31 takes a fast path whose arithmetic fits in `u128`; any other sigma goes
//! through the same algorithms on 512-bit integers ([`Wide`]), behind the
//! floating-point filter, at about the same speed.
//!
//! # Randomness
//! AES-256 in counter mode, the PRG of the mask engine (`crate::prg`, AES-NI
//! where the CPU has it, a constant-time software AES otherwise): a CSPRNG as
//! in NIST SP 800-90A's CTR_DRBG. The 256-bit key is SHA-256 of a
//! domain-separation label and a 32-byte seed, which comes from the OS
//! (`getrandom`) unless the caller passes one for a reproducible run. The
//! output is cut into chunks of [`CHUNK_LEN`] samples and chunk `i` reads the
//! keystream whose 128-bit big-endian counter block starts at `i * 2^64`, so a
//! seeded result does not depend on how many threads filled it, and a longer
//! seeded array extends a shorter one. (ChaCha20 was the first choice; at
//! 0.6-0.8 ns per byte on the target machines it took a sixth of the batched
//! sampler's time, AES-256-CTR about a tenth.)
//!
//! # Range
//! The output is an `i64`, so a sampler must stop somewhere: samples with
//! `|x| > 2^62` are rejected like any other proposal, which makes the output
//! exactly the discrete Gaussian conditioned on `|x| <= 2^62`. For sigma up to
//! [`MAX_SIGMA`] = 2^40 the conditioning event has probability below
//! `exp(-2^43)`.

use std::cmp::Ordering;

use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{KeyIvInit, StreamCipherCore};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};

mod batch;

/// Smallest sigma accepted. At it a sample is nonzero with probability under
/// `2 * exp(-2^31)`; below it the exact arithmetic would need ever wider integers.
pub const MIN_SIGMA: f64 = 1.0 / 65536.0;
/// Largest sigma accepted (2^40, about 1.1e12).
pub const MAX_SIGMA: f64 = 1_099_511_627_776.0;
/// Samples per keystream: the unit of parallel work and of determinism.
pub const CHUNK_LEN: usize = 1 << 14;
/// Largest magnitude a sample can take (see the module documentation).
pub const X_MAX: u64 = 1 << 62;
/// Most threads a caller may ask [`DiscreteGaussian::fill`] for.
pub const MAX_THREADS: usize = 256;

/// Largest sigma handled by the `u128` fast path: `2 * sigma^2 < 2^63`.
const INT_PATH_MAX: u64 = 1 << 31;
/// Label hashed with the seed, so a seed used elsewhere (e.g. for masks) never
/// yields the same AES key as the noise.
const KEY_LABEL: &[u8] = b"gridsim/dgauss/v1\0";

// ---------------------------------------------------------------------------
// Random bits
// ---------------------------------------------------------------------------

/// Keystream bytes, read a few at a time from a 512-byte buffer: as whole
/// digits and words by the batched sampler, as short digits and single bits
/// from a 64-bit reservoir by the sequential code (a Bernoulli draw rarely
/// needs more than one 8-bit digit, so spending 32 or 64 bits on each would
/// cost dearly).
pub struct Coins {
    cipher: AesCtr,
    blocks: [Block; BUFFER_BLOCKS],
    buf: [u8; BUFFER_BYTES],
    pos: usize,
    pool: u64,
    avail: u32,
}

type AesCtr = ctr::CtrCore<aes::Aes256Enc, ctr::flavors::Ctr128BE>;
type Block = GenericArray<u8, U16>;
/// AES blocks of keystream per refill of [`Coins`].
const BUFFER_BLOCKS: usize = 32;
const BUFFER_BYTES: usize = 16 * BUFFER_BLOCKS;

/// Width of the digits the Bernoulli draws compare.
const DIGIT_BITS: u32 = 8;
/// 2^DIGIT_BITS.
const DIGIT_BASE: u64 = 1 << DIGIT_BITS;
/// 2^DIGIT_BITS as a float.
const DIGIT_SCALE: f64 = DIGIT_BASE as f64;

impl Coins {
    /// The keystream of `key` whose counter starts at `stream * 2^64`.
    pub fn new(key: &[u8; 32], stream: u64) -> Self {
        let iv = (u128::from(stream) << 64).to_be_bytes();
        Coins {
            cipher: AesCtr::new(key.into(), &iv.into()),
            blocks: [Block::default(); BUFFER_BLOCKS],
            buf: [0; BUFFER_BYTES],
            pos: BUFFER_BYTES,
            pool: 0,
            avail: 0,
        }
    }

    /// The next buffer of keystream; what is left of the last one is dropped.
    #[inline(never)]
    fn refill(&mut self) {
        self.cipher.write_keystream_blocks(&mut self.blocks);
        for (dst, block) in self.buf.chunks_exact_mut(16).zip(&self.blocks) {
            dst.copy_from_slice(block);
        }
        self.pos = 0;
    }

    /// The next `N <= 16` keystream bytes.
    #[inline(always)]
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        if self.pos + N > BUFFER_BYTES {
            self.refill();
        }
        let mut out = [0; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }

    #[inline(always)]
    fn word(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    #[cfg(test)]
    #[inline(always)]
    fn word32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    /// `n <= 32` fresh random bits. Bits left in the reservoir when it runs
    /// short are dropped, never reused.
    #[inline(always)]
    fn take(&mut self, n: u32) -> u64 {
        if self.avail < n {
            self.pool = self.word();
            self.avail = 64;
        }
        let v = self.pool & ((1 << n) - 1);
        self.pool >>= n;
        self.avail -= n;
        v
    }

    #[cfg(test)]
    #[inline(always)]
    fn bit(&mut self) -> bool {
        self.take(1) == 1
    }

    #[inline(always)]
    fn digit(&mut self) -> u64 {
        self.take(DIGIT_BITS)
    }

    /// Uniform on `[0, n)`, `n >= 1` (Lemire's multiply-and-reject, on 16
    /// bits, a 32-bit word or a 64-bit word as `n` requires; a rejection
    /// happens with probability below n/2^16, n/2^32 or n/2^64).
    #[cfg(test)]
    #[inline(always)]
    fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n >= 1);
        if n <= 1 << 10 {
            let mut m = self.take(16) * n;
            if m & 0xffff < n {
                let threshold = (1 << 16) % n;
                while m & 0xffff < threshold {
                    m = self.take(16) * n;
                }
            }
            return m >> 16;
        }
        if n <= 1 << 32 {
            let mut m = u64::from(self.word32()) * n;
            if (m as u32 as u64) < n {
                let threshold = (1u64 << 32) % n;
                while (m as u32 as u64) < threshold {
                    m = u64::from(self.word32()) * n;
                }
            }
            return m >> 32;
        }
        let mut m = u128::from(self.word()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.word()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }
}

// ---------------------------------------------------------------------------
// Bernoulli draws with rational parameters
// ---------------------------------------------------------------------------
//
// All of them draw a uniform real V = 0.w1 w2 w3 ... lazily, in 8-bit digits
// (B = 2^8), and answer V < a/d. With the first digit w: if (w+1)*d <= a*B
// then V < a/d for every continuation; if w*d >= a*B then V >= a/d; otherwise
// (probability below 2^-8) the question becomes "0.w2 w3 ... < (a*B - w*d)/d",
// the same question with a smaller numerator.

/// True with probability `a / d`, `0 <= a <= d < 2^56`, `d > 0`.
#[inline(always)]
fn bern_ratio_small(c: &mut Coins, a: u64, d: u64) -> bool {
    let w = c.digit();
    bern_ratio_small_from(c, w, a, d)
}

/// [`bern_ratio_small`] whose first digit `first` is already drawn.
#[inline(always)]
fn bern_ratio_small_from(c: &mut Coins, first: u64, mut a: u64, d: u64) -> bool {
    debug_assert!(a <= d && d > 0 && d < 1 << (64 - DIGIT_BITS));
    let mut w = first;
    loop {
        let lhs = w * d;
        let rhs = a << DIGIT_BITS;
        if lhs + d <= rhs {
            return true;
        }
        if lhs >= rhs {
            return false;
        }
        a = rhs - lhs;
        w = c.digit();
    }
}

/// True with probability `a / d`, `0 <= a <= d < 2^120`, `d > 0`.
#[inline(always)]
fn bern_ratio_u128(c: &mut Coins, a: u128, d: u128) -> bool {
    let w = c.digit();
    bern_ratio_u128_from(c, w, a, d)
}

/// [`bern_ratio_u128`] whose first digit `first` is already drawn.
#[inline(always)]
fn bern_ratio_u128_from(c: &mut Coins, first: u64, mut a: u128, d: u128) -> bool {
    debug_assert!(a <= d && d > 0 && d < 1 << (128 - DIGIT_BITS));
    let mut w = first;
    loop {
        let lhs = u128::from(w) * d;
        let rhs = a << DIGIT_BITS;
        if lhs + d <= rhs {
            return true;
        }
        if lhs >= rhs {
            return false;
        }
        a = rhs - lhs;
        w = c.digit();
    }
}

/// True with probability `a / d` for wide `0 <= a <= d < 2^500`, `d > 0`.
fn bern_ratio_wide(c: &mut Coins, a: Wide, d: &Wide) -> bool {
    let w = c.digit();
    bern_ratio_wide_from(c, w, a, d)
}

/// [`bern_ratio_wide`] whose first digit `first` is already drawn.
fn bern_ratio_wide_from(c: &mut Coins, first: u64, mut a: Wide, d: &Wide) -> bool {
    let mut w = first;
    loop {
        let lhs = d.mul_u64(w).expect("d < 2^500");
        let rhs = a.shl_digit().expect("a < 2^500");
        let hi = lhs.add(d).expect("d < 2^500");
        if hi <= rhs {
            return true;
        }
        if lhs >= rhs {
            return false;
        }
        a = rhs.sub(&lhs);
        w = c.digit();
    }
}

/// True with probability `a / (b * k)`, `a <= b`, `b > 0`, `k >= 1`.
#[inline(always)]
fn bern_ratio_scaled(c: &mut Coins, a: u128, b: u128, k: u64) -> bool {
    if b < 1 << 40 && k < 1 << 8 {
        // The common case, without a 128-bit multiplication.
        return bern_ratio_small(c, a as u64, b as u64 * k);
    }
    match b.checked_mul(u128::from(k)) {
        Some(d) if d < 1 << (64 - DIGIT_BITS) => bern_ratio_small(c, a as u64, d as u64),
        Some(d) if d < 1 << (128 - DIGIT_BITS) => bern_ratio_u128(c, a, d),
        // Only reachable after ~2^14 consecutive successes of Algorithm 1.
        _ => bern_ratio_wide(
            c,
            Wide::from_u128(a),
            &Wide::from_u128(b).mul_u64(k).expect("fits in 192 bits"),
        ),
    }
}

/// How many k >= 2 have k! < 2^DIGIT_BITS (4 for 8-bit digits: 2!..5!).
const E1_TERMS: usize = {
    let (mut n, mut f, mut k) = (0, 2u64, 2u64);
    while f < DIGIT_BASE {
        n += 1;
        k += 1;
        f *= k;
    }
    n
};
/// k! for k = 2..=E1_TERMS+1, and the next factorial after them.
const FACTORIALS: [u64; E1_TERMS] = {
    let mut f = [0; E1_TERMS];
    let (mut i, mut acc) = (0, 1u64);
    while i < E1_TERMS {
        acc *= i as u64 + 2;
        f[i] = acc;
        i += 1;
    }
    f
};
const NEXT_FACTORIAL: u64 = FACTORIALS[E1_TERMS - 1] * (E1_TERMS as u64 + 2);
/// floor(B / k!) for the same k (decreasing, all >= 1).
const E1_CUTS: [u64; E1_TERMS] = {
    let mut cuts = [0; E1_TERMS];
    let mut i = 0;
    while i < E1_TERMS {
        cuts[i] = DIGIT_BASE / FACTORIALS[i];
        i += 1;
    }
    cuts
};

/// The cuts a digit can tie with: those where B/k! is not a whole number
/// (u64::MAX, which no digit equals, elsewhere).
const E1_TIES: [u64; E1_TERMS] = {
    let mut ties = [u64::MAX; E1_TERMS];
    let mut i = 0;
    while i < E1_TERMS {
        if !DIGIT_BASE.is_multiple_of(FACTORIALS[i]) {
            ties[i] = E1_CUTS[i];
        }
        i += 1;
    }
    ties
};

/// Bernoulli(exp(-1)): Algorithm 1 with gamma = 1, its coins drawn by
/// inversion. Algorithm 1 stops at the first k with A_k = 0, where
/// A_k ~ Bernoulli(1/k), so P(K > k) = 1/k!; the same K is
/// 1 + #{k >= 1 : V < 1/k!} for one uniform V, and the output is "K odd". One
/// digit w of V settles every comparison except when w equals a cut
/// floor(B/k!) that is not exactly B/k!, or is 0 (probability 4/2^8), handled by
/// [`bern_exp_minus_one_tie`]; no branch depends on the other values of w.
#[inline(always)]
fn bern_exp_minus_one(c: &mut Coins) -> bool {
    let w = c.digit();
    let mut below = 0u32; // #{k >= 2 : w < floor(B/k!)}
    let mut tie = w == 0;
    for (cut, tie_cut) in E1_CUTS.into_iter().zip(E1_TIES) {
        below += u32::from(w < cut);
        tie |= w == tie_cut;
    }
    if tie {
        return bern_exp_minus_one_tie(c, w);
    }
    // k = 1 always counts (V < 1), so K = 2 + below.
    below & 1 == 1
}

/// [`bern_exp_minus_one`] when its first digit `w` does not settle K.
#[cold]
fn bern_exp_minus_one_tie(c: &mut Coins, w: u64) -> bool {
    // Comparisons V < 1/k! that w settles as true.
    let certain = E1_CUTS.iter().filter(|&&cut| cut > w).count() as u64;
    let extra = if w == 0 {
        // V < 1/k! for every k in the table. For the next k, V = T/B with T
        // uniform and V < 1/k! iff T < B/k!: Bernoulli(B/k!) first; given
        // T < B/k!, T k!/B is uniform again, so Bernoulli(1/(k+1)) next, etc.
        let mut extra = 0;
        if bern_ratio_small(c, DIGIT_BASE, NEXT_FACTORIAL) {
            extra += 1;
            let mut k = E1_TERMS as u64 + 3;
            while bern_ratio_scaled(c, 1, 1, k) {
                extra += 1;
                k += 1;
            }
        }
        extra
    } else {
        // w = floor(B/k!) for one k: V < 1/k! iff the tail of V is below
        // (B mod k!) / k!; every other comparison is settled by w.
        let i = E1_CUTS.iter().position(|&cut| cut == w).expect("a tie");
        u64::from(bern_ratio_small(
            c,
            DIGIT_BASE % FACTORIALS[i],
            FACTORIALS[i],
        ))
    };
    (certain + extra) & 1 == 1
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
fn bern_exp_frac_wide(c: &mut Coins, a: &Wide, b: &Wide, pre: &[u8]) -> bool {
    // No shortcut for a = 0 (the first draw fails and K = 1 is odd): the
    // filtered Algorithm 1 of `accept_general` must draw the same digits.
    let mut k: u64 = 1;
    loop {
        let d = b.mul_u64(k).expect("b < 2^400 and k < 2^64");
        let first = match pre.get(k as usize - 1) {
            Some(&w) => u64::from(w),
            None => c.digit(),
        };
        if !bern_ratio_wide_from(c, first, *a, &d) {
            return k & 1 == 1;
        }
        k += 1;
    }
}

/// Bernoulli(exp(-num/den)) for wide integers, the first digits of the
/// fractional part's Algorithm 1 coins taken from `pre` (see `batch`). The
/// integer part of gamma is
/// taken in steps `q` that are checked lower bounds of the quotient (a
/// floating-point guess, verified with integer arithmetic), so no wide division
/// is needed.
fn bern_exp_wide(c: &mut Coins, mut num: Wide, den: &Wide, pre: &[u8]) -> bool {
    loop {
        if num <= *den {
            return bern_exp_frac_wide(c, &num, den, pre);
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
#[cfg(test)]
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
    Int {
        s: u64,
        den: u128,
    },
    General(Box<General>),
}

/// Any other sigma: sigma^2 = n / d with d a power of four, t = floor(sigma) + 1
/// and gamma = (|y| d t - n)^2 / (2 n d t^2), exactly, in [`Wide`] integers.
/// The same gamma in floating point, with a proven error bound, settles almost
/// every coin first (see [`accept_general`]).
#[derive(Clone, Debug)]
struct General {
    t: u64,
    n: Wide,
    dt: Wide,
    den: Wide,
    /// fl(fl(sigma^2) / t)
    tau: f64,
    /// fl(1 / (2 fl(sigma^2)))
    inv_2s2: f64,
    /// inv_2s2 * B
    inv_2s2_b: f64,
    /// Relative size of the error bound; tests raise it to exercise the
    /// integer fallback.
    slack: f64,
    /// Proposals up to `x_fast` use the error bound `eps_fast_b`.
    x_fast: u64,
    eps_fast_b: f64,
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
                Self::general(sigma, s + 1, n, Wide::from_u128(1))
            }
        } else {
            let k = exp.unsigned_abs(); // sigma = m / 2^k, k <= 68
            let floor = if k >= 64 { 0 } else { m >> k };
            let n = Wide::from_u128(u128::from(m) * u128::from(m));
            let d = Wide::pow2(2 * k);
            Self::general(sigma, floor + 1, n, d)
        };
        Ok(DiscreteGaussian { sigma, params })
    }

    fn general(sigma: f64, t: u64, n: Wide, d: Wide) -> Params {
        let dt = d.mul_u64(t).expect("d * t < 2^177");
        let den = n
            .mul(&dt)
            .and_then(|x| x.mul_u64(t))
            .and_then(|x| x.mul_u64(2))
            .expect("2 n d t^2 < 2^330");
        let s2 = sigma * sigma;
        let inv_2s2 = 1.0 / (2.0 * s2);
        let mut g = General {
            t,
            n,
            dt,
            den,
            tau: s2 / t as f64,
            inv_2s2,
            inv_2s2_b: inv_2s2 * DIGIT_SCALE,
            slack: 0.0,
            x_fast: 0,
            eps_fast_b: 0.0,
        };
        g.set_slack(FILTER_SLACK);
        Params::General(Box::new(g))
    }

    /// The sigma this sampler was built for.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Whether this sigma takes the `u128` fast path.
    pub fn is_integer_path(&self) -> bool {
        matches!(self.params, Params::Int { .. })
    }

    /// Fills `out` with independent samples from the keystream of `seed`, by
    /// the batched sampler (`batch`).
    /// `threads` = 0 uses rayon's global pool (all cores), 1 runs on the calling
    /// thread, n > 1 uses a pool of n threads. The result depends only on
    /// `seed` and `out.len()`, never on `threads`.
    pub fn fill(&self, out: &mut [i64], seed: &[u8; 32], threads: usize) -> Result<()> {
        if threads > MAX_THREADS {
            return Err(CoreError::InvalidArgument(format!(
                "threads must be at most {MAX_THREADS}, got {threads}"
            )));
        }
        let key = derive_key(seed);
        let fill_chunk = |(i, chunk): (usize, &mut [i64])| {
            let mut c = Coins::new(&key, i as u64);
            match &self.params {
                Params::Int { s, den } => batch::fill_int(&mut c, *s, *den, chunk),
                Params::General(g) => batch::fill_general(&mut c, g, chunk),
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

/// One sample of Algorithm 3 by the sequential loops, the reference the
/// filter test checks `accept_general` against (`fill` runs `batch`).
#[cfg(test)]
fn sample_general(c: &mut Coins, g: &General) -> i64 {
    loop {
        let (x, negative) = discrete_laplace(c, g.t);
        if x > X_MAX {
            continue;
        }
        if accept_general(c, g, x, &[]) {
            return signed(x, negative);
        }
    }
}

/// Exact gamma = num / den of Algorithm 3 for the proposal `x`.
fn gamma_exact(g: &General, x: u64) -> Wide {
    let a = g.dt.mul_u64(x).expect("x d t < 2^240");
    let diff = if a < g.n { g.n.sub(&a) } else { a.sub(&g.n) };
    diff.mul(&diff).expect("(x d t - n)^2 < 2^480")
}

/// The acceptance coin of Algorithm 3, Bernoulli(exp(-gamma)), in integers
/// only; the first digits of its fractional coins come from `pre`.
fn accept_general_exact(c: &mut Coins, g: &General, x: u64, pre: &[u8]) -> bool {
    bern_exp_wide(c, gamma_exact(g, x), &g.den, pre)
}

/// Relative error bound used by the floating-point filter (see
/// [`accept_general`]); 2^-45 is 2^4 times the worst case derived there.
const FILTER_SLACK: f64 = 1.0 / 35_184_372_088_832.0; // 2^-45
/// The filter handles gamma below this; above it the integer path runs.
const FILTER_MAX_GAMMA: f64 = 1_099_511_627_776.0; // 2^40
/// Proposals up to this many multiples of t share one precomputed error bound
/// (larger ones, with probability below e^-16, compute their own).
const FILTER_FAST_T: u64 = 16;

impl General {
    /// Sets the relative error bound and the precomputed bound for
    /// `x <= FILTER_FAST_T * t`: eps is increasing in x, so its value at the
    /// largest such x serves them all (rounded up by 2^-20 against the
    /// rounding of its own computation).
    fn set_slack(&mut self, slack: f64) {
        self.slack = slack;
        self.x_fast = FILTER_FAST_T * self.t;
        self.eps_fast_b = self.eps_b(self.x_fast as i64 as f64) * (1.0 + 1.0 / 1_048_576.0);
    }

    /// The error bound on gamma, times B, for a proposal `xf`.
    #[inline(always)]
    fn eps_b(&self, xf: f64) -> f64 {
        let s = xf + self.tau;
        (s * s * self.inv_2s2 + 1.0) * self.slack * DIGIT_SCALE
    }
}

/// The acceptance coin of Algorithm 3, drawing the same digits and returning
/// the same answer as [`accept_general_exact`], but deciding almost every
/// comparison from a floating-point gamma, as exact geometric predicates do:
/// a comparison is settled in floating point only when a proven error bound
/// puts the exact answer on the same side; otherwise it is redone in integers
/// with the digit already drawn.
///
/// Error bound. With u = 2^-53, tau = sigma^2/t and c = 1/(2 sigma^2), the
/// computed s2 = fl(sigma^2), tau~ = fl(s2/t), c~ = fl(1/(2 s2)), x~ = fl(x)
/// each carry a relative error of at most u (2 s2 and t < 2^53 are exact), so
/// |fl(x~ - tau~) - (x - tau)| <= 4u (x + tau) and the computed
/// g = fl(fl(d~ d~) c~) satisfies |g - gamma| <= 15u (x + tau)^2 c. The bound
/// used, eps = slack ((x~ + tau~)^2 c~ + 1) with slack = 2^-45 > 16 * 15u,
/// exceeds it with room for the rounding of eps itself and of g + eps. All of
/// it is computed times B = 2^8 (gb = g B, eb = eps B), an exact scaling.
/// floor(gamma) is taken only when [g - eps, g + eps] holds no integer,
/// gb - q B is exact (Sterbenz), and each Algorithm 1 draw compares its digit
/// w with T = (gb - q B) / k, whose error is below eb + 2^-44; the margin used
/// is eb + 2^-10.
///
/// The first digits of the fractional part's coins come from `pre` (the
/// batched sampler draws them up front; see `batch`).
#[inline(always)]
fn accept_general(c: &mut Coins, g: &General, x: u64, pre: &[u8]) -> bool {
    // Conversions go through i64 (every value here is below 2^62): on x86-64
    // the signed ones are single instructions, the unsigned ones are not.
    let xf = x as i64 as f64;
    let d = xf - g.tau;
    let gb = d * d * g.inv_2s2_b;
    let eb = if x <= g.x_fast {
        g.eps_fast_b
    } else {
        g.eps_b(xf)
    };
    let (q, frac_b) = if gb + eb < DIGIT_SCALE {
        (0, gb) // gamma < 1: the common case, without a conversion on its path
    } else {
        let hi = (gb + eb) / DIGIT_SCALE;
        let lo = ((gb - eb) / DIGIT_SCALE).max(0.0);
        // Truncation is floor here: 0 <= lo <= hi < 2^40.
        if hi >= FILTER_MAX_GAMMA || lo as i64 != hi as i64 {
            #[cfg(test)]
            tests::FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return accept_general_exact(c, g, x, pre);
        }
        let q = hi as i64;
        for _ in 0..q {
            if !bern_exp_minus_one(c) {
                return false;
            }
        }
        (q as u64, gb - q as f64 * DIGIT_SCALE)
    };
    let margin = eb + 1.0 / 1024.0;
    let mut k: u64 = 1;
    loop {
        let w = match pre.get(k as usize - 1) {
            Some(&w) => u64::from(w),
            None => c.digit(),
        };
        let threshold = if k == 1 {
            frac_b
        } else {
            frac_b / k as i64 as f64
        };
        let wf = w as i64 as f64;
        let success = if wf + 1.0 <= threshold - margin {
            true
        } else if wf >= threshold + margin {
            false
        } else {
            // Too close to call: the exact Bernoulli((gamma - q) / k) with the
            // same first digit.
            #[cfg(test)]
            tests::FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let num = gamma_exact(g, x);
            let rem = num.sub(&g.den.mul_u64(q).expect("q den <= num"));
            let d = g.den.mul_u64(k).expect("den k < 2^400");
            bern_ratio_wide_from(c, w, rem, &d)
        };
        if !success {
            return k & 1 == 1;
        }
        k += 1;
    }
}

/// The AES-256 key for a seed: SHA-256(label || seed).
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

impl Ord for Wide {
    fn cmp(&self, other: &Wide) -> Ordering {
        self.0.iter().rev().cmp(other.0.iter().rev())
    }
}

impl PartialOrd for Wide {
    fn partial_cmp(&self, other: &Wide) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

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

    /// `self * 2^DIGIT_BITS`.
    pub fn shl_digit(&self) -> Option<Wide> {
        const S: u32 = DIGIT_BITS;
        if self.0[LIMBS - 1] >> (64 - S) != 0 {
            return None;
        }
        let mut r = Wide::ZERO;
        r.0[0] = self.0[0] << S;
        for i in 1..LIMBS {
            r.0[i] = (self.0[i] << S) | (self.0[i - 1] >> (64 - S));
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
        let fits = |q: u64| matches!(den.mul_u64(q), Some(p) if p <= *self);
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
    use std::sync::atomic::AtomicU64;

    /// Times the floating-point filter handed a decision to integer arithmetic.
    pub(super) static FALLBACKS: AtomicU64 = AtomicU64::new(0);

    /// The general-path constants for `sigma` (which must not be an integer).
    fn general_params(sigma: f64) -> Box<General> {
        match DiscreteGaussian::new(sigma).unwrap().params {
            Params::General(g) => g,
            Params::Int { .. } => panic!("sigma {sigma} should take the general path"),
        }
    }

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
            let hits = (0..n)
                .filter(|_| bern_exp_wide(&mut c, wn, &wd, &[]))
                .count() as f64
                / n as f64;
            assert!(
                (hits - exact).abs() <= 5.0 * se,
                "wide {num}/{den}: {hits} vs {exact}"
            );
        }
    }

    /// The floating-point filter never changes a decision: the filtered
    /// acceptance coin and the all-integer one, fed the same random stream,
    /// produce identical samples (any misjudged comparison would desynchronise
    /// the streams). With the error bound inflated 2^39-fold the integer
    /// fallback runs on a few per cent of the draws and must agree as well.
    #[test]
    fn filter_agrees_with_exact_arithmetic() {
        for (i, sigma) in [
            0.5,
            0.71,
            3.7,
            1000.5,
            12345.678,
            3.0e9 + 0.5,
            2f64.powi(-12),
        ]
        .into_iter()
        .enumerate()
        {
            let mut g = general_params(sigma);
            for slack in [FILTER_SLACK, FILTER_SLACK * 2f64.powi(39)] {
                g.set_slack(slack);
                let before = FALLBACKS.load(std::sync::atomic::Ordering::Relaxed);
                let mut fast = Coins::new(&[i as u8; 32], 7);
                let mut exact = Coins::new(&[i as u8; 32], 7);
                for j in 0..30_000 {
                    let a = sample_general(&mut fast, &g);
                    let b = loop {
                        let (x, negative) = discrete_laplace(&mut exact, g.t);
                        if x <= X_MAX && accept_general_exact(&mut exact, &g, x, &[]) {
                            break signed(x, negative);
                        }
                    };
                    assert_eq!(a, b, "sigma {sigma}, slack {slack}, sample {j}");
                }
                let fallbacks = FALLBACKS.load(std::sync::atomic::Ordering::Relaxed) - before;
                println!("sigma {sigma}, slack {slack:e}: {fallbacks} fallbacks");
                if slack > FILTER_SLACK {
                    assert!(
                        fallbacks > 100,
                        "sigma {sigma}: the fallback was not exercised"
                    );
                }
            }
        }
    }

    /// The same for the batched sampler: `fill_general`, whose acceptance coins
    /// are settled in floating point wherever the error bound allows, and the
    /// same batches with every acceptance coin decided in integers, read the
    /// same stream and must write identical arrays; the sequential fallback
    /// of the batches must have run (ties, long runs of successes, gamma >= 1),
    /// and with the bound inflated 2^39-fold the integer fallback too.
    #[test]
    fn batched_filter_agrees_with_exact_arithmetic() {
        for (i, sigma) in [0.5, 0.71, 3.7, 1000.5, 12345.678, 3.0e9 + 0.5]
            .into_iter()
            .enumerate()
        {
            let mut g = general_params(sigma);
            for slack in [FILTER_SLACK, FILTER_SLACK * 2f64.powi(39)] {
                g.set_slack(slack);
                let slow_before = batch::SLOW_PATHS.load(std::sync::atomic::Ordering::Relaxed);
                let before = FALLBACKS.load(std::sync::atomic::Ordering::Relaxed);
                let (mut fast, mut exact) = (vec![0i64; 50_000], vec![0i64; 50_000]);
                batch::fill_general(&mut Coins::new(&[i as u8; 32], 3), &g, &mut fast);
                batch::fill_general_exact(&mut Coins::new(&[i as u8; 32], 3), &g, &mut exact);
                assert_eq!(fast, exact, "sigma {sigma}, slack {slack}");
                let slow =
                    batch::SLOW_PATHS.load(std::sync::atomic::Ordering::Relaxed) - slow_before;
                let fallbacks = FALLBACKS.load(std::sync::atomic::Ordering::Relaxed) - before;
                assert!(
                    slow > 100,
                    "sigma {sigma}: the sequential code ran {slow} times"
                );
                if slack > FILTER_SLACK {
                    assert!(
                        fallbacks > 100,
                        "sigma {sigma}: {fallbacks} integer fallbacks"
                    );
                }
            }
        }
    }

    /// Bernoulli(exp(-1)) by inversion: overall frequency, and the conditional
    /// frequency after each first digit that does not settle K (the rare
    /// branch), against exact values; 5 standard errors (false alarm < 1e-6).
    #[test]
    fn bernoulli_exp_minus_one_by_inversion() {
        let mut c = Coins::new(&[10; 32], 0);
        let check = |hits: usize, n: usize, p: f64, what: &str| {
            let seen = hits as f64 / n as f64;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!((seen - p).abs() < 5.0 * se, "{what}: {seen} vs {p}");
        };
        let n = 1_000_000;
        let hits = (0..n).filter(|_| bern_exp_minus_one(&mut c)).count();
        check(hits, n, (-1f64).exp(), "exp(-1)");

        let n = 200_000;
        for (i, &cut) in E1_CUTS.iter().enumerate() {
            let rem = (DIGIT_BASE % FACTORIALS[i]) as f64 / FACTORIALS[i] as f64;
            if rem == 0.0 {
                continue; // B/k! is a whole number of digits: no tie there.
            }
            // The comparisons for k' < k hold, the one for k is a coin.
            let p = if i % 2 == 0 { rem } else { 1.0 - rem };
            let hits = (0..n)
                .filter(|_| bern_exp_minus_one_tie(&mut c, cut))
                .count();
            check(hits, n, p, &format!("first digit {cut}"));
        }
        // First digit 0: P(extra >= m) = B / (E1_TERMS + 1 + m)!, output "extra odd"
        // when E1_TERMS is even.
        let mut p = 0.0;
        let mut fact = NEXT_FACTORIAL as f64;
        for m in 1..20 {
            let term = DIGIT_BASE as f64 / fact;
            p += if m % 2 == 1 { term } else { -term };
            fact *= (E1_TERMS + 2 + m) as f64;
        }
        if E1_TERMS % 2 == 1 {
            p = 1.0 - p;
        }
        let hits = (0..n).filter(|_| bern_exp_minus_one_tie(&mut c, 0)).count();
        check(hits, n, p, "first digit 0");
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

    /// Chunks use distinct keystreams: no chunk repeats another, and the
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
        assert_eq!(Wide::pow2(504).shl_digit(), None);
        assert_eq!(Wide::pow2(503).shl_digit(), Some(Wide::pow2(511)));
        assert_eq!(Wide::pow2(100).shl_digit(), Some(Wide::pow2(108)));
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
            Params::General(g) => {
                assert_eq!(g.t, 1);
                assert_eq!(g.n, Wide::from_u128(1));
                assert_eq!(g.dt, Wide::from_u128(4));
                assert_eq!(g.den, Wide::from_u128(8));
            }
            Params::Int { .. } => panic!("0.5 is not an integer"),
        }
        match DiscreteGaussian::new(12.0).unwrap().params {
            Params::Int { s, den } => assert_eq!((s, den), (12, 288)),
            Params::General(_) => panic!("12 is an integer"),
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
