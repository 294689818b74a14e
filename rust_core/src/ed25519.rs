//! Ed25519 signatures (RFC 8032) for protocol messages, ledger entries and updates.
//!
//! Every SecAgg+ message is signed by its sender and checked by its receiver, so a
//! process that simulates 500 meters and their aggregator signs and verifies
//! thousands of messages per round. OpenSSL's Ed25519 (what `cryptography` wraps)
//! uses its portable 32-bit field code; curve25519-dalek's AVX2 backend and
//! precomputed base-point tables make signing and verifying several times
//! cheaper, and [`verify_many`] checks a batch over rayon's pool.
//!
//! Verification is `verify_strict`: besides RFC 8032's checks (canonical `S`, the
//! group equation without the cofactor) it refuses small-order public keys and `R`
//! values, for which a signature can verify on more than one message.
//! Honest signers never produce them.

use std::sync::OnceLock;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use rayon::prelude::*;

use crate::memo::Memo;

/// Bytes in a secret seed and in a public key.
pub const KEY_LEN: usize = 32;
/// Bytes in a signature.
pub const SIG_LEN: usize = 64;

/// Verifications per rayon task: fewer are not worth a thread hop.
const MIN_PER_TASK: usize = 16;

/// A signing key, expanded once from its 32-byte seed.
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// The key of a 32-byte secret seed (RFC 8032 section 5.1.5).
    pub fn new(seed: &[u8; KEY_LEN]) -> Self {
        Signer {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.key.verifying_key().to_bytes()
    }

    /// The signature of `message` (deterministic, RFC 8032 section 5.1.6).
    pub fn sign(&self, message: &[u8]) -> [u8; SIG_LEN] {
        use ed25519_dalek::Signer as _;
        self.key.sign(message).to_bytes()
    }
}

/// Parsed public keys a process keeps before it starts afresh (about 10 MB).
const KEY_CACHE_LIMIT: usize = 1 << 16;

/// `public` parsed (its point decompressed), remembered per process: a process
/// checks the same few thousand meters' keys over and over, and decompressing a
/// point is a square root, about a sixth of a verification. None for bytes that
/// are no curve point. Public data only.
fn verifying_key(public: &[u8; KEY_LEN]) -> Option<VerifyingKey> {
    static KEYS: OnceLock<Memo<[u8; KEY_LEN], Option<VerifyingKey>>> = OnceLock::new();
    KEYS.get_or_init(|| Memo::new(KEY_CACHE_LIMIT))
        .get_or_compute(*public, |raw| VerifyingKey::from_bytes(raw).ok())
}

/// Whether `signature` is `public`'s signature of `message` (see the module notes).
pub fn verify(public: &[u8; KEY_LEN], message: &[u8], signature: &[u8]) -> bool {
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    match verifying_key(public) {
        Some(key) => key.verify_strict(message, &sig).is_ok(),
        None => false,
    }
}

/// [`verify`] for each `(public, message, signature)`, in order, on the calling thread.
pub fn verify_each(items: &[(&[u8; KEY_LEN], &[u8], &[u8])]) -> Vec<bool> {
    items.iter().map(|(p, m, s)| verify(p, m, s)).collect()
}

/// [`verify_each`] over rayon's pool (on the calling thread when there are too few
/// to share).
pub fn verify_many(items: &[(&[u8; KEY_LEN], &[u8], &[u8])]) -> Vec<bool> {
    if items.len() < 2 * MIN_PER_TASK {
        return verify_each(items);
    }
    items
        .par_iter()
        .with_min_len(MIN_PER_TASK)
        .map(|(public, message, signature)| verify(public, message, signature))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::unhex_array as unhex;

    /// RFC 8032 section 7.1, TEST 2 (one-byte message).
    #[test]
    fn rfc8032_test_vector() {
        let seed = unhex::<32>("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb");
        let public =
            unhex::<32>("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c");
        let expected = unhex::<64>(
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        );
        let signer = Signer::new(&seed);
        assert_eq!(signer.public_key(), public);
        assert_eq!(signer.sign(&[0x72]), expected);
        assert!(verify(&public, &[0x72], &expected));
        assert!(!verify(&public, &[0x73], &expected));
    }

    #[test]
    fn tampering_anywhere_fails() {
        let signer = Signer::new(&[7u8; 32]);
        let public = signer.public_key();
        let msg = b"gridsim masked input".to_vec();
        let sig = signer.sign(&msg);
        for i in 0..SIG_LEN {
            let mut bad = sig;
            bad[i] ^= 1;
            assert!(!verify(&public, &msg, &bad), "flipped signature byte {i}");
        }
        let mut other = public;
        other[3] ^= 1;
        assert!(!verify(&other, &msg, &sig));
        assert!(!verify(&public, &msg, &sig[..63]), "a short signature");
        // A small-order public key (the identity) is refused outright.
        let identity =
            unhex::<32>("0100000000000000000000000000000000000000000000000000000000000000");
        assert!(!verify(&identity, &msg, &sig));
    }

    #[test]
    fn many_agrees_with_one_by_one() {
        let signers: Vec<Signer> = (0..40u8).map(|i| Signer::new(&[i; 32])).collect();
        let publics: Vec<[u8; 32]> = signers.iter().map(Signer::public_key).collect();
        let msgs: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 100 + i as usize]).collect();
        let mut sigs: Vec<[u8; 64]> = signers.iter().zip(&msgs).map(|(s, m)| s.sign(m)).collect();
        sigs[5][0] ^= 1;
        sigs[31][63] ^= 0x10;
        let items: Vec<(&[u8; 32], &[u8], &[u8])> = publics
            .iter()
            .zip(&msgs)
            .zip(&sigs)
            .map(|((p, m), s)| (p, m.as_slice(), s.as_slice()))
            .collect();
        // 40 over rayon's pool; the first 10 on the calling thread.
        for n in [40, 10] {
            let many = verify_many(&items[..n]);
            assert_eq!(many.len(), n);
            for (i, ok) in many.iter().enumerate() {
                assert_eq!(*ok, i != 5 && i != 31, "item {i} of {n}");
            }
        }
    }
}
