//! Mask expansion for secure aggregation: a cryptographic PRG keyed by the full
//! 256-bit seed, fused with wrapping addition into an accumulator.
//!
//! # The PRG: AES-256 in counter mode
//!
//! Every mask is the keystream of AES-256-CTR (NIST SP 800-38A, 128-bit
//! big-endian counter block starting at zero) under a key derived from the
//! whole 32-byte seed and the context the mask is used in (see [`derive_key`]).
//! Two implementations compute it, bit for bit the same ([`aes_backend`] says
//! which one runs): where the CPU has VAES and AVX-512 (AMD Zen 4, Intel Ice
//! Lake and Sapphire Rapids), our own `vaes` module encrypts four blocks per
//! 512-bit register; elsewhere the `aes` crate picks AES-NI at run time when
//! the CPU has it and falls back to its constant-time bitsliced software
//! implementation otherwise ([`aes_hardware`] says which one runs).
//!
//! Chosen by measurement on the target class of machine (AMD EPYC, AES-NI,
//! AVX2/AVX-512), one core, 21 streams of 100,000 u32 words (one meter of
//! SecAgg+ with k = 20 neighbours plus its self mask, 8.4 MB of keystream),
//! fused with the wrapping add:
//!
//! | PRG (crate)                          | time    | throughput |
//! |--------------------------------------|---------|------------|
//! | AES-128-CTR (`aes` 0.8 + `ctr` 0.9)  | 0.95 ms | 8.9 GB/s   |
//! | AES-256-CTR (`aes` 0.8 + `ctr` 0.9)  | 1.18 ms | 7.1 GB/s   |
//! | AES-256-CTR (VAES + AVX-512, `vaes`) | 0.52 ms | 16.3 GB/s  |
//! | ChaCha20 (`chacha20` 0.9, AVX2)      | 5.1 ms  | 1.6 GB/s   |
//! | ChaCha8 (`chacha20` 0.9, AVX2)       | 2.1 ms  | 4.0 GB/s   |
//!
//! AES-256 keeps the full 256-bit key strength of the seed and still meets the
//! 1.5 ms budget; AES-128 would be faster but would cut the key to 128 bits,
//! and ChaCha20 misses the budget by 3.4x on this hardware. The AES-256
//! keystream alone runs at 8.0 GB/s (OpenSSL's AES-256-CTR on the same core:
//! 8.6 GB/s), so the fused add costs about 12%. Split over both cores the same
//! call takes 0.63-0.67 ms when the second core is otherwise idle.
//!
//! The VAES row was measured later, on a 2-core AMD EPYC (Zen 4) VM at about
//! 3.6 GHz, by `prg_speed` in alternating runs with the `aes` crate, which took
//! 1.60 ms (5.2 GB/s) there; OpenSSL's AES-256-CTR, which runs on AES-NI's
//! 128-bit registers, gave 7.8-8.1 GB/s. At 0.52 ms the AES units issue about
//! one 512-bit round per cycle, their peak; the fused add hides behind them.
//! Over both cores the call takes 0.27-0.30 ms when the second core is idle.
//!
//! # From keystream to masks
//!
//! The keystream is read as little-endian words of the accumulator's width:
//! mask word `i` of a u32 stream is keystream bytes `4i..4i+4`, of a u64 stream
//! bytes `8i..8i+8`. A mask modulo 2^b is the word's low `b` bits. Because 2^b
//! divides 2^32 (2^64), the accumulator adds whole words with wrapping
//! arithmetic and is reduced modulo 2^b once, at the end of the call.
//!
//! # The hot loop
//!
//! The accumulator is walked in chunks of [`CHUNK_BLOCKS`] AES blocks (4 KiB
//! of keystream); for each chunk every stream writes its keystream into one
//! L1-resident buffer, which is immediately added to (or subtracted from) the
//! chunk. No mask is ever materialised in full. The VAES path walks the same
//! chunks without the buffer: it builds a chunk's counter blocks once (they
//! are the same for every stream), and each stream encrypts them 32 blocks at
//! a time and adds the keystream to the chunk straight from registers. Large
//! calls are split into contiguous parts, one per rayon worker, each starting
//! its counters at the part's block offset.

use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{KeyIvInit, StreamCipherCore};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::error::{CoreError, Result};

#[cfg(target_arch = "x86_64")]
mod vaes;

/// Length in bytes of a mask seed (a pairwise key or a self-mask seed).
pub const SEED_LEN: usize = 32;

/// A mask seed: 256 uniformly random bits, all of which key the PRG.
pub type Seed = [u8; SEED_LEN];

/// Domain-separation tag that opens every key derivation; bump the version if
/// anything about the derivation or the keystream layout changes.
pub const KEY_DOMAIN: &[u8] = b"gridsim/secagg/mask-prg/v1/aes-256-ctr";

/// AES blocks of keystream per chunk of the accumulator (4 KiB).
pub const CHUNK_BLOCKS: usize = 256;

/// Below this many accumulator words per worker, splitting across threads
/// costs more than it saves.
const MIN_WORDS_PER_PART: usize = 16 * 1024;

type AesCtr = ctr::CtrCore<aes::Aes256Enc, ctr::flavors::Ctr128BE>;
type Block = GenericArray<u8, U16>;

