//! The batched samplers behind [`DiscreteGaussian::fill`]: Algorithm 3 with
//! its coins decided without data-dependent branches (see the parent module's
//! documentation, "Batches without data-dependent branches").
//!
//! A batch runs three passes over [`BATCH`] attempts:
//!
//! 1. [`fill_u`]: accepted values of the Laplace step's U, uniform on `[0, t)`
//!    and kept with probability exp(-U/t) (Algorithm 2's first rejection);
//! 2. [`fill_v`]: its geometric part V, P(V >= v) = exp(-v);
//! 3. per attempt: Y = U + tV with a random sign, discarded when it is -0,
//!    and kept with probability exp(-gamma(|Y|)) (Algorithm 3).
//!
//! Algorithm 1 for Bernoulli(exp(-gamma)), gamma <= 1, flips coins
//! A_k ~ Bernoulli(gamma / k) until one fails and answers "the failing k is
//! odd". Each coin here is one 8-bit digit w_k of a uniform real compared with
//! gamma / k: true if (w_k + 1) / B <= gamma / k, false if w_k / B >= gamma / k,
//! a tie otherwise. With the first N coins decided, the answer is
//! `!A1 | (A1 & A2 & !A3) | ...`; it needs the sequential code only when a coin
//! that matters ties, or when all N succeed. The sequential code receives the
//! digits and uses each in the role it had (the `*_from` functions), so the
//! result is the same function of the random stream as if every coin had been
//! flipped in turn: exact, as the parent's tests check by statistics and, for
//! the floating-point filter, by identity with an all-integer run.

use super::{
    accept_general, bern_exp, bern_exp_minus_one, bern_exp_minus_one_tie, bern_ratio_scaled,
    bern_ratio_small_from, bern_ratio_u128_from, signed, Coins, General, DIGIT_BITS, DIGIT_SCALE,
    E1_CUTS, E1_TIES, X_MAX,
};

/// Attempts per batch (one 64-bit word supplies their signs).
pub(super) const BATCH: usize = 64;

/// Coins of the Laplace step's Algorithm 1 decided up front.
const U_COINS: usize = 4;
/// Bernoulli(exp(-1)) coins of the geometric V decided up front.
const V_COINS: usize = 4;
/// Coins of the acceptance step's Algorithm 1 decided up front.
const ACCEPT_COINS: usize = 3;

