//! X25519 key agreement (RFC 7748) for the pairwise secrets of SecAgg+.
//!
//! A meter agrees one secret with each neighbour for every round, twice (the
//! mask-agreement key and the share-encryption key), so a process simulating
//! many meters runs tens of thousands of agreements per round. [`agree_many`]
//! runs a batch of them over rayon's pool; the binding layer calls it with the
//! GIL released.
//!
//! Secrets are clamped as RFC 7748 section 5 prescribes. An agreement whose
//! result is all zeros (the peer sent a low-order point) is non-contributory:
//! it is reported as `None`, and the caller must abort (RFC 7748 section 6.1).
//!
//! Batches ([`agree_many`], [`agree_derive_many`]) run on the fastest engine the
//! CPU has ([`engine`] says which). With AVX-512 IFMA, [`ifma`] runs eight
//! Montgomery ladders at once, one per 64-bit lane: 9.5 us of CPU per agreement
//! against 36 us for the Edwards path below (on dalek's IFMA backend, as built
//! here; the 18 us in `.cargo/config.toml` is the Zen 4 figure), measured on the 2-core Intel Xeon CI
//! machine (2.3 GHz) in batches of 4,800 through `gridsim._core.x25519_derive`.
//!
//! Elsewhere, and for single agreements, [`agree`] does not run the Montgomery
//! ladder when it can avoid it: a peer's
//! u-coordinate that is on the curve maps to an Edwards point P, and for the
//! clamped scalar k (a multiple of 8) the X25519 result is the u-coordinate of
//! (k/8)·(8P). 8P lies in the prime-order subgroup, so the constant-time
//! variable-base multiplication of curve25519-dalek computes it exactly, with its
//! AVX-512 IFMA or AVX2 backend, whichever the CPU has: measured on the 2-core AMD
//! development machine (Zen 4), 18 us with IFMA and 32 us with AVX2 against 53 us
//! for the ladder. The branch depends only on the
//! public key; a u-coordinate on the twist (which an honest peer never sends)
//! goes through the ladder, so every input gives RFC 7748's answer.
//!
//! Mapping a u-coordinate to 8P costs two field exponentiations (an inversion and
//! a square root), a third of an agreement. Each advertised key is agreed with by
//! every neighbour of its owner, so a process remembers the mapped points of the
//! public keys it has seen (public data only; the cache never sees a secret).
//!
//! On that path [`agree_derive_many`] converts its Edwards results to
//! u-coordinates sixteen at a time with one field inversion (Montgomery's trick),
//! a sixth less per agreement than one inversion each.
//!
//! A shared secret is never used as a key itself: [`agree_derive_many`] stretches
//! each one with HKDF-SHA256 (RFC 5869, no salt) into one 32-byte key per `info`
//! string and wipes it, in the same pass over rayon's pool, so a meter's whole
//! key schedule for a round (a mask seed and two share keys per neighbour) is one
//! call without the GIL.

use std::sync::OnceLock;

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use hkdf::Hkdf;
use rayon::prelude::*;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

use crate::memo::Memo;

#[cfg(target_arch = "x86_64")]
mod ifma;

/// Bytes in an X25519 secret, public key and shared secret.
pub const KEY_LEN: usize = 32;

/// Agreements per batch inversion on the Edwards path of [`agree_derive_many`]
/// (and per rayon task there; the IFMA engine takes [`ifma::LANES`] per task):
/// the inversions saved level off while a meter's few dozen agreements still
/// spread over both cores.
const BATCH: usize = 16;

/// Mapped public keys a process keeps before it starts afresh (about 13 MB).
const PEER_CACHE_LIMIT: usize = 1 << 16;

/// A peer's public key, mapped for [`agree`].
#[derive(Clone, Copy)]
enum Peer {
    /// 8P for the key's Edwards point P: in the prime-order subgroup, not the identity.
    Point(EdwardsPoint),
    /// A point of small order: every clamped scalar maps it to zero.
    SmallOrder,
    /// A u-coordinate on the twist: the ladder computes the agreement.
    Twist,
}

fn map_peer(public: &[u8; KEY_LEN]) -> Peer {
    match MontgomeryPoint(*public).to_edwards(0) {
        Some(point) => {
            let torsion_free = point.mul_by_cofactor();
            if torsion_free.is_identity() {
                Peer::SmallOrder
            } else {
                Peer::Point(torsion_free)
            }
        }
        None => Peer::Twist,
    }
}

