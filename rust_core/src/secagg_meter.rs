//! A SecAgg+ meter's two stages that combine several primitives, each in one pass:
//!
//! - [`share`]: Shamir-share its self-mask seed and mask key among its
//!   neighbours, agree a pairwise mask seed and share keys with each, and encrypt
//!   each neighbour's two shares;
//! - [`open_held`] and [`add_masks`]: check, decrypt and check again the shares its
//!   neighbours relayed through the server, and sum its masks (its self mask and
//!   one pairwise mask per neighbour that shared) into one vector.
//!
//! Each step is a primitive of its own ([`crate::shamir`], [`crate::x25519`],
//! [`crate::aead`], [`crate::prg`]); run from Python one call at a time, the
//! bookkeeping between them (a list per argument, a label and a check per
//! neighbour) cost a meter more than the cryptography besides its key agreements
//! (500 meters, Zen 4: preparing took 0.19 ms each, of which the decryption and
//! the masks 0.07 ms). The steps, labels and checks, and their order, are those of
//! `SecAggClient.share_keys` and `SecAggClient.prepare_masked_input` in
//! `gridsim/secagg/client.py`, which documents the protocol.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::aead::{self, Item, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{CoreError, Result};
use crate::prg::{self, MaskContext, MaskStream, MaskWord, Seed, Sign};
use crate::shamir::{self, SHARE_LEN};
use crate::x25519;
use zeroize::Zeroize;

/// One share relayed by the server: who sent it, to whom, and its
/// `nonce || ciphertext || tag`.
pub struct Relayed<'a> {
    pub sender: u32,
    pub recipient: u32,
    pub ciphertext: &'a [u8],
}

/// What the meter agreed with one neighbour in the sharing stage: the key of the
/// shares that neighbour sends it, and their pairwise mask seed.
pub struct Neighbour {
    pub id: u32,
    pub inbound_key: [u8; KEY_LEN],
    pub pair_seed: Seed,
}

/// The neighbours' shares this meter holds, in ascending order of neighbour.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    pub ids: Vec<u32>,
    pub seed_shares: Vec<[u8; SHARE_LEN]>,
    pub key_shares: Vec<[u8; SHARE_LEN]>,
}

/// `prefix || a (u32 LE) || b (u32 LE)`: an HKDF info or associated data of a
/// pair, the prefix being a domain tag and the round's context.
pub fn label(prefix: &[u8], a: u32, b: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 8);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out
}

/// The round's labels (see `_Labels` in `gridsim/secagg/client.py`): each a
/// domain tag and the round's context, to which a pair's ids are appended.
pub struct Labels<'a> {
    /// HKDF info of a pairwise mask seed (the lower id first).
    pub seed: &'a [u8],
    /// HKDF info of the key of shares sent from the first id to the second.
    pub share_key: &'a [u8],
    /// Associated data of shares sent from the first id to the second.
    pub ad: &'a [u8],
}

/// A meter's secrets of the round: its two X25519 secret keys (share encryption,
/// mask agreement) and its self-mask seed.
pub struct Secrets<'a> {
    pub enc_sk: &'a [u8; 32],
    pub agree_sk: &'a [u8; 32],
    pub self_seed: &'a Seed,
}

/// A neighbour that advertised keys this round: its id and its two X25519 public keys.
pub struct Advertised {
    pub id: u32,
    pub enc_key: [u8; 32],
    pub agree_key: [u8; 32],
}

/// What [`share`] gives: per neighbour (in the order given) what the meter keeps,
/// and the `nonce || ciphertext || tag` of the two shares it sends that neighbour.
pub struct Shared {
    pub neighbours: Vec<Neighbour>,
    pub sealed: Vec<Vec<u8>>,
}

/// Bytes of randomness [`share`] takes for `k` neighbours: the seeds of the two
/// sharings' coefficients (32 each), then one nonce per neighbour.
pub fn share_randomness_len(k: usize) -> usize {
    64 + NONCE_LEN * k
}

