//! AES-256-CTR mask expansion on VAES + AVX-512: four AES blocks per `zmm`
//! register, the keystream added straight into the accumulator.
//!
//! The same keystream as the portable path (see the parent module): AES-256
//! round keys from the standard key expansion (FIPS 197), counter blocks the
//! 128-bit big-endian block index (wrapping at 2^128 like the `ctr` crate),
//! keystream bytes read as little-endian words. The accumulator is walked in
//! the same chunks as there. A chunk's counter blocks are the same for every
//! stream, so they are built once per chunk, and each stream encrypts them
//! with its own round keys and adds the result to the chunk in registers.
//!
//! Every function here needs AES-NI, VAES, AVX-512F and AVX-512BW; a [`Vaes`]
//! exists only where the CPU has them.

use std::arch::x86_64::*;

use zeroize::Zeroize;

use super::{MaskWord, Sign, CHUNK_BLOCKS};

/// `zmm` registers (of four blocks each) encrypted side by side. `vaesenc`
/// on a `zmm` register has a latency of several cycles and a throughput of
/// about one per cycle (Zen 4, Sapphire Rapids), so at least four must be in
/// flight; eight measured 1-2% faster than four on Zen 4.
const LANES: usize = 8;

/// AES blocks per step of the hot loop.
const STEP_BLOCKS: usize = 4 * LANES;

/// Counter registers per chunk.
const CHUNK_REGS: usize = CHUNK_BLOCKS / 4;

/// Proof that the CPU has what this module needs: AES-NI (key expansion),
/// VAES and AVX-512F (the 512-bit rounds and adds) and AVX-512BW (the byte
/// swap of the counter blocks).
#[derive(Debug, Clone, Copy)]
pub(super) struct Vaes(());

impl Vaes {
    /// `Some` when the CPU has AES-NI, VAES, AVX-512F and AVX-512BW.
    pub(super) fn detect() -> Option<Self> {
        let has = is_x86_feature_detected!("aes")
            && is_x86_feature_detected!("vaes")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw");
        has.then_some(Vaes(()))
    }

    /// Adds the keystreams of `keys`, starting at AES block `first_block`,
    /// into `acc`: the portable `expand_part`, bit for bit.
    pub(super) fn expand_part<W: MaskWord>(
        self,
        acc: &mut [W],
        first_block: u128,
        keys: &[([u8; 32], Sign)],
    ) {
        // SAFETY: a `Vaes` exists only where `detect` found every feature
        // `expand_part` enables.
        unsafe { expand_part(acc, first_block, keys) }
    }
}

/// The 15 round keys of AES-256, wiped when dropped (as are the broadcast
/// copies in [`expand_part`]; what the compiler leaves in registers or spills
/// is not, as for the derived keys and the `aes` crate's round keys).
struct RoundKeys([__m128i; 15]);