/// [`map_peer`], remembered per process.
fn peer(public: &[u8; KEY_LEN]) -> Peer {
    static PEERS: OnceLock<Memo<[u8; KEY_LEN], Peer>> = OnceLock::new();
    PEERS
        .get_or_init(|| Memo::new(PEER_CACHE_LIMIT))
        .get_or_compute(*public, map_peer)
}

/// The public key of `secret` (its clamped scalar times the base point).
pub fn public_key(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// The shared secret of `secret` and `public`; None when it is all zeros.
pub fn agree(secret: &[u8; KEY_LEN], public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
    match peer(public) {
        Peer::Point(torsion_free) => {
            let shared = edwards_multiple(secret, &torsion_free)
                .to_montgomery()
                .to_bytes();
            (shared != [0u8; KEY_LEN]).then_some(shared)
        }
        Peer::SmallOrder => None,
        Peer::Twist => agree_ladder(secret, public),
    }
}

/// The Edwards multiple (k/8)·(8P) whose u-coordinate is the agreement of
/// `secret` with a peer on the curve; the caller converts it.
fn edwards_multiple(secret: &[u8; KEY_LEN], torsion_free: &EdwardsPoint) -> EdwardsPoint {
    let mut eighth = clamped_eighth(secret);
    let mut scalar = Scalar::from_bytes_mod_order(eighth);
    let point = torsion_free * scalar;
    eighth.zeroize();
    scalar.zeroize();
    point
}

/// [`agree`] of every pair of `pairs`, in order, with one field inversion for the
/// whole chunk: the Edwards results go to Montgomery form together
/// (Montgomery's trick), which saves an inversion (about a fifth of an
/// agreement) per pair. Twist points take the ladder, low-order points give None.
fn agree_chunk(pairs: &[([u8; KEY_LEN], [u8; KEY_LEN])]) -> Vec<Option<[u8; KEY_LEN]>> {
    let mut out: Vec<Option<[u8; KEY_LEN]>> = vec![None; pairs.len()];
    let mut points = Vec::with_capacity(pairs.len());
    let mut slots = Vec::with_capacity(pairs.len());
    for (i, (secret, public)) in pairs.iter().enumerate() {
        match peer(public) {
            Peer::Point(torsion_free) => {
                points.push(edwards_multiple(secret, &torsion_free));
                slots.push(i);
            }
            Peer::SmallOrder => {}
            Peer::Twist => out[i] = agree_ladder(secret, public),
        }
    }
    // A multiple of a prime-order point by a scalar in [2^251, 2^252) is never the
    // identity, so no denominator of the batch inversion is zero.
    let montgomery = EdwardsPoint::to_montgomery_batch(&points);
    points.zeroize();
    for (slot, u) in slots.into_iter().zip(montgomery) {
        let shared = u.to_bytes();
        out[slot] = (shared != [0u8; KEY_LEN]).then_some(shared);
    }
    out
}

/// [`agree`] with the Montgomery ladder of RFC 7748 (x25519-dalek).
pub fn agree_ladder(secret: &[u8; KEY_LEN], public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
    let shared = StaticSecret::from(*secret).diffie_hellman(&PublicKey::from(*public));
    shared.was_contributory().then(|| shared.to_bytes())
}

/// The clamped scalar of `secret` (RFC 7748 section 5) divided by 8, little-endian.
///
/// Below 2^252 and so below the group order: reducing it changes nothing.
fn clamped_eighth(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut k = *secret;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    let mut out = [0u8; KEY_LEN];
    for i in 0..KEY_LEN {
        let next = if i + 1 < KEY_LEN { k[i + 1] } else { 0 };
        out[i] = (k[i] >> 3) | (next << 5);
    }
    k.zeroize();
    out
}

/// How a batch of agreements is computed; every engine gives RFC 7748's answer.
#[derive(Debug, Clone, Copy)]
enum Engine {
    /// Eight ladders at once on AVX-512 IFMA ([`ifma`]).
    #[cfg(target_arch = "x86_64")]
    Ifma(ifma::Ifma),
    /// [`agree_chunk`]: curve25519-dalek's Edwards arithmetic, one agreement at a time.
    Edwards,
}

impl Engine {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(found) = ifma::Ifma::detect() {
            return Engine::Ifma(found);
        }
        Engine::Edwards
    }

    /// Pairs per call of [`Engine::chunk`].
    fn chunk_len(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Engine::Ifma(_) => ifma::LANES,
            Engine::Edwards => BATCH,
        }
    }

    /// [`agree`] of each pair of `pairs` (at most [`Engine::chunk_len`]), in order.
    fn chunk(self, pairs: &[([u8; KEY_LEN], [u8; KEY_LEN])]) -> Vec<Option<[u8; KEY_LEN]>> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Engine::Ifma(found) => found
                .agree(pairs)
                .into_iter()
                .map(|shared| (shared != [0u8; KEY_LEN]).then_some(shared))
                .collect(),
            Engine::Edwards => agree_chunk(pairs),
        }
    }
}