/// Where a mask is used: every field goes into the key derivation, so the same
/// seed never yields the same keystream in two contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskContext<'a> {
    /// Identifier of the aggregation session (e.g. a random 16-byte id fixed
    /// at enrolment). Any length up to `u32::MAX` bytes.
    pub session: &'a [u8],
    /// Round number within the session.
    pub round: u64,
    /// Which vector of the round is masked (0 for the model update; other
    /// values for further vectors summed in the same round).
    pub vector: u32,
}

/// Whether a mask is added to or subtracted from the accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    Add,
    Subtract,
}

/// One mask to expand: its seed, its stream id (see [`pair_stream_id`] and
/// [`self_stream_id`]) and whether it is added or subtracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskStream {
    pub seed: Seed,
    pub stream: u64,
    pub sign: Sign,
}

/// Stream id of the pairwise mask between meters `a` and `b`: the unordered
/// pair `(min, max)` as `min << 32 | max`, so both meters derive the same key.
pub fn pair_stream_id(a: u32, b: u32) -> u64 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (u64::from(lo) << 32) | u64::from(hi)
}

/// Stream id of meter `meter`'s self mask: the pair `(meter, meter)`, which no
/// pairwise mask can use.
pub fn self_stream_id(meter: u32) -> u64 {
    pair_stream_id(meter, meter)
}

/// True when AES runs on the CPU's AES instructions (AES-NI) rather than the
/// (correct, constant-time, several times slower) software fallback.
pub fn aes_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

/// Which AES implementation [`expand_masks`] runs on this CPU: `"vaes-avx512"`
/// (four blocks per 512-bit register), `"aes-ni"` (the `aes` crate on AES-NI)
/// or `"software"` (its bitsliced fallback).
pub fn aes_backend() -> &'static str {
    match Backend::detect() {
        #[cfg(target_arch = "x86_64")]
        Backend::Vaes(_) => "vaes-avx512",
        Backend::Portable if aes_hardware() => "aes-ni",
        Backend::Portable => "software",
    }
}

/// The AES-256 key of one mask stream.
///
/// `key = SHA-256(KEY_DOMAIN || u32le(len(session)) || session || u64le(round)
///                || u32le(vector) || u64le(stream) || u8(word_bits) || seed)`
///
/// where `word_bits` is 32 or 64, the width of the accumulator the keystream is
/// read into. Every field before the seed has a fixed length or a length
/// prefix, so two different contexts never encode to the same input. The
/// counter block starts at zero: the key is unique per context, so no nonce is
/// needed on top of it.
pub fn derive_key(
    seed: &Seed,
    ctx: &MaskContext<'_>,
    stream: u64,
    word_bits: u32,
) -> Result<[u8; 32]> {
    if word_bits != 32 && word_bits != 64 {
        return Err(CoreError::InvalidArgument(format!(
            "word width must be 32 or 64 bits, got {word_bits}"
        )));
    }
    let session_len = u32::try_from(ctx.session.len()).map_err(|_| {
        CoreError::InvalidArgument(format!(
            "session id of {} bytes is longer than 2^32 - 1",
            ctx.session.len()
        ))
    })?;
    let mut h = Sha256::new();
    h.update(KEY_DOMAIN);
    h.update(session_len.to_le_bytes());
    h.update(ctx.session);
    h.update(ctx.round.to_le_bytes());
    h.update(ctx.vector.to_le_bytes());
    h.update(stream.to_le_bytes());
    h.update([word_bits as u8]);
    h.update(seed);
    Ok(h.finalize().into())
}

mod sealed {
    /// Only u32 and u64 are accumulator words: the vector path reads and
    /// writes them as raw bytes.
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// An accumulator word: u32 or u64, filled from little-endian keystream bytes.
pub trait MaskWord: sealed::Sealed + Copy + Default + Send + Sync {
    const BITS: u32;
    /// Words per 16-byte AES block (at most 4).
    const PER_BLOCK: usize;
    /// `acc += block` word by word; `acc` holds exactly `PER_BLOCK` words.
    fn add_block(acc: &mut [Self], block: &[u8; 16]);
    /// `acc -= block` word by word; `acc` holds exactly `PER_BLOCK` words.
    fn sub_block(acc: &mut [Self], block: &[u8; 16]);
    /// `acc mod 2^bits`, in place.
    fn reduce(acc: &mut [Self], bits: u32);
}

impl MaskWord for u32 {
    const BITS: u32 = 32;
    const PER_BLOCK: usize = 4;

    #[inline(always)]
    fn add_block(acc: &mut [u32], k: &[u8; 16]) {
        let acc: &mut [u32; 4] = acc.try_into().expect("one block of words");
        for (j, a) in acc.iter_mut().enumerate() {
            let w = u32::from_le_bytes([k[4 * j], k[4 * j + 1], k[4 * j + 2], k[4 * j + 3]]);
            *a = a.wrapping_add(w);
        }
    }