#[cfg(test)]
pub(super) static SLOW_PATHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[inline(always)]
fn count_slow() {
    #[cfg(test)]
    SLOW_PATHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The coin Bernoulli(a / d) as far as the digit `w` settles it, with
/// `ab = a * B`: (true?, tie?).
#[inline(always)]
fn coin(w: u8, ab: u64, d: u64) -> (bool, bool) {
    let lhs = u64::from(w) * d;
    let yes = lhs + d <= ab;
    let no = lhs >= ab;
    (yes, !yes & !no)
}

/// [`coin`] in 128-bit arithmetic.
#[inline(always)]
fn coin128(w: u8, ab: u128, d: u128) -> (bool, bool) {
    let lhs = u128::from(w) * d;
    let yes = lhs + d <= ab;
    let no = lhs >= ab;
    (yes, !yes & !no)
}

/// Bernoulli(exp(-a/b)), `a <= b < 2^64`, by Algorithm 1 whose first coins'
/// digits are `digits`.
#[cold]
#[inline(never)]
fn exp_frac_from<const N: usize>(c: &mut Coins, digits: [u8; N], a: u128, b: u128) -> bool {
    count_slow();
    for (i, &w) in digits.iter().enumerate() {
        let k = i as u64 + 1;
        let d = b * u128::from(k);
        let success = if d < 1 << (64 - DIGIT_BITS) {
            bern_ratio_small_from(c, u64::from(w), a as u64, d as u64)
        } else {
            bern_ratio_u128_from(c, u64::from(w), a, d)
        };
        if !success {
            return k & 1 == 1;
        }
    }
    let mut k = N as u64 + 1;
    while bern_ratio_scaled(c, a, b, k) {
        k += 1;
    }
    k & 1 == 1
}

/// A Bernoulli(exp(-1)) coin from one digit, by inversion (as
/// `bern_exp_minus_one`): (value, tie?).
#[inline(always)]
fn e1(w: u8) -> (bool, bool) {
    let w = u64::from(w);
    let mut below = 0u32;
    let mut tie = w == 0;
    for (cut, tie_cut) in E1_CUTS.into_iter().zip(E1_TIES) {
        below += u32::from(w < cut);
        tie |= w == tie_cut;
    }
    (below & 1 == 1, tie)
}

/// V from its first coins' digits, sequentially.
#[cold]
#[inline(never)]
fn v_from(c: &mut Coins, digits: [u8; V_COINS]) -> u64 {
    count_slow();
    let mut v = 0;
    for &w in &digits {
        let (value, tie) = e1(w);
        let value = if tie {
            bern_exp_minus_one_tie(c, u64::from(w))
        } else {
            value
        };
        if !value {
            return v;
        }
        v += 1;
    }
    while bern_exp_minus_one(c) {
        v = v.saturating_add(1);
    }
    v
}

/// How U is drawn: Lemire's multiply-and-reject on a 16-, 32- or 64-bit word
/// (`UB` bytes), the narrowest whose rejection rate (below t / 2^(8 UB)) stays
/// small. A rejected draw discards the attempt.
fn u_bytes(t: u64) -> usize {
    if t <= 1 << 10 {
        2
    } else if t <= 1 << 24 {
        4
    } else {
        8
    }
}

/// Lemire's threshold 2^(8 UB) mod t: a product whose low word is below it is
/// rejected.
fn lemire_threshold(t: u64, ub: usize) -> u64 {
    match ub {
        2 => (1u64 << 16) % t,
        4 => (1u64 << 32) % t,
        _ => t.wrapping_neg() % t,
    }
}

/// Fills `buf[..BATCH]` with accepted U's (one spare slot takes the write of a
/// rejected last attempt).
#[inline(always)]
fn fill_u<const UB: usize>(c: &mut Coins, t: u64, threshold: u64, buf: &mut [u64; BATCH + 1]) {
    if t == 1 {
        return; // U = 0, accepted with probability 1; the buffer holds zeros.
    }
    let d = [t, 2 * t, 3 * t, 4 * t];
    let mut j = 0;
    while j < BATCH {
        let (u, in_range, w): (u64, bool, [u8; U_COINS]) = match UB {
            2 => {
                let b = c.bytes::<6>();
                let m = u64::from(u16::from_le_bytes([b[0], b[1]])) * t;
                (m >> 16, m & 0xffff >= threshold, [b[2], b[3], b[4], b[5]])
            }
            4 => {
                let b = c.bytes::<8>();
                let m = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) * t;
                (
                    m >> 32,
                    m & 0xffff_ffff >= threshold,
                    [b[4], b[5], b[6], b[7]],
                )
            }
            _ => {
                let b = c.bytes::<12>();
                let r = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                let m = u128::from(r) * u128::from(t);
                (
                    (m >> 64) as u64,
                    m as u64 >= threshold,
                    [b[8], b[9], b[10], b[11]],
                )
            }
        };
        // gamma = u / t < 1; u * B < 2^49 and w * 4t < 2^51.
        let ab = u << DIGIT_BITS;
        let (a1, t1) = coin(w[0], ab, d[0]);
        let (a2, t2) = coin(w[1], ab, d[1]);
        let (a3, t3) = coin(w[2], ab, d[2]);
        let (a4, t4) = coin(w[3], ab, d[3]);
        let mut accept = !a1 | (a2 & (!a3 | a4));
        if t1 | (a1 & (t2 | (a2 & (t3 | (a3 & (t4 | a4)))))) {
            accept = exp_frac_from(c, w, u128::from(u), u128::from(t));
        }
        buf[j] = u;
        j += usize::from(accept & in_range);
    }
}

/// Fills `buf` with samples of V.
#[inline(always)]
fn fill_v(c: &mut Coins, buf: &mut [u64; BATCH]) {
    for slot in buf.iter_mut() {
        let w = c.bytes::<V_COINS>();
        let (c1, t1) = e1(w[0]);
        let (c2, t2) = e1(w[1]);
        let (c3, t3) = e1(w[2]);
        let (c4, t4) = e1(w[3]);
        *slot = if t1 | (c1 & (t2 | (c2 & (t3 | (c3 & (t4 | c4)))))) {
            v_from(c, w)
        } else {
            u64::from(c1) + u64::from(c1 & c2) + u64::from(c1 & c2 & c3)
        };
    }
}

/// The acceptance coin of the integer path, Bernoulli(exp(-num/den)), when
/// the digits did not settle it.
#[cold]
#[inline(never)]
fn accept_int_from(c: &mut Coins, w: [u8; ACCEPT_COINS], num: u128, den: u128) -> bool {
    if num < den {
        return exp_frac_from(c, w, num, den);
    }
    // gamma >= 1 was known before the digits were looked at: they are unused.
    count_slow();
    bern_exp(c, num, den)
}