/// Which engine [`agree_many`] and [`agree_derive_many`] run on this CPU:
/// `"ifma-ladder-x8"` (eight Montgomery ladders at once on AVX-512 IFMA) or
/// `"edwards"` (curve25519-dalek's Edwards arithmetic, one at a time).
pub fn engine() -> &'static str {
    match Engine::detect() {
        #[cfg(target_arch = "x86_64")]
        Engine::Ifma(_) => "ifma-ladder-x8",
        Engine::Edwards => "edwards",
    }
}

/// [`agree`] for each `(secret, public)` pair, in order, over rayon's pool.
pub fn agree_many(pairs: &[([u8; KEY_LEN], [u8; KEY_LEN])]) -> Vec<Option<[u8; KEY_LEN]>> {
    agree_many_on(Engine::detect(), pairs)
}

fn agree_many_on(
    engine: Engine,
    pairs: &[([u8; KEY_LEN], [u8; KEY_LEN])],
) -> Vec<Option<[u8; KEY_LEN]>> {
    pairs
        .par_chunks(engine.chunk_len())
        .flat_map_iter(|chunk| engine.chunk(chunk))
        .collect()
}

/// HKDF-SHA256 (RFC 5869) of `ikm` without salt: one 32-byte key per `info`.
pub fn hkdf_keys(ikm: &[u8], infos: &[Vec<u8>]) -> Vec<[u8; KEY_LEN]> {
    let hk = Hkdf::<Sha256>::new(None, ikm);
    infos
        .iter()
        .map(|info| {
            let mut okm = [0u8; KEY_LEN];
            hk.expand(info, &mut okm)
                .expect("32 bytes is within HKDF-SHA256's output limit");
            okm
        })
        .collect()
}

/// For each `(secret, public)` pair, in order: the [`agree`]ment stretched by
/// [`hkdf_keys`] into one key per string of `infos[i]`, or None when the
/// agreement is all zeros. The shared secrets are wiped; only keys come out.
///
/// Panics if `infos` and `pairs` differ in length (the binding checks).
pub fn agree_derive_many(
    pairs: &[([u8; KEY_LEN], [u8; KEY_LEN])],
    infos: &[Vec<Vec<u8>>],
) -> Vec<Option<Vec<[u8; KEY_LEN]>>> {
    agree_derive_many_on(Engine::detect(), pairs, infos)
}

fn agree_derive_many_on(
    engine: Engine,
    pairs: &[([u8; KEY_LEN], [u8; KEY_LEN])],
    infos: &[Vec<Vec<u8>>],
) -> Vec<Option<Vec<[u8; KEY_LEN]>>> {
    assert_eq!(pairs.len(), infos.len(), "one info list per pair");
    let chunk = engine.chunk_len();
    let derive = |(pairs, infos): (&[KeyPair], &[Vec<Vec<u8>>])| {
        engine
            .chunk(pairs)
            .into_iter()
            .zip(infos)
            .map(|(shared, infos)| {
                shared.map(|mut shared| {
                    let keys = hkdf_keys(&shared, infos);
                    shared.zeroize();
                    keys
                })
            })
            .collect::<Vec<_>>()
    };
    if pairs.len() < PARALLEL_MIN_PAIRS {
        return pairs
            .chunks(chunk)
            .zip(infos.chunks(chunk))
            .flat_map(derive)
            .collect();
    }
    pairs
        .par_chunks(chunk)
        .zip(infos.par_chunks(chunk))
        .flat_map_iter(derive)
        .collect()
}

/// A secret key and a peer's public key.
type KeyPair = ([u8; KEY_LEN], [u8; KEY_LEN]);