    #[inline(always)]
    fn sub_block(acc: &mut [u32], k: &[u8; 16]) {
        let acc: &mut [u32; 4] = acc.try_into().expect("one block of words");
        for (j, a) in acc.iter_mut().enumerate() {
            let w = u32::from_le_bytes([k[4 * j], k[4 * j + 1], k[4 * j + 2], k[4 * j + 3]]);
            *a = a.wrapping_sub(w);
        }
    }

    fn reduce(acc: &mut [u32], bits: u32) {
        if bits < 32 {
            let m = (1u32 << bits) - 1;
            acc.iter_mut().for_each(|a| *a &= m);
        }
    }
}

impl MaskWord for u64 {
    const BITS: u32 = 64;
    const PER_BLOCK: usize = 2;

    #[inline(always)]
    fn add_block(acc: &mut [u64], k: &[u8; 16]) {
        let acc: &mut [u64; 2] = acc.try_into().expect("one block of words");
        for (j, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(k[8 * j..8 * j + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_add(w);
        }
    }

    #[inline(always)]
    fn sub_block(acc: &mut [u64], k: &[u8; 16]) {
        let acc: &mut [u64; 2] = acc.try_into().expect("one block of words");
        for (j, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(k[8 * j..8 * j + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_sub(w);
        }
    }

    fn reduce(acc: &mut [u64], bits: u32) {
        if bits < 64 {
            let m = (1u64 << bits) - 1;
            acc.iter_mut().for_each(|a| *a &= m);
        }
    }
}

/// `acc[i] = (acc[i] ± mask_s[i] for every stream s) mod 2^bits`, u32 words.
///
/// `bits` is in `1..=32`. `threads` is the number of parts the accumulator is
/// split into for rayon's pool (0: as many as the pool has workers; 1: run on
/// the calling thread); small calls always run on the calling thread.
pub fn expand_masks_u32(
    acc: &mut [u32],
    streams: &[MaskStream],
    ctx: &MaskContext<'_>,
    bits: u32,
    threads: usize,
) -> Result<()> {
    expand_masks(acc, streams, ctx, bits, threads)
}

/// `acc[i] = (acc[i] ± mask_s[i] for every stream s) mod 2^bits`, u64 words;
/// `bits` is in `1..=64`. See [`expand_masks_u32`].
pub fn expand_masks_u64(
    acc: &mut [u64],
    streams: &[MaskStream],
    ctx: &MaskContext<'_>,
    bits: u32,
    threads: usize,
) -> Result<()> {
    expand_masks(acc, streams, ctx, bits, threads)
}

/// The generic form of [`expand_masks_u32`] and [`expand_masks_u64`].
pub fn expand_masks<W: MaskWord>(
    acc: &mut [W],
    streams: &[MaskStream],
    ctx: &MaskContext<'_>,
    bits: u32,
    threads: usize,
) -> Result<()> {
    expand_masks_on(Backend::detect(), acc, streams, ctx, bits, threads)
}

/// How the keystream is computed; every backend gives the same bits.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// Four blocks per 512-bit register (VAES + AVX-512).
    #[cfg(target_arch = "x86_64")]
    Vaes(vaes::Vaes),
    /// The `aes` crate: AES-NI on `xmm` registers, or its software fallback.
    Portable,
}

impl Backend {
    /// The fastest backend this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = vaes::Vaes::detect() {
            return Backend::Vaes(v);
        }
        Backend::Portable
    }
}

/// [`expand_masks`] on a given backend.
fn expand_masks_on<W: MaskWord>(
    backend: Backend,
    acc: &mut [W],
    streams: &[MaskStream],
    ctx: &MaskContext<'_>,
    bits: u32,
    threads: usize,
) -> Result<()> {
    if bits == 0 || bits > W::BITS {
        return Err(CoreError::InvalidArgument(format!(
            "modulus bits must be in 1..={}, got {bits}",
            W::BITS
        )));
    }
    // Derive every key before touching `acc`, so a rejected call changes nothing.
    let mut keys = streams
        .iter()
        .map(|s| derive_key(&s.seed, ctx, s.stream, W::BITS).map(|k| (k, s.sign)))
        .collect::<Result<Vec<_>>>()?;

    let parts = if threads == 0 {
        rayon::current_num_threads()
    } else {
        threads
    };
    let parts = parts.min(acc.len() / MIN_WORDS_PER_PART).max(1);
    if parts == 1 {
        expand_part(backend, acc, 0, &keys);
    } else {
        // Parts start on block boundaries so each can seek its counters.
        let per_part = acc.len().div_ceil(parts).div_ceil(W::PER_BLOCK) * W::PER_BLOCK;
        acc.par_chunks_mut(per_part)
            .enumerate()
            .for_each(|(i, part)| {
                expand_part(backend, part, (i * per_part / W::PER_BLOCK) as u128, &keys)
            });
    }
    keys.iter_mut().for_each(|(k, _)| k.zeroize());
    W::reduce(acc, bits);
    Ok(())
}

/// Adds the keystreams of `keys`, starting at AES block `first_block`, into `acc`.
fn expand_part<W: MaskWord>(
    backend: Backend,
    acc: &mut [W],
    first_block: u128,
    keys: &[([u8; 32], Sign)],
) {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Vaes(v) => v.expand_part(acc, first_block, keys),
        Backend::Portable => expand_part_portable(acc, first_block, keys),
    }
}

/// [`expand_part`] on the `aes` crate (AES-NI `xmm` or software).
fn expand_part_portable<W: MaskWord>(acc: &mut [W], first_block: u128, keys: &[([u8; 32], Sign)]) {
    let iv = first_block.to_be_bytes();
    let mut ciphers: Vec<(AesCtr, Sign)> = keys
        .iter()
        .map(|(k, sign)| (AesCtr::new(k.into(), &iv.into()), *sign))
        .collect();
    let mut buf = vec![Block::default(); CHUNK_BLOCKS];
    for chunk in acc.chunks_mut(CHUNK_BLOCKS * W::PER_BLOCK) {
        let nblocks = chunk.len().div_ceil(W::PER_BLOCK);
        let blocks = &mut buf[..nblocks];
        let full = chunk.len() / W::PER_BLOCK * W::PER_BLOCK;
        for (cipher, sign) in ciphers.iter_mut() {
            cipher.write_keystream_blocks(blocks);
            let (head, tail) = chunk.split_at_mut(full);
            let words = head.chunks_exact_mut(W::PER_BLOCK).zip(blocks.iter());
            match sign {
                Sign::Add => words.for_each(|(a, k)| W::add_block(a, k.as_ref())),
                Sign::Subtract => words.for_each(|(a, k)| W::sub_block(a, k.as_ref())),
            }
            if !tail.is_empty() {
                // The last, partial block of the vector: pad to a whole block.
                let mut pad = [W::default(); 4];
                pad[..tail.len()].copy_from_slice(tail);
                let k = blocks
                    .last()
                    .expect("a partial block was generated")
                    .as_ref();
                match sign {
                    Sign::Add => W::add_block(&mut pad[..W::PER_BLOCK], k),
                    Sign::Subtract => W::sub_block(&mut pad[..W::PER_BLOCK], k),
                }
                tail.copy_from_slice(&pad[..tail.len()]);
            }
        }
    }
}

/// Session of [`KeystreamRng`]'s key derivations: a context of its own, apart from the masks'.
const RNG_SESSION: &[u8] = b"gridsim/keystream-rng/v1";

/// Words [`KeystreamRng`] expands at a time (8 KiB of keystream).
const RNG_CHUNK_WORDS: usize = 1024;

/// A CSPRNG on this module's AES-256-CTR keystream, for bulk randomness such as
/// the stochastic rounding of quantisation (one 64-bit word per value).
///
/// Chunk `c` of its output is the u64 mask stream `c` of `seed` in a context of
/// its own ([`derive_key`] with the session `gridsim/keystream-rng/v1`), so it
/// shares no keystream with any mask. It runs at the mask engine's speed (tens of
/// GB/s with VAES) where rand_chacha's ChaCha20 gives about 1 GB/s: quantising
/// 7,876 values takes 26 us with it and took 52 us with ChaCha20 (same run, Zen 5).
pub struct KeystreamRng {
    seed: Seed,
    chunk: u64,
    words: Vec<u64>,
    next: usize,
}

impl rand_core::SeedableRng for KeystreamRng {
    type Seed = Seed;