impl Drop for RoundKeys {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// `a ^ (a << 32) ^ (a << 64) ^ (a << 96) ^ t`: one step of the key
/// expansion, with `t` the broadcast `SubWord`/`RotWord`/`Rcon` word.
#[target_feature(enable = "aes")]
#[inline]
fn mix(a: __m128i, t: __m128i) -> __m128i {
    let a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
    let a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
    let a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
    _mm_xor_si128(a, t)
}

/// The AES-256 key expansion of FIPS 197, section 5.2, into `rk` (in place,
/// so no copy of the round keys is left behind on the stack).
#[target_feature(enable = "aes")]
fn expand_key(key: &[u8; 32], rk: &mut RoundKeys) {
    let word = |i: usize| i64::from_le_bytes(key[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    let k = &mut rk.0;
    k[0] = _mm_set_epi64x(word(1), word(0));
    k[1] = _mm_set_epi64x(word(3), word(2));
    // Even round keys: RotWord, SubWord and Rcon of the previous key's last
    // word; odd ones: SubWord alone.
    macro_rules! even {
        ($i:literal, $rcon:literal) => {
            k[$i] = mix(
                k[$i - 2],
                _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(k[$i - 1])),
            );
        };
    }
    macro_rules! odd {
        ($i:literal) => {
            k[$i] = mix(
                k[$i - 2],
                _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(k[$i - 1])),
            );
        };
    }
    even!(2, 0x01);
    odd!(3);
    even!(4, 0x02);
    odd!(5);
    even!(6, 0x04);
    odd!(7);
    even!(8, 0x08);
    odd!(9);
    even!(10, 0x10);
    odd!(11);
    even!(12, 0x20);
    odd!(13);
    even!(14, 0x40);
}

/// Counter blocks `first, first + 1, ...` (mod 2^128), big-endian, four to a register.
#[target_feature(enable = "avx512f,avx512bw")]
fn counter_blocks(first: u128, out: &mut [__m512i; CHUNK_REGS]) {
    let half = |j: u128, shift: u32| (first.wrapping_add(j) >> shift) as u64 as i64;
    // Each block as two native 64-bit lanes: high half first, then low half.
    let base = _mm512_set_epi64(
        half(3, 0),
        half(3, 64),
        half(2, 0),
        half(2, 64),
        half(1, 0),
        half(1, 64),
        half(0, 0),
        half(0, 64),
    );
    let low_lanes: __mmask8 = 0b1010_1010;
    let four = _mm512_maskz_mov_epi64(low_lanes, _mm512_set1_epi64(4));
    let one = _mm512_set1_epi64(1);
    // Byte order reversed within each 64-bit lane: the big-endian block.
    let to_be = _mm512_set4_epi64(
        0x0809_0a0b_0c0d_0e0f,
        0x0001_0203_0405_0607,
        0x0809_0a0b_0c0d_0e0f,
        0x0001_0203_0405_0607,
    );
    // Register i is base + 4i as 128-bit numbers: the offset goes to the low
    // halves, a wrapped low half carries into its high half. Computing each
    // register from `base` keeps the carries off a loop-carried chain.
    let mut offset = _mm512_setzero_si512();
    for reg in out.iter_mut() {
        let sum = _mm512_add_epi64(base, offset);
        let wrapped = _mm512_mask_cmplt_epu64_mask(low_lanes, sum, offset);
        let v = _mm512_mask_add_epi64(sum, wrapped >> 1, sum, one);
        *reg = _mm512_shuffle_epi8(v, to_be);
        offset = _mm512_add_epi64(offset, four);
    }
}

/// The keystream of `STEP_BLOCKS` counter blocks.
#[target_feature(enable = "avx512f,vaes")]
#[inline]
fn encrypt(ctr: &[__m512i], rk: &[__m512i; 15]) -> [__m512i; LANES] {
    let mut s: [__m512i; LANES] = core::array::from_fn(|j| _mm512_xor_si512(ctr[j], rk[0]));
    for k in &rk[1..14] {
        s = s.map(|x| _mm512_aesenc_epi128(x, *k));
    }
    s.map(|x| _mm512_aesenclast_epi128(x, rk[14]))
}

/// `words ±= keystream`, `words` being `STEP_BLOCKS` blocks of accumulator.
#[target_feature(enable = "avx512f")]
#[inline]
fn add_step<W: MaskWord, const SUB: bool>(words: &mut [W], ks: [__m512i; LANES]) {
    assert_eq!(core::mem::size_of_val(words), 64 * LANES);
    let p = words.as_mut_ptr().cast::<__m512i>();
    for (j, k) in ks.into_iter().enumerate() {
        // SAFETY: `words` is 64 * LANES bytes (asserted above), so register `j < LANES`
        // lies inside it; the load and store are unaligned; W is u32 or u64
        // (`MaskWord` is sealed), for which every bit pattern is a value.
        let a = unsafe { _mm512_loadu_si512(p.add(j)) };
        let r = match (W::BITS, SUB) {
            (32, false) => _mm512_add_epi32(a, k),
            (32, true) => _mm512_sub_epi32(a, k),
            (_, false) => _mm512_add_epi64(a, k),
            (_, true) => _mm512_sub_epi64(a, k),
        };
        // SAFETY: as for the load.
        unsafe { _mm512_storeu_si512(p.add(j), r) };
    }
}

/// `chunk ±= keystream` of one stream; `ctrs` holds the chunk's counter blocks.
#[target_feature(enable = "avx512f,vaes")]
fn add_stream<W: MaskWord, const SUB: bool>(
    chunk: &mut [W],
    ctrs: &[__m512i; CHUNK_REGS],
    rk: &[__m512i; 15],
) {
    let step_words = STEP_BLOCKS * W::PER_BLOCK;
    let mut steps = chunk.chunks_exact_mut(step_words);
    let mut ctr_steps = ctrs.chunks_exact(LANES);
    for (words, ctr) in (&mut steps).zip(&mut ctr_steps) {
        add_step::<W, SUB>(words, encrypt(ctr, rk));
    }
    let tail = steps.into_remainder();
    if !tail.is_empty() {
        // A partial step means a short chunk, so its counters are in `ctrs`.
        let ctr = ctr_steps.next().expect("counters for the partial step");
        add_partial_step::<W, SUB>(tail, encrypt(ctr, rk));
    }
}

/// [`add_step`] for fewer words than a step: the keystream past the end of
/// `words` is dropped.
#[target_feature(enable = "avx512f")]
fn add_partial_step<W: MaskWord, const SUB: bool>(words: &mut [W], ks: [__m512i; LANES]) {
    let per_reg = 16 * W::PER_BLOCK / 4;
    assert!(words.len() < per_reg * LANES);
    for (reg, k) in words.chunks_mut(per_reg).zip(ks) {
        // Lane mask of the register's words: fewer than 16 (8) only in the last one.
        let m = (1u32 << reg.len()) - 1;
        let p = reg.as_mut_ptr();
        if W::BITS == 32 {
            // SAFETY: the mask selects the `reg.len()` u32 words of `reg`, all in
            // bounds; masked-off lanes are neither read nor written (nor fault).
            let a = unsafe { _mm512_maskz_loadu_epi32(m as u16, p.cast()) };
            let r = if SUB {
                _mm512_sub_epi32(a, k)
            } else {
                _mm512_add_epi32(a, k)
            };
            // SAFETY: as for the load.
            unsafe { _mm512_mask_storeu_epi32(p.cast(), m as u16, r) };
        } else {
            // SAFETY: as above, with the `reg.len()` u64 words of `reg`.
            let a = unsafe { _mm512_maskz_loadu_epi64(m as u8, p.cast()) };
            let r = if SUB {
                _mm512_sub_epi64(a, k)
            } else {
                _mm512_add_epi64(a, k)
            };
            // SAFETY: as for the load.
            unsafe { _mm512_mask_storeu_epi64(p.cast(), m as u8, r) };
        }
    }
}

/// [`Vaes::expand_part`].
#[target_feature(enable = "aes,avx512f,avx512bw,vaes")]
fn expand_part<W: MaskWord>(acc: &mut [W], first_block: u128, keys: &[([u8; 32], Sign)]) {
    let mut schedules: Vec<(RoundKeys, Sign)> = keys
        .iter()
        .map(|(_, sign)| (RoundKeys([_mm_setzero_si128(); 15]), *sign))
        .collect();
    for ((key, _), (rk, _)) in keys.iter().zip(&mut schedules) {
        expand_key(key, rk);
    }
    let mut ctrs = [_mm512_setzero_si512(); CHUNK_REGS];
    let mut block = first_block;
    // One stream's round keys in every 128-bit lane, refilled per stream and
    // chunk and wiped once at the end (wiping per stream cost 4%).
    let mut wide = [_mm512_setzero_si512(); 15];
    for chunk in acc.chunks_mut(CHUNK_BLOCKS * W::PER_BLOCK) {
        counter_blocks(block, &mut ctrs);
        for (rk, sign) in &schedules {
            for (w, k) in wide.iter_mut().zip(&rk.0) {
                *w = _mm512_broadcast_i32x4(*k);
            }
            let rk = &wide;
            match sign {
                Sign::Add => add_stream::<W, false>(chunk, &ctrs, rk),
                Sign::Subtract => add_stream::<W, true>(chunk, &ctrs, rk),
            }
        }
        block = block.wrapping_add(CHUNK_BLOCKS as u128);
    }
    wide.zeroize();
}