/// Batches below this many agreements are computed on the calling thread.
///
/// A SecAgg+ meter's batch (two per neighbour, 48 at degree 24) takes 0.4 ms;
/// handed to rayon's pool its workers woke for each one and spun between them,
/// on the core the training children needed, while the caller (the event loop,
/// all the agents') waited anyway.
pub const PARALLEL_MIN_PAIRS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn unhex(s: &str) -> [u8; KEY_LEN] {
        crate::test_util::unhex_array(s)
    }

    // RFC 7748 section 6.1: Alice's and Bob's key pairs and their shared secret.
    const ALICE_SK: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PK: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const BOB_SK: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
    const BOB_PK: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    const SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

    #[test]
    fn rfc7748_section_6_1() {
        assert_eq!(public_key(&unhex(ALICE_SK)), unhex(ALICE_PK));
        assert_eq!(public_key(&unhex(BOB_SK)), unhex(BOB_PK));
        assert_eq!(agree(&unhex(ALICE_SK), &unhex(BOB_PK)), Some(unhex(SHARED)));
        assert_eq!(agree(&unhex(BOB_SK), &unhex(ALICE_PK)), Some(unhex(SHARED)));
    }

    #[test]
    fn rfc7748_section_5_2_single_iteration() {
        let k = unhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let u = unhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        let out = unhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
        assert_eq!(agree(&k, &u), Some(out));
    }

    #[test]
    fn low_order_point_is_refused() {
        // u = 0 and u = 1 are points of small order: every scalar maps them to zero.
        let sk = unhex(ALICE_SK);
        assert_eq!(agree(&sk, &[0u8; KEY_LEN]), None);
        let mut one = [0u8; KEY_LEN];
        one[0] = 1;
        assert_eq!(agree(&sk, &one), None);
    }

    /// A deterministic stream of test bytes (xorshift64).
    pub(super) fn bytes(state: &mut u64) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        for b in out.iter_mut() {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *b = *state as u8;
        }
        out
    }

    #[test]
    fn edwards_path_equals_the_ladder_on_curve_twist_and_low_order_points() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let mut on_twist = 0;
        for i in 0..400 {
            let secret = bytes(&mut state);
            // Honest public keys, then arbitrary u-coordinates (half are on the
            // twist), some with the top bit set or not reduced modulo p.
            let public = if i % 2 == 0 {
                public_key(&bytes(&mut state))
            } else {
                bytes(&mut state)
            };
            on_twist += usize::from(MontgomeryPoint(public).to_edwards(0).is_none());
            assert_eq!(
                agree(&secret, &public),
                agree_ladder(&secret, &public),
                "case {i}"
            );
        }
        assert!(on_twist > 50, "the twist branch ran {on_twist} times");
        // Low-order points (u = 0, 1, -1 = p - 1 and the order-8 points): None both ways.
        let mut minus_one = [0xffu8; KEY_LEN];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        let order8 = unhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        let order8b = unhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157");
        let sk = unhex(ALICE_SK);
        let mut one = [0u8; KEY_LEN];
        one[0] = 1;
        for low in [[0u8; KEY_LEN], one, minus_one, order8, order8b] {
            assert_eq!(agree(&sk, &low), None);
            assert_eq!(agree_ladder(&sk, &low), None);
        }
    }

    #[test]
    fn remembered_peers_give_the_ladders_answer_again() {
        // Each public key agreed with twice, by different secrets: the second time
        // from the process's cache of mapped keys.
        let mut state = 0x2545_f491_4f6c_dd1d;
        let publics: Vec<[u8; KEY_LEN]> = (0..60)
            .map(|i| {
                let b = bytes(&mut state);
                if i % 3 == 0 {
                    b // arbitrary: on the curve or the twist
                } else {
                    public_key(&b)
                }
            })
            .collect();
        for round in 0..2 {
            for (i, public) in publics.iter().enumerate() {
                let secret = bytes(&mut state);
                assert_eq!(
                    agree(&secret, public),
                    agree_ladder(&secret, public),
                    "key {i}, pass {round}"
                );
            }
        }
        let sk = unhex(ALICE_SK);
        for _ in 0..2 {
            assert_eq!(agree(&sk, &[0u8; KEY_LEN]), None);
            assert_eq!(agree(&sk, &unhex(BOB_PK)), Some(unhex(SHARED)));
        }
    }

    /// `n` (secret, public) pairs of distinct keys; pair `zero` has the all-zero
    /// (low-order) public key.
    fn sample_pairs(n: usize, zero: usize) -> Vec<([u8; KEY_LEN], [u8; KEY_LEN])> {
        (0..n)
            .map(|j| {
                let i = j as u8; // keys repeat every 256 pairs
                let sk = [i.wrapping_mul(7).wrapping_add(1); KEY_LEN];
                let peer = public_key(&[i.wrapping_mul(13).wrapping_add(2); KEY_LEN]);
                (sk, if j == zero { [0u8; KEY_LEN] } else { peer })
            })
            .collect()
    }

    #[test]
    fn batch_matches_one_by_one_in_order() {
        let pairs = sample_pairs(40, 17);
        let batch = agree_many(&pairs);
        assert_eq!(batch.len(), pairs.len());
        for ((sk, pk), got) in pairs.iter().zip(&batch) {
            assert_eq!(*got, agree(sk, pk));
        }
        assert_eq!(batch[17], None);
    }

    #[test]
    fn batched_inversion_gives_the_ladders_answer_across_chunks() {
        // Curve points, twist points and low-order points mixed, over several
        // chunks and a short last one: each slot keeps its own answer.
        let mut state = 0x0123_4567_89ab_cdef;
        let mut pairs: Vec<([u8; KEY_LEN], [u8; KEY_LEN])> = (0..3 * BATCH + 5)
            .map(|i| {
                let secret = bytes(&mut state);
                let public = match i % 5 {
                    0..=2 => public_key(&bytes(&mut state)),
                    _ => bytes(&mut state), // on the curve or the twist
                };
                (secret, public)
            })
            .collect();
        pairs[BATCH - 1].1 = [0u8; KEY_LEN];
        pairs[2 * BATCH].1[0] = 1;
        for (i, got) in agree_chunk(&pairs).iter().enumerate() {
            assert_eq!(*got, agree_ladder(&pairs[i].0, &pairs[i].1), "pair {i}");
        }
        let infos: Vec<Vec<Vec<u8>>> = (0..pairs.len()).map(|i| vec![vec![i as u8]]).collect();
        for engine in engines() {
            let derived = agree_derive_many_on(engine, &pairs, &infos);
            for (i, (keys, shared)) in derived
                .iter()
                .zip(agree_many_on(engine, &pairs))
                .enumerate()
            {
                let want = agree_ladder(&pairs[i].0, &pairs[i].1);
                assert_eq!(shared, want, "{engine:?}: pair {i}");
                assert_eq!(
                    *keys,
                    want.map(|s| hkdf_keys(&s, &infos[i])),
                    "{engine:?}: pair {i}"
                );
            }
        }
    }

    #[test]
    fn a_batch_large_enough_for_the_pool_derives_what_small_ones_do() {
        let pairs = sample_pairs(PARALLEL_MIN_PAIRS + 3, 5);
        let infos: Vec<Vec<Vec<u8>>> = (0..pairs.len())
            .map(|i| vec![vec![i as u8], vec![(i >> 8) as u8, 1]])
            .collect();
        for engine in engines() {
            let whole = agree_derive_many_on(engine, &pairs, &infos);
            let mut pieces = Vec::new();
            for (p, i) in pairs.chunks(11).zip(infos.chunks(11)) {
                pieces.extend(agree_derive_many_on(engine, p, i));
            }
            assert_eq!(whole, pieces, "{engine:?}");
            assert_eq!(whole[5], None, "{engine:?}");
        }
    }

    /// Every engine this CPU runs, the one [`Engine::detect`] picks first.
    fn engines() -> Vec<Engine> {
        let mut all = vec![Engine::detect()];
        if !matches!(all[0], Engine::Edwards) {
            all.push(Engine::Edwards);
        }
        all
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hkdf_matches_rfc5869_case_3() {
        // RFC 5869 A.3: SHA-256, no salt, empty info; the first 32 of its 42 bytes.
        let okm = hkdf_keys(&[0x0b; 22], &[Vec::new()]);
        assert_eq!(
            hex(&okm[0]),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        );
    }

    #[test]
    fn derived_keys_are_hkdf_of_the_agreement_per_info() {
        let infos = |i: u8| vec![vec![i], b"second".to_vec(), Vec::new()];
        let pairs = sample_pairs(20, 6);
        let all_infos: Vec<_> = (0u8..20).map(infos).collect();
        let got = agree_derive_many(&pairs, &all_infos);
        for (i, ((sk, pk), keys)) in pairs.iter().zip(&got).enumerate() {
            let want = agree(sk, pk).map(|s| hkdf_keys(&s, &infos(i as u8)));
            assert_eq!(*keys, want);
        }
        assert_eq!(got[6], None);
        let keys = got[0].as_ref().unwrap();
        assert_eq!(keys.len(), 3);
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
    }
}