    /// The generator of `seed` (secret and fresh, e.g. 32 bytes from the OS).
    fn from_seed(seed: Seed) -> Self {
        KeystreamRng {
            seed,
            chunk: 0,
            words: Vec::new(),
            next: 0,
        }
    }
}

impl KeystreamRng {
    fn refill(&mut self) {
        self.words.clear();
        self.words.resize(RNG_CHUNK_WORDS, 0);
        let stream = MaskStream {
            seed: self.seed,
            stream: self.chunk,
            sign: Sign::Add,
        };
        let ctx = MaskContext {
            session: RNG_SESSION,
            round: 0,
            vector: 0,
        };
        // Zero plus the keystream is the keystream; 64 bits, so nothing is reduced.
        expand_masks(&mut self.words, &[stream], &ctx, 64, 1)
            .expect("64-bit words and a short session are always accepted");
        self.chunk += 1;
        self.next = 0;
    }
}

impl Drop for KeystreamRng {
    fn drop(&mut self) {
        self.seed.zeroize();
        self.words.zeroize();
    }
}

impl rand_core::RngCore for KeystreamRng {
    fn next_u64(&mut self) -> u64 {
        if self.next == self.words.len() {
            self.refill();
        }
        let w = self.words[self.next];
        self.next += 1;
        w
    }

    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> core::result::Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for KeystreamRng {}

/// One meter's masking at benchmark size, for a quick look without Python:
/// `cargo test --release -p gridsim-core -- --ignored --nocapture prg_speed`.
#[cfg(test)]
#[test]
#[ignore = "timing, not a check"]
fn prg_speed() {
    let ctx = MaskContext {
        session: b"bench",
        round: 1,
        vector: 0,
    };
    let streams: Vec<MaskStream> = (0..1340u32)
        .map(|i| MaskStream {
            seed: [i as u8; 32],
            stream: u64::from(i),
            sign: Sign::Add,
        })
        .collect();
    let mut acc = vec![0u32; 100_000];
    let mut backends = vec![("aes crate", Backend::Portable)];
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = vaes::Vaes::detect() {
        backends.insert(0, ("vaes-avx512", Backend::Vaes(v)));
    }
    for (m, threads) in [(21, 1), (21, 2), (1340, 1), (1340, 2)] {
        let streams = &streams[..m];
        for &(name, backend) in &backends {
            let mut times: Vec<f64> = (0..51)
                .map(|_| {
                    let t = std::time::Instant::now();
                    expand_masks_on(backend, &mut acc, streams, &ctx, 32, threads).unwrap();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let gbps = (m * acc.len() * 4) as f64 / times[25] / 1e9;
            println!(
                "{name:>11} streams={m} threads={threads}: median {:.3} ms, {gbps:.2} GB/s",
                times[25] * 1e3
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::unhex;

    fn ctx() -> MaskContext<'static> {
        MaskContext {
            session: b"kat-session",
            round: 7,
            vector: 0,
        }
    }

    fn seed(fill: u8) -> Seed {
        core::array::from_fn(|i| fill.wrapping_add(i as u8))
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first `blocks` blocks of AES-256-CTR under `key`, the counter from zero,
    /// straight from the `aes`/`ctr` crates: a reference independent of the engine.
    fn reference_keystream(key: &[u8; 32], blocks: usize) -> Vec<u8> {
        let mut c = AesCtr::new(key.into(), &[0u8; 16].into());
        let mut out = vec![Block::default(); blocks];
        c.write_keystream_blocks(&mut out);
        out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    fn mask_u32(seed: Seed, ctx: &MaskContext<'_>, stream: u64, d: usize, bits: u32) -> Vec<u32> {
        let mut acc = vec![0u32; d];
        let s = MaskStream {
            seed,
            stream,
            sign: Sign::Add,
        };
        expand_masks_u32(&mut acc, &[s], ctx, bits, 1).unwrap();
        acc
    }

    #[test]
    fn aes256_ctr_matches_sp800_38a_f5_5() {
        // NIST SP 800-38A F.5.5 (CTR-AES256.Encrypt), first two blocks.
        let key = unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let iv = unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let pt = unhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let ct = "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5";
        let mut c = AesCtr::new(key.as_slice().into(), iv.as_slice().into());
        let mut blocks = [Block::default(); 2];
        c.write_keystream_blocks(&mut blocks);
        let out: Vec<u8> = blocks
            .iter()
            .flat_map(|b| b.iter().copied())
            .zip(&pt)
            .map(|(k, p)| k ^ p)
            .collect();
        assert_eq!(hex(&out), ct);
    }

    #[test]
    fn key_derivation_known_answer() {
        // SHA-256 of the documented encoding, computed independently with
        // Python's hashlib (tests/data/secagg/make_kat.py).
        let key = derive_key(&seed(0), &ctx(), pair_stream_id(3, 9), 32).unwrap();
        assert_eq!(
            hex(&key),
            "ffd00ac601401edf0bc9d49b19fd6909d28e11df452b745803a25bce8382db72"
        );
    }

    #[test]
    fn mask_words_known_answer() {
        // tests/data/secagg/prg_kat.json vectors 0 and 4, computed by the
        // reference on hashlib + OpenSSL (tests/data/secagg/make_kat.py).
        let ctx = ctx();
        let s0: Seed = unhex("c00c12d4781b205aeb9e4c7789d8220b80b1630444ba1987c327369142421df9")
            .try_into()
            .unwrap();
        let m = mask_u32(s0, &ctx, pair_stream_id(3, 9), 4, 32);
        assert_eq!(m, [2667522577, 1912139135, 2727139106, 805256084]);
        let s4: Seed = unhex("651f32ae81903760a07a4a7a33087aac132fd439674c4af8dcb53a1d17a508b8")
            .try_into()
            .unwrap();
        let mut acc = vec![0u64; 3];
        let st = MaskStream {
            seed: s4,
            stream: pair_stream_id(9, 3),
            sign: Sign::Add,
        };
        expand_masks_u64(&mut acc, &[st], &MaskContext { vector: 1, ..ctx }, 64, 1).unwrap();
        assert_eq!(
            acc,
            [
                4058109162608715859,
                3322417984142743078,
                12736496445031892910
            ]
        );
    }

    #[test]
    fn every_context_field_changes_the_key() {
        let s = seed(1);
        let base = derive_key(&s, &ctx(), 5, 32).unwrap();
        let variants = [
            derive_key(&seed(2), &ctx(), 5, 32).unwrap(),
            derive_key(
                &s,
                &MaskContext {
                    session: b"kat-sessioN",
                    ..ctx()
                },
                5,
                32,
            )
            .unwrap(),
            derive_key(&s, &MaskContext { round: 8, ..ctx() }, 5, 32).unwrap(),
            derive_key(&s, &MaskContext { vector: 1, ..ctx() }, 5, 32).unwrap(),
            derive_key(&s, &ctx(), 6, 32).unwrap(),
            derive_key(&s, &ctx(), 5, 64).unwrap(),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
        // Length prefix: moving a byte between session and round must matter.
        let a = MaskContext {
            session: b"ab",
            round: 0,
            vector: 0,
        };
        let b = MaskContext {
            session: b"a",
            round: u64::from(b'b'),
            vector: 0,
        };
        assert_ne!(
            derive_key(&s, &a, 0, 32).unwrap(),
            derive_key(&s, &b, 0, 32).unwrap()
        );
    }

    #[test]
    fn mask_is_keystream_read_little_endian() {
        let s = seed(3);
        let key = derive_key(&s, &ctx(), 11, 32).unwrap();
        let ks = reference_keystream(&key, 2);
        let m = mask_u32(s, &ctx(), 11, 7, 32);
        for (i, w) in m.iter().enumerate() {
            assert_eq!(
                *w,
                u32::from_le_bytes(ks[4 * i..4 * i + 4].try_into().unwrap())
            );
        }
        let m20 = mask_u32(s, &ctx(), 11, 7, 20);
        for (a, b) in m.iter().zip(&m20) {
            assert_eq!(a & 0xfffff, *b);
        }
    }

    #[test]
    fn pairwise_masks_cancel_and_self_masks_remain() {
        let d = 5000;
        let bits = 24;
        let pair = MaskStream {
            seed: seed(9),
            stream: pair_stream_id(1, 2),
            sign: Sign::Add,
        };
        let own = MaskStream {
            seed: seed(4),
            stream: self_stream_id(1),
            sign: Sign::Add,
        };
        let mut u = vec![5u32; d];
        expand_masks_u32(&mut u, &[pair, own], &ctx(), bits, 1).unwrap();
        let mut v = vec![6u32; d];
        expand_masks_u32(
            &mut v,
            &[MaskStream {
                sign: Sign::Subtract,
                ..pair
            }],
            &ctx(),
            bits,
            1,
        )
        .unwrap();
        let mut sum: Vec<u32> = u
            .iter()
            .zip(&v)
            .map(|(a, b)| a.wrapping_add(*b) & 0xffffff)
            .collect();
        assert!(sum.iter().any(|&x| x != 11));
        expand_masks_u32(
            &mut sum,
            &[MaskStream {
                sign: Sign::Subtract,
                ..own
            }],
            &ctx(),
            bits,
            1,
        )
        .unwrap();
        assert_eq!(sum, vec![11u32; d]);
    }

    #[test]
    fn parallel_split_equals_serial_for_odd_lengths() {
        let streams: Vec<MaskStream> = (0..5)
            .map(|i| MaskStream {
                seed: seed(i),
                stream: u64::from(i),
                sign: if i % 2 == 0 {
                    Sign::Add
                } else {
                    Sign::Subtract
                },
            })
            .collect();
        for d in [0, 1, 3, 1023, 1025, 40_001, 100_003] {
            let init: Vec<u32> = (0..d as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let mut serial = init.clone();
            expand_masks_u32(&mut serial, &streams, &ctx(), 31, 1).unwrap();
            for threads in [0, 2, 3, 7] {
                let mut par = init.clone();
                expand_masks_u32(&mut par, &streams, &ctx(), 31, threads).unwrap();
                assert_eq!(par, serial, "d={d} threads={threads}");
            }
            let init64: Vec<u64> = init.iter().map(|&x| u64::from(x) << 20).collect();
            let mut serial64 = init64.clone();
            expand_masks_u64(&mut serial64, &streams, &ctx(), 64, 1).unwrap();
            let mut par64 = init64.clone();
            expand_masks_u64(&mut par64, &streams, &ctx(), 64, 2).unwrap();
            assert_eq!(par64, serial64, "u64 d={d}");
        }
    }

    #[test]
    fn u64_words_use_eight_keystream_bytes() {
        let s = seed(5);
        let key = derive_key(&s, &ctx(), 2, 64).unwrap();
        let ks = reference_keystream(&key, 3);
        let mut acc = vec![0u64; 5];
        let st = MaskStream {
            seed: s,
            stream: 2,
            sign: Sign::Add,
        };
        expand_masks_u64(&mut acc, &[st], &ctx(), 64, 1).unwrap();
        for (i, w) in acc.iter().enumerate() {
            assert_eq!(
                *w,
                u64::from_le_bytes(ks[8 * i..8 * i + 8].try_into().unwrap())
            );
        }
    }

    #[test]
    fn rejects_bad_bits_without_touching_acc() {
        let mut acc = vec![1u32; 4];
        let st = MaskStream {
            seed: seed(0),
            stream: 0,
            sign: Sign::Add,
        };
        assert!(expand_masks_u32(&mut acc, &[st], &ctx(), 0, 1).is_err());
        assert!(expand_masks_u32(&mut acc, &[st], &ctx(), 33, 1).is_err());
        assert_eq!(acc, vec![1u32; 4]);
        let mut acc64 = vec![1u64; 4];
        assert!(expand_masks_u64(&mut acc64, &[st], &ctx(), 65, 1).is_err());
    }

    #[test]
    fn masks_look_uniform() {
        // Byte-level chi-square over 400 kB of one mask: 255 degrees of freedom,
        // the 1e-6 false-alarm threshold is about 368.
        let m = mask_u32(seed(7), &ctx(), 1, 100_000, 32);
        let mut counts = [0u64; 256];
        for w in &m {
            for b in w.to_le_bytes() {
                counts[b as usize] += 1;
            }
        }
        let expected = (m.len() * 4) as f64 / 256.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 368.0, "chi2 = {chi2}");
    }

    #[test]
    fn stream_ids_are_symmetric_and_distinct() {
        assert_eq!(pair_stream_id(4, 9), pair_stream_id(9, 4));
        assert_eq!(pair_stream_id(4, 9), (4u64 << 32) | 9);
        assert_ne!(self_stream_id(4), pair_stream_id(4, 9));
    }

    /// Every backend this CPU runs, by name.
    fn backends() -> Vec<(&'static str, Backend)> {
        let mut b = vec![("portable", Backend::Portable)];
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = vaes::Vaes::detect() {
            b.push(("vaes-avx512", Backend::Vaes(v)));
        }
        b
    }

    /// The VAES backend, or None (with a note) where the CPU lacks it.
    fn vaes_backend() -> Option<Backend> {
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = vaes::Vaes::detect() {
            return Some(Backend::Vaes(v));
        }
        eprintln!("skipped: this CPU lacks VAES + AVX-512 ({})", aes_backend());
        None
    }

    /// `n` keystream blocks of AES-256-CTR under `key` from counter block
    /// `first`, through `backend`'s fused add into a zero accumulator.
    fn keystream(backend: Backend, key: &[u8; 32], first: u128, n: usize) -> Vec<u8> {
        let mut acc = vec![0u32; 4 * n];
        expand_part(backend, &mut acc, first, &[(*key, Sign::Add)]);
        acc.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn every_backend_matches_fips_197_and_sp800_38a() {
        // FIPS 197 C.3: one AES-256 block, its plaintext taken as the counter.
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let pt = u128::from_be_bytes(
            unhex("00112233445566778899aabbccddeeff")
                .try_into()
                .unwrap(),
        );
        // SP 800-38A F.5.5 (CTR-AES256.Encrypt): four blocks, keystream = ct ^ pt.
        let key5: [u8; 32] =
            unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                .try_into()
                .unwrap();
        let iv = u128::from_be_bytes(
            unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
                .try_into()
                .unwrap(),
        );
        let pt5 = unhex(concat!(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
        ));
        let ct5 = unhex(concat!(
            "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5",
            "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"
        ));
        for (name, b) in backends() {
            assert_eq!(
                hex(&keystream(b, &key, pt, 1)),
                "8ea2b7ca516745bfeafc49904b496089",
                "{name}"
            );
            let ks = keystream(b, &key5, iv, 4);
            let ct: Vec<u8> = ks.iter().zip(&pt5).map(|(k, p)| k ^ p).collect();
            assert_eq!(ct, ct5, "{name}");
        }
    }

    /// splitmix64: a small deterministic generator for the randomised tests.
    struct Mix(u64);

    impl Mix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn key(&mut self) -> [u8; 32] {
            let mut k = [0u8; 32];
            for c in k.chunks_mut(8) {
                c.copy_from_slice(&self.next().to_le_bytes());
            }
            k
        }
    }

    /// Counter blocks where the 128-bit counter carries or wraps: past 2^32,
    /// 2^64 (low half into high half), 2^96 and 2^128 (back to zero), at and
    /// a little before each boundary, plus some anywhere.
    fn awkward_first_blocks(rng: &mut Mix) -> Vec<u128> {
        let mut firsts = vec![0, 1, 7];
        for edge in [1u128 << 32, 1 << 64, 1 << 96, (1 << 64) * 3, u128::MAX] {
            for back in [1, 2, 3, 4, 5, 31, 32, 33, 255, 256, 257, 300, 1000] {
                firsts.push(edge.wrapping_sub(back));
                firsts.push(edge.wrapping_sub(back).wrapping_add(1));
            }
        }
        for _ in 0..20 {
            firsts.push(u128::from(rng.next()) << 64 | u128::from(rng.next()));
        }
        firsts
    }

    /// `expand_part` on both backends, for one shape; the accumulators must agree.
    fn same_on_both<W: MaskWord + std::fmt::Debug + PartialEq>(
        vaes: Backend,
        rng: &mut Mix,
        len: usize,
        first: u128,
        keys: &[([u8; 32], Sign)],
        from: impl Fn(u64) -> W,
    ) {
        // Guard words past the end: nothing may be written outside `acc`.
        let init: Vec<W> = (0..len + 40).map(|_| from(rng.next())).collect();
        let mut want = init.clone();
        expand_part(Backend::Portable, &mut want[..len], first, keys);
        let mut got = init;
        expand_part(vaes, &mut got[..len], first, keys);
        assert_eq!(
            got,
            want,
            "{} bits, len {len}, first block {first:#x}",
            W::BITS
        );
    }

    #[test]
    fn vaes_equals_portable_on_random_shapes() {
        let Some(vaes) = vaes_backend() else { return };
        let mut rng = Mix(0x5eed);
        let firsts = awkward_first_blocks(&mut rng);
        // Lengths around the step (32 blocks) and chunk (256 blocks) sizes in
        // both word widths, then random ones.
        let mut lens = vec![0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17];
        for blocks in [32, 64, 256, 512, 1024] {
            for words in [4 * blocks, 2 * blocks] {
                lens.extend([words - 1, words, words + 1, words + 5]);
            }
        }
        for round in 0..400 {
            let len = if round < lens.len() {
                lens[round]
            } else {
                rng.below(5000)
            };
            let first = firsts[rng.below(firsts.len())];
            let keys: Vec<([u8; 32], Sign)> = (0..1 + rng.below(4))
                .map(|_| {
                    let sign = if rng.next() & 1 == 0 {
                        Sign::Add
                    } else {
                        Sign::Subtract
                    };
                    (rng.key(), sign)
                })
                .collect();
            same_on_both(vaes, &mut rng, len, first, &keys, |x| x as u32);
            same_on_both(vaes, &mut rng, len, first, &keys, |x| x);
        }
    }

    #[test]
    fn vaes_counter_carries_like_the_ctr_crate() {
        // Every awkward start, with enough blocks to cross the boundary
        // inside a chunk, in the partial step, and across chunks.
        let Some(vaes) = vaes_backend() else { return };
        let mut rng = Mix(128);
        let key = rng.key();
        for first in awkward_first_blocks(&mut rng) {
            for n in [1, 5, 40, 300, 1100] {
                assert_eq!(
                    keystream(vaes, &key, first, n),
                    keystream(Backend::Portable, &key, first, n),
                    "first block {first:#x}, {n} blocks"
                );
            }
        }
    }

    #[test]
    fn vaes_equals_portable_through_expand_masks() {
        // The whole call: key derivation, the rayon split, the final reduce.
        let Some(vaes) = vaes_backend() else { return };
        let mut rng = Mix(77);
        for round in 0..24 {
            let d = [0, 1, 33, 16 * 1024 + 3, 40_001, 100_003][round % 6] + rng.below(9);
            let streams: Vec<MaskStream> = (0..1 + rng.below(6))
                .map(|i| MaskStream {
                    seed: rng.key(),
                    stream: i as u64,
                    sign: if rng.next() & 1 == 0 {
                        Sign::Add
                    } else {
                        Sign::Subtract
                    },
                })
                .collect();
            let threads = rng.below(4);
            let bits32 = 1 + rng.below(32) as u32;
            let init: Vec<u32> = (0..d).map(|_| rng.next() as u32).collect();
            let mut want = init.clone();
            expand_masks_on(Backend::Portable, &mut want, &streams, &ctx(), bits32, 1).unwrap();
            let mut got = init;
            expand_masks_on(vaes, &mut got, &streams, &ctx(), bits32, threads).unwrap();
            assert_eq!(got, want, "u32 d={d} threads={threads} bits={bits32}");

            let bits64 = 1 + rng.below(64) as u32;
            let init: Vec<u64> = (0..d).map(|_| rng.next()).collect();
            let mut want = init.clone();
            expand_masks_on(Backend::Portable, &mut want, &streams, &ctx(), bits64, 1).unwrap();
            let mut got = init;
            expand_masks_on(vaes, &mut got, &streams, &ctx(), bits64, threads).unwrap();
            assert_eq!(got, want, "u64 d={d} threads={threads} bits={bits64}");
        }
    }

    #[test]
    fn keystream_rng_is_aes_256_ctr_under_keys_of_its_own() {
        use rand_core::{RngCore, SeedableRng};

        let s = seed(9);
        let mut rng = KeystreamRng::from_seed(s);
        let got: Vec<u64> = (0..2 * RNG_CHUNK_WORDS + 5)
            .map(|_| rng.next_u64())
            .collect();
        // Independently: chunk c is AES-256-CTR (counter from zero) under the key of
        // stream c in the generator's own context, read as little-endian words.
        let own = MaskContext {
            session: RNG_SESSION,
            round: 0,
            vector: 0,
        };
        let mut want = Vec::new();
        for c in 0..3u64 {
            let key = derive_key(&s, &own, c, 64).unwrap();
            let ks = reference_keystream(&key, RNG_CHUNK_WORDS * 8 / 16);
            want.extend(
                ks.chunks(8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap())),
            );
        }
        assert_eq!(got, want[..got.len()]);
        // It is not the seed's mask stream 0 of another context.
        let mut mask = vec![0u64; 4];
        let stream = MaskStream {
            seed: s,
            stream: 0,
            sign: Sign::Add,
        };
        expand_masks(&mut mask, &[stream], &ctx(), 64, 1).unwrap();
        assert_ne!(mask[..], got[..4]);
        // The same seed gives the same words, another seed others; bytes continue
        // the same stream.
        assert_eq!(KeystreamRng::from_seed(s).next_u64(), got[0]);
        assert_ne!(KeystreamRng::from_seed(seed(10)).next_u64(), got[0]);
        let mut buf = [0u8; 12];
        KeystreamRng::from_seed(s).fill_bytes(&mut buf);
        assert_eq!(buf[..8], got[0].to_le_bytes());
        assert_eq!(buf[8..], got[1].to_le_bytes()[..4]);
    }

    #[test]
    fn backend_name_matches_detection() {
        let name = aes_backend();
        assert!(["vaes-avx512", "aes-ni", "software"].contains(&name));
        assert_eq!(name == "software", !aes_hardware());
    }
}