/// Runs batches until `out` is full: U's, V's and a word of signs per batch,
/// then per attempt Y = U + tV, its three acceptance digits and the decision
/// `accept(coins, |Y|, digits)`; -0 is discarded (Algorithm 2's rejection).
#[inline(always)]
fn fill_batches<const UB: usize>(
    c: &mut Coins,
    t: u64,
    out: &mut [i64],
    mut accept: impl FnMut(&mut Coins, u64, [u8; ACCEPT_COINS]) -> bool,
) {
    let threshold = lemire_threshold(t, UB);
    let mut us = [0u64; BATCH + 1];
    let mut vs = [0u64; BATCH];
    let mut o = 0;
    while o < out.len() {
        fill_u::<UB>(c, t, threshold, &mut us);
        fill_v(c, &mut vs);
        let signs = c.word();
        for (j, (&u, &v)) in us.iter().zip(&vs).enumerate() {
            if o == out.len() {
                break;
            }
            let y = t.saturating_mul(v).saturating_add(u);
            let negative = (signs >> j) & 1 == 1;
            let w = c.bytes::<ACCEPT_COINS>();
            let keep = accept(c, y, w) & !(negative & (y == 0));
            out[o] = signed(y.min(X_MAX), negative);
            o += usize::from(keep);
        }
    }
}

/// [`fill_batches`] with U drawn from the narrowest word for `t` (see [`u_bytes`]).
#[inline(always)]
fn fill_batches_for(
    c: &mut Coins,
    t: u64,
    out: &mut [i64],
    accept: impl FnMut(&mut Coins, u64, [u8; ACCEPT_COINS]) -> bool,
) {
    match u_bytes(t) {
        2 => fill_batches::<2>(c, t, out, accept),
        4 => fill_batches::<4>(c, t, out, accept),
        _ => fill_batches::<8>(c, t, out, accept),
    }
}

/// Integer sigma `s <= 2^31` (t = s, gamma = (|y| - s)^2 / den, den = 2 s^2).
pub(super) fn fill_int(c: &mut Coins, s: u64, den: u128, out: &mut [i64]) {
    // Below 2^53, w * 3 den and num * B (num < den) fit in a u64.
    let narrow = den < 1 << 53;
    let den64 = den as u64;
    fill_batches_for(c, s, out, |c, y, w| {
        let diff = y.abs_diff(s);
        if narrow && diff < 1 << 26 {
            let num = diff * diff;
            let ab = num << DIGIT_BITS;
            let (a1, t1) = coin(w[0], ab, den64);
            let (a2, t2) = coin(w[1], ab, 2 * den64);
            let (a3, t3) = coin(w[2], ab, 3 * den64);
            if (num >= den64) | t1 | (a1 & (t2 | (a2 & (t3 | a3)))) {
                return accept_int_from(c, w, u128::from(num), den);
            }
            return !a1 | (a2 & !a3);
        }
        let d = u128::from(diff);
        let num = d * d; // diff < 2^64: no overflow
        if num >= den {
            return y <= X_MAX && accept_int_from(c, w, num, den);
        }
        let ab = num << DIGIT_BITS;
        let (a1, t1) = coin128(w[0], ab, den);
        let (a2, t2) = coin128(w[1], ab, 2 * den);
        let (a3, t3) = coin128(w[2], ab, 3 * den);
        if t1 | (a1 & (t2 | (a2 & (t3 | a3)))) {
            return accept_int_from(c, w, num, den);
        }
        !a1 | (a2 & !a3)
    });
}

/// Any other sigma: the acceptance coin from the floating-point gamma and its
/// error bound (as `accept_general`), with the integer fallback there.
pub(super) fn fill_general(c: &mut Coins, g: &General, out: &mut [i64]) {
    // The error bound of accept_general for y <= x_fast, and the margin it
    // keeps between a digit and a threshold.
    let margin = g.eps_fast_b + 1.0 / 1024.0;
    fill_batches_for(c, g.t, out, |c, y, w| {
        let d = y as i64 as f64 - g.tau;
        let gb = d * d * g.inv_2s2_b; // gamma * B, as in accept_general
        let thresholds = [gb, gb / 2.0, gb / 3.0];
        let mut yes = [false; ACCEPT_COINS];
        let mut sure = true;
        for k in 0..ACCEPT_COINS {
            let wf = f64::from(w[k]);
            yes[k] = wf + 1.0 <= thresholds[k] - margin;
            sure &= yes[k] | (wf >= thresholds[k] + margin);
        }
        let settled = sure
            & !(yes[0] & yes[1] & yes[2])
            & (y <= g.x_fast)
            & (gb + g.eps_fast_b < DIGIT_SCALE);
        if settled {
            return !yes[0] | (yes[1] & !yes[2]);
        }
        count_slow();
        y <= X_MAX && accept_general(c, g, y, &w)
    });
}

/// [`fill_general`] with every acceptance coin decided in integers from the
/// same digits (for the test that the filter never changes a decision).
#[cfg(test)]
pub(super) fn fill_general_exact(c: &mut Coins, g: &General, out: &mut [i64]) {
    fill_batches_for(c, g.t, out, |c, y, w| {
        count_slow();
        y <= X_MAX && super::accept_general_exact(c, g, y, &w)
    });
}
