//! Bindings of a SecAgg+ meter's sharing stage and masked-input preparation
//! (`secagg_meter`).

use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{fixed, same_lengths, to_py_err};
use crate::error::CoreError;
use crate::prg::{MaskContext, MaskWord};
use crate::secagg_meter::{self, Advertised, Held, Labels, Neighbour, Relayed, Secrets};

type SharedLists<'py> = (
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
);

/// `meter`'s sharing stage with the neighbours `live_ids` (ascending) that
/// advertised the X25519 public keys `enc_keys` and `agree_keys`: see
/// `secagg_meter::share` (the labels' prefixes are `_Labels`' in
/// `gridsim/secagg/client.py`; `fresh` holds `64 + 12 * len(live_ids)` random
/// bytes). Returns, per neighbour, the pairwise mask seed, the key of the shares
/// it sends this meter, and `nonce || ciphertext || tag` of the two shares this
/// meter sends it; raises `ProtocolError` naming a neighbour whose key gives an
/// all-zero agreement. GIL released.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn secagg_share<'py>(
    py: Python<'py>,
    meter: u32,
    threshold: u32,
    seed_prefix: &[u8],
    key_prefix: &[u8],
    ad_prefix: &[u8],
    enc_sk: &[u8],
    agree_sk: &[u8],
    self_seed: &[u8],
    live_ids: Vec<u32>,
    enc_keys: Vec<Vec<u8>>,
    agree_keys: Vec<Vec<u8>>,
    fresh: &[u8],
) -> PyResult<SharedLists<'py>> {
    same_lengths(py, live_ids.len(), &[enc_keys.len(), agree_keys.len()])?;
    let live = live_ids
        .iter()
        .zip(&enc_keys)
        .zip(&agree_keys)
        .map(|((&id, enc), agree)| {
            Ok(Advertised {
                id,
                enc_key: *fixed(py, "X25519 public key", enc)?,
                agree_key: *fixed(py, "X25519 public key", agree)?,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let secrets = Secrets {
        enc_sk: fixed(py, "X25519 secret", enc_sk)?,
        agree_sk: fixed(py, "X25519 secret", agree_sk)?,
        self_seed: fixed(py, "self-mask seed", self_seed)?,
    };
    let labels = Labels {
        seed: seed_prefix,
        share_key: key_prefix,
        ad: ad_prefix,
    };
    let shared = py
        .detach(|| secagg_meter::share(meter, threshold, &labels, &secrets, &live, fresh))
        .map_err(|e| to_py_err(py, e))?;
    let bytes = |b: &[u8]| PyBytes::new(py, b);
    Ok((
        shared
            .neighbours
            .iter()
            .map(|n| bytes(&n.pair_seed))
            .collect(),
        shared
            .neighbours
            .iter()
            .map(|n| bytes(&n.inbound_key))
            .collect(),
        shared.sealed.iter().map(|c| bytes(c)).collect(),
    ))
}

type Prepared<'py> = (
    Vec<u32>,
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
    Bound<'py, PyAny>,
);

/// A mask vector in the accumulator word of its modulus (u32 up to 32 bits).
enum Words {
    U32(Vec<u32>),
    U64(Vec<u64>),
}

fn masks<W: MaskWord + numpy::Element + Default + Copy>(
    d: usize,
    meter: u32,
    self_seed: &[u8; 32],
    neighbours: &[Neighbour],
    held: &Held,
    ctx: &MaskContext<'_>,
    bits: u32,
) -> Result<Vec<W>, CoreError> {
    let mut acc = vec![W::default(); d];
    secagg_meter::add_masks(&mut acc, meter, self_seed, neighbours, &held.ids, ctx, bits)?;
    Ok(acc)
}

/// Checks, decrypts and checks again the shares relayed to `meter`
/// (`senders[i]`, `recipients[i]`, `ciphertexts[i]` = nonce || ciphertext || tag),
/// then sums its masks into a new vector of `d` words (u32 for `bits` <= 32, else
/// u64): its self mask and the pairwise mask of each neighbour that shared.
/// `neighbour_ids[i]` agreed `inbound_keys[i]` and `pair_seeds[i]` with it.
/// Returns the senders in ascending order, their self-mask-seed shares and
/// mask-key shares, and the masks; raises `ProtocolError` for a share it refuses
/// (see `secagg_meter::open_held`). GIL released.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn secagg_prepare<'py>(
    py: Python<'py>,
    meter: u32,
    threshold: u32,
    ad_prefix: &[u8],
    neighbour_ids: Vec<u32>,
    inbound_keys: Vec<Vec<u8>>,
    pair_seeds: Vec<Vec<u8>>,
    senders: Vec<u32>,
    recipients: Vec<u32>,
    ciphertexts: Vec<Vec<u8>>,
    self_seed: &[u8],
    session: &[u8],
    round: u64,
    d: usize,
    bits: u32,
) -> PyResult<Prepared<'py>> {
    same_lengths(
        py,
        neighbour_ids.len(),
        &[inbound_keys.len(), pair_seeds.len()],
    )?;
    same_lengths(py, senders.len(), &[recipients.len(), ciphertexts.len()])?;
    if !(1..=64).contains(&bits) {
        return Err(to_py_err(
            py,
            CoreError::InvalidArgument(format!("bits must be in 1..=64, got {bits}")),
        ));
    }
    let self_seed: [u8; 32] = *fixed(py, "self-mask seed", self_seed)?;
    let neighbours = neighbour_ids
        .iter()
        .zip(&inbound_keys)
        .zip(&pair_seeds)
        .map(|((&id, key), seed)| {
            Ok(Neighbour {
                id,
                inbound_key: *fixed(py, "inbound share key", key)?,
                pair_seed: *fixed(py, "pairwise mask seed", seed)?,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let relayed: Vec<Relayed<'_>> = senders
        .iter()
        .zip(&recipients)
        .zip(&ciphertexts)
        .map(|((&sender, &recipient), ct)| Relayed {
            sender,
            recipient,
            ciphertext: ct,
        })
        .collect();
    let ctx = MaskContext {
        session,
        round,
        vector: 0,
    };
    let (held, mask) = py
        .detach(|| {
            let held = secagg_meter::open_held(meter, threshold, ad_prefix, &neighbours, &relayed)?;
            let mask = if bits > 32 {
                Words::U64(masks(d, meter, &self_seed, &neighbours, &held, &ctx, bits)?)
            } else {
                Words::U32(masks(d, meter, &self_seed, &neighbours, &held, &ctx, bits)?)
            };
            Ok((held, mask))
        })
        .map_err(|e| to_py_err(py, e))?;
    let mask: Bound<'py, PyAny> = match mask {
        Words::U32(m) => m.into_pyarray(py).into_any(),
        Words::U64(m) => m.into_pyarray(py).into_any(),
    };
    Ok((
        held.ids,
        held.seed_shares
            .iter()
            .map(|s| PyBytes::new(py, s))
            .collect(),
        held.key_shares
            .iter()
            .map(|s| PyBytes::new(py, s))
            .collect(),
        mask,
    ))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(secagg_share, m)?)?;
    m.add_function(wrap_pyfunction!(secagg_prepare, m)?)?;
    Ok(())
}