/// The sharing stage of `meter` with the neighbours `live` that advertised keys
/// (x-coordinate: id + 1): its self-mask seed and mask-agreement secret key, each
/// Shamir-shared with `threshold` (coefficients from ChaCha20 seeded by the first
/// and second 32 bytes of `fresh`); with each neighbour, the pairwise mask seed
/// (HKDF of the mask-key agreement, info `labels.seed || lower || higher`) and the
/// share keys of both directions (HKDF of the share-key agreement, infos
/// `labels.share_key || from || to`); each neighbour's two shares sealed with
/// ChaCha20-Poly1305 under the outbound key, the next nonce of `fresh` and the
/// associated data `labels.ad || meter || neighbour`. A neighbour whose
/// advertised key gives an all-zero agreement is refused (`CoreError::Protocol`),
/// the first in the order of the agreements: mask keys, then share keys.
pub fn share(
    meter: u32,
    threshold: u32,
    labels: &Labels<'_>,
    secrets: &Secrets<'_>,
    live: &[Advertised],
    fresh: &[u8],
) -> Result<Shared> {
    let k = live.len();
    if fresh.len() != share_randomness_len(k) {
        return Err(CoreError::InvalidArgument(format!(
            "sharing with {k} neighbours takes {} random bytes, got {}",
            share_randomness_len(k),
            fresh.len()
        )));
    }
    let xs = live
        .iter()
        .map(|a| {
            a.id.checked_add(1).ok_or_else(|| {
                CoreError::InvalidArgument("meter ids must be below 2^32 - 1".into())
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    let coefficients = |i: usize| {
        ChaCha20Rng::from_seed(fresh[32 * i..32 * (i + 1)].try_into().expect("32 bytes"))
    };
    let seed_shares = shamir::split(secrets.self_seed, threshold, &xs, &mut coefficients(0))?;
    let key_shares = shamir::split(secrets.agree_sk, threshold, &xs, &mut coefficients(1))?;
    let mut pairs = Vec::with_capacity(2 * k);
    let mut infos = Vec::with_capacity(2 * k);
    for a in live {
        pairs.push((*secrets.agree_sk, a.agree_key));
        let (lo, hi) = if meter < a.id {
            (meter, a.id)
        } else {
            (a.id, meter)
        };
        infos.push(vec![label(labels.seed, lo, hi)]);
    }
    for a in live {
        pairs.push((*secrets.enc_sk, a.enc_key));
        infos.push(vec![
            label(labels.share_key, meter, a.id),
            label(labels.share_key, a.id, meter),
        ]);
    }
    let mut derived = x25519::agree_derive_many(&pairs, &infos);
    for p in pairs.iter_mut() {
        p.0.zeroize(); // copies of the secret keys
    }
    if let Some(i) = derived.iter().position(Option::is_none) {
        return Err(CoreError::Protocol(format!(
            "meter {} advertised a degenerate X25519 key",
            live[i % k].id
        )));
    }
    let share_keys: Vec<Vec<[u8; 32]>> = derived.split_off(k).into_iter().flatten().collect();
    let mut plaintexts: Vec<Vec<u8>> = seed_shares
        .iter()
        .zip(&key_shares)
        .map(|(s, key)| [s.to_bytes(), key.to_bytes()].concat())
        .collect();
    let ads: Vec<Vec<u8>> = live.iter().map(|a| label(labels.ad, meter, a.id)).collect();
    let nonces = &fresh[64..];
    let items: Vec<Item<'_>> = (0..k)
        .map(|i| Item {
            key: &share_keys[i][0],
            nonce: nonces[NONCE_LEN * i..NONCE_LEN * (i + 1)]
                .try_into()
                .expect("NONCE_LEN bytes"),
            data: &plaintexts[i],
            ad: &ads[i],
        })
        .collect();
    let sealed: Vec<Vec<u8>> = aead::seal_many(&items)
        .into_iter()
        .enumerate()
        .map(|(i, ct)| [&nonces[NONCE_LEN * i..NONCE_LEN * (i + 1)], &ct].concat())
        .collect();
    drop(items);
    plaintexts.iter_mut().for_each(|p| p.zeroize());
    let neighbours = live
        .iter()
        .zip(derived.into_iter().flatten())
        .zip(&share_keys)
        .map(|((a, seed), keys)| Neighbour {
            id: a.id,
            inbound_key: keys[1],
            pair_seed: seed[0],
        })
        .collect();
    Ok(Shared { neighbours, sealed })
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(CoreError::Protocol(msg))
}

/// Checks and opens the shares relayed to `meter`, each of which must come from a
/// distinct neighbour in `neighbours`, authenticate under that neighbour's key and
/// the associated data `ad_prefix || sender || meter`, and hold two shares (of the
/// sender's self-mask seed and of its mask key) of a `threshold` sharing evaluated
/// at `meter + 1`; at least `threshold` neighbours must have shared. Refuses
/// (`CoreError::Protocol`, naming the first offending sender) otherwise.
pub fn open_held(
    meter: u32,
    threshold: u32,
    ad_prefix: &[u8],
    neighbours: &[Neighbour],
    relayed: &[Relayed<'_>],
) -> Result<Held> {
    let x = meter
        .checked_add(1)
        .ok_or_else(|| CoreError::InvalidArgument("meter ids must be below 2^32 - 1".into()))?;
    let key_of = |v: u32| {
        neighbours
            .iter()
            .find(|n| n.id == v)
            .map(|n| &n.inbound_key)
    };
    let mut seen: Vec<u32> = Vec::with_capacity(relayed.len());
    let mut keys = Vec::with_capacity(relayed.len());
    for r in relayed {
        let key = match key_of(r.sender) {
            Some(key) if r.recipient == meter && !seen.contains(&r.sender) => key,
            _ => {
                return refuse(format!(
                    "unexpected or repeated share from meter {}",
                    r.sender
                ))
            }
        };
        if r.ciphertext.len() < NONCE_LEN + TAG_LEN {
            return refuse(format!(
                "share from meter {} is too short to be a ciphertext",
                r.sender
            ));
        }
        seen.push(r.sender);
        keys.push(key);
    }
    let ads: Vec<Vec<u8>> = relayed
        .iter()
        .map(|r| label(ad_prefix, r.sender, meter))
        .collect();
    let items: Vec<Item<'_>> = relayed
        .iter()
        .zip(&keys)
        .zip(&ads)
        .map(|((r, key), ad)| Item {
            key,
            nonce: r.ciphertext[..NONCE_LEN]
                .try_into()
                .expect("checked to be long enough"),
            data: &r.ciphertext[NONCE_LEN..],
            ad,
        })
        .collect();
    let opened = aead::open_many(&items);
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&threshold.to_le_bytes());
    header[4..].copy_from_slice(&x.to_le_bytes());
    let mut held: Vec<(u32, [u8; SHARE_LEN], [u8; SHARE_LEN])> = Vec::with_capacity(relayed.len());
    for (r, plain) in relayed.iter().zip(opened) {
        let Some(plain) = plain else {
            return refuse(format!(
                "share from meter {} fails authentication",
                r.sender
            ));
        };
        let (s, k) = plain.split_at(plain.len().min(SHARE_LEN));
        if plain.len() != 2 * SHARE_LEN || s[1..9] != header || k[1..9] != header {
            return refuse(format!(
                "share from meter {} is not for this meter and round",
                r.sender
            ));
        }
        held.push((
            r.sender,
            s.try_into().expect("SHARE_LEN bytes"),
            k.try_into().expect("SHARE_LEN bytes"),
        ));
    }
    if held.len() < threshold as usize {
        return refuse(format!(
            "only {} neighbours shared their secrets, threshold is {threshold}",
            held.len()
        ));
    }
    held.sort_unstable_by_key(|h| h.0);
    Ok(Held {
        ids: held.iter().map(|h| h.0).collect(),
        seed_shares: held.iter().map(|h| h.1).collect(),
        key_shares: held.iter().map(|h| h.2).collect(),
    })
}

/// Adds `meter`'s masks into `acc` (mod 2^bits): its self mask, and the pairwise
/// mask of each neighbour in `partners` (ids into `neighbours`), added when
/// `meter` has the lower id and subtracted otherwise, so that a pair's masks
/// cancel in the sum.
pub fn add_masks<W: MaskWord>(
    acc: &mut [W],
    meter: u32,
    self_seed: &Seed,
    neighbours: &[Neighbour],
    partners: &[u32],
    ctx: &MaskContext<'_>,
    bits: u32,
) -> Result<()> {
    let mut streams = Vec::with_capacity(partners.len() + 1);
    streams.push(MaskStream {
        seed: *self_seed,
        stream: prg::self_stream_id(meter),
        sign: Sign::Add,
    });
    for &v in partners {
        let n = neighbours.iter().find(|n| n.id == v).ok_or_else(|| {
            CoreError::InvalidArgument(format!("no pairwise seed with meter {v}"))
        })?;
        streams.push(MaskStream {
            seed: n.pair_seed,
            stream: prg::pair_stream_id(meter, v),
            sign: if meter < v { Sign::Add } else { Sign::Subtract },
        });
    }
    prg::expand_masks(acc, &streams, ctx, bits, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shamir;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const AD: &[u8] = b"test/share\x00";
    const T: u32 = 2;

    struct Setup {
        neighbours: Vec<Neighbour>,
        ciphertexts: Vec<(u32, Vec<u8>)>,
        shares: Vec<(u32, [u8; SHARE_LEN], [u8; SHARE_LEN])>,
    }

    /// Meter 7 with neighbours 3, 9 and 12, each of which shared with it.
    fn setup() -> Setup {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let mut neighbours = Vec::new();
        let mut ciphertexts = Vec::new();
        let mut shares = Vec::new();
        for v in [12u32, 3, 9] {
            let key = [v as u8; KEY_LEN];
            let s = shamir::split(&[v as u8 + 1; 32], T, &[8, 9], &mut rng).unwrap()[0].to_bytes();
            let k = shamir::split(&[v as u8 + 2; 32], T, &[8, 9], &mut rng).unwrap()[0].to_bytes();
            let nonce = [v as u8; NONCE_LEN];
            let plain = [s, k].concat();
            let ad = label(AD, v, 7);
            let ct = aead::seal_many(&[Item {
                key: &key,
                nonce: &nonce,
                data: &plain,
                ad: &ad,
            }])
            .remove(0);
            neighbours.push(Neighbour {
                id: v,
                inbound_key: key,
                pair_seed: [v as u8 + 3; 32],
            });
            ciphertexts.push((v, [nonce.as_slice(), &ct].concat()));
            shares.push((v, s, k));
        }
        Setup {
            neighbours,
            ciphertexts,
            shares,
        }
    }

    fn relayed(s: &Setup) -> Vec<Relayed<'_>> {
        s.ciphertexts
            .iter()
            .map(|(v, ct)| Relayed {
                sender: *v,
                recipient: 7,
                ciphertext: ct,
            })
            .collect()
    }

    fn refused(result: Result<Held>) -> String {
        match result {
            Err(CoreError::Protocol(msg)) => msg,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn opens_every_share_in_neighbour_order() {
        let s = setup();
        let held = open_held(7, T, AD, &s.neighbours, &relayed(&s)).unwrap();
        assert_eq!(held.ids, vec![3, 9, 12]);
        for (i, v) in held.ids.iter().enumerate() {
            let (_, seed, key) = s.shares.iter().find(|x| x.0 == *v).unwrap();
            assert_eq!(&held.seed_shares[i], seed);
            assert_eq!(&held.key_shares[i], key);
        }
    }

    #[test]
    fn refuses_forged_repeated_misaddressed_and_too_few_shares() {
        let s = setup();
        let mut forged = s.ciphertexts.clone();
        let last = forged[1].1.len() - 1;
        forged[1].1[last] ^= 1;
        let r: Vec<Relayed<'_>> = forged
            .iter()
            .map(|(v, ct)| Relayed {
                sender: *v,
                recipient: 7,
                ciphertext: ct,
            })
            .collect();
        assert!(refused(open_held(7, T, AD, &s.neighbours, &r)).contains("meter 3 fails"));

        let mut twice = relayed(&s);
        twice.push(Relayed {
            sender: 9,
            recipient: 7,
            ciphertext: &s.ciphertexts[2].1,
        });
        assert!(refused(open_held(7, T, AD, &s.neighbours, &twice))
            .contains("repeated share from meter 9"));

        let mut elsewhere = relayed(&s);
        elsewhere[0].recipient = 8;
        assert!(refused(open_held(7, T, AD, &s.neighbours, &elsewhere)).contains("meter 12"));

        // The right bytes under another meter's name fail authentication (the
        // associated data names the sender).
        let mut renamed = relayed(&s);
        renamed[0].sender = 3;
        renamed[1].sender = 12;
        assert!(
            refused(open_held(7, T, AD, &s.neighbours, &renamed)).contains("fails authentication")
        );

        let one = &relayed(&s)[..1];
        assert!(refused(open_held(7, T, AD, &s.neighbours, one)).contains("only 1 neighbours"));

        // Shares of a sharing with another threshold than the round's.
        assert!(
            refused(open_held(7, T + 1, AD, &s.neighbours, &relayed(&s)))
                .contains("not for this meter")
        );
    }

    const LABELS: Labels<'static> = Labels {
        seed: b"test/seed\x00",
        share_key: b"test/key\x00",
        ad: AD,
    };

    struct Meter {
        id: u32,
        enc_sk: [u8; 32],
        agree_sk: [u8; 32],
        self_seed: Seed,
    }

    impl Meter {
        fn new(id: u32) -> Self {
            let b = id as u8;
            Meter {
                id,
                enc_sk: [b; 32],
                agree_sk: [b + 100; 32],
                self_seed: [b + 200; 32],
            }
        }
        fn advertised(&self) -> Advertised {
            Advertised {
                id: self.id,
                enc_key: x25519::public_key(&self.enc_sk),
                agree_key: x25519::public_key(&self.agree_sk),
            }
        }
        fn share_with(&self, others: &[&Meter], t: u32) -> Result<Shared> {
            let live: Vec<Advertised> = others.iter().map(|m| m.advertised()).collect();
            let fresh: Vec<u8> = (0..share_randomness_len(live.len()))
                .map(|i| i as u8)
                .collect();
            let secrets = Secrets {
                enc_sk: &self.enc_sk,
                agree_sk: &self.agree_sk,
                self_seed: &self.self_seed,
            };
            share(self.id, t, &LABELS, &secrets, &live, &fresh)
        }
    }

    #[test]
    fn a_neighbour_opens_what_a_meter_shared_and_both_hold_one_pair_seed() {
        let (a, b, c) = (Meter::new(4), Meter::new(9), Meter::new(2));
        let from_a = a.share_with(&[&c, &b], 2).unwrap();
        let from_b = b.share_with(&[&c, &a], 2).unwrap();
        assert_eq!(from_a.neighbours[1].id, 9);
        assert_eq!(
            from_a.neighbours[1].pair_seed,
            from_b.neighbours[1].pair_seed
        );
        assert_ne!(
            from_a.neighbours[0].pair_seed,
            from_a.neighbours[1].pair_seed
        );
        // b opens the shares a sealed for it, with the keys b itself derived.
        let relayed = [Relayed {
            sender: 4,
            recipient: 9,
            ciphertext: &from_a.sealed[1],
        }];
        let held = open_held(9, 1, AD, &from_b.neighbours, &relayed);
        // (Threshold 1 in the check: one share only; the sharing's is 2.)
        assert!(refused(held).contains("not for this meter"));
        let held = open_held(9, 2, AD, &from_b.neighbours, &[]);
        assert!(refused(held).contains("only 0 neighbours"));
        let mut relayed_both = vec![Relayed {
            sender: 4,
            recipient: 9,
            ciphertext: &from_a.sealed[1],
        }];
        let from_c = c.share_with(&[&a, &b], 2).unwrap();
        relayed_both.push(Relayed {
            sender: 2,
            recipient: 9,
            ciphertext: &from_c.sealed[1],
        });
        let held = open_held(9, 2, AD, &from_b.neighbours, &relayed_both).unwrap();
        assert_eq!(held.ids, vec![2, 4]);
        // The seed shares of a and c at x = 10, two of each one's sharing: with a
        // second share each reconstructs the self-mask seed.
        let again = a.share_with(&[&c, &b], 2).unwrap();
        assert_eq!(
            again.sealed, from_a.sealed,
            "the same randomness gives the same shares"
        );
        let seed_share_of_a = shamir::Share::from_bytes(&held.seed_shares[1]).unwrap();
        let mut rng = ChaCha20Rng::from_seed((0..32).collect::<Vec<u8>>().try_into().unwrap());
        let all = shamir::split(&a.self_seed, 2, &[3, 10], &mut rng).unwrap();
        assert_eq!(all[1], seed_share_of_a);
        assert_eq!(
            shamir::combine(&[all[0], seed_share_of_a]).unwrap(),
            a.self_seed
        );
    }

    #[test]
    fn a_degenerate_key_is_refused_naming_its_owner() {
        let (a, b, c) = (Meter::new(4), Meter::new(9), Meter::new(2));
        let mut live = vec![c.advertised(), b.advertised()];
        live[1].enc_key = [0; 32]; // the identity: every agreement with it is zero
        let fresh = vec![1u8; share_randomness_len(2)];
        let secrets = Secrets {
            enc_sk: &a.enc_sk,
            agree_sk: &a.agree_sk,
            self_seed: &a.self_seed,
        };
        match share(4, 2, &LABELS, &secrets, &live, &fresh) {
            Err(CoreError::Protocol(msg)) => assert!(msg.contains("meter 9 advertised"), "{msg}"),
            _ => panic!("a zero agreement must be refused"),
        }
        assert!(share(4, 2, &LABELS, &secrets, &live, &fresh[1..]).is_err());
    }

    #[test]
    fn masks_match_the_primitive_with_signs_by_id_order() {
        let s = setup();
        let ctx = MaskContext {
            session: b"s",
            round: 4,
            vector: 0,
        };
        let mut acc = vec![0u32; 100];
        add_masks(&mut acc, 7, &[1; 32], &s.neighbours, &[3, 12], &ctx, 32).unwrap();
        let mut want = vec![0u32; 100];
        let streams = [
            MaskStream {
                seed: [1; 32],
                stream: prg::self_stream_id(7),
                sign: Sign::Add,
            },
            MaskStream {
                seed: [6; 32],
                stream: prg::pair_stream_id(3, 7),
                sign: Sign::Subtract,
            },
            MaskStream {
                seed: [15; 32],
                stream: prg::pair_stream_id(7, 12),
                sign: Sign::Add,
            },
        ];
        prg::expand_masks(&mut want, &streams, &ctx, 32, 1).unwrap();
        assert_eq!(acc, want);
        assert!(add_masks(&mut acc, 7, &[1; 32], &s.neighbours, &[4], &ctx, 32).is_err());
    }
}
