//! Bindings of batched ChaCha20-Poly1305 (`aead`).

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use zeroize::Zeroize;

use super::{detach_if, fixed, same_lengths};
use crate::aead::{self, Item, KEY_LEN, NONCE_LEN};

/// Items from which a batch releases the GIL: below, a batch of short shares takes
/// microseconds (0.7 us per 146-byte share, Zen 5).
const DETACH_MIN_ITEMS: usize = 256;

/// The items of one batch call, keys and nonces checked for length.
fn items<'a>(
    py: Python<'_>,
    keys: &'a [Vec<u8>],
    nonces: &'a [Vec<u8>],
    data: &'a [Vec<u8>],
    ads: &'a [Vec<u8>],
) -> PyResult<Vec<Item<'a>>> {
    same_lengths(py, keys.len(), &[nonces.len(), data.len(), ads.len()])?;
    keys.iter()
        .zip(nonces)
        .zip(data.iter().zip(ads))
        .map(|((key, nonce), (data, ad))| {
            Ok(Item {
                key: fixed::<KEY_LEN>(py, "AEAD key", key)?,
                nonce: fixed::<NONCE_LEN>(py, "AEAD nonce", nonce)?,
                data,
                ad,
            })
        })
        .collect()
}

/// ChaCha20-Poly1305 (RFC 8439) of each `plaintexts[i]` under `keys[i]`,
/// `nonces[i]` and associated data `ads[i]`: `ciphertext || tag`, in order
/// (the GIL released for large batches).
#[pyfunction]
fn chacha20poly1305_seal<'py>(
    py: Python<'py>,
    mut keys: Vec<Vec<u8>>,
    nonces: Vec<Vec<u8>>,
    mut plaintexts: Vec<Vec<u8>>,
    ads: Vec<Vec<u8>>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let sealed = {
        let items = items(py, &keys, &nonces, &plaintexts, &ads)?;
        detach_if(py, items.len() >= DETACH_MIN_ITEMS, || {
            aead::seal_many(&items)
        })
    };
    // The copies of the keys and plaintexts (Shamir shares) are wiped.
    keys.zeroize();
    plaintexts.zeroize();
    Ok(sealed.iter().map(|c| PyBytes::new(py, c)).collect())
}

/// The plaintext of each `ciphertexts[i]` (`ciphertext || tag`), in order; None
/// where it fails authentication (the GIL released for large batches).
#[pyfunction]
fn chacha20poly1305_open<'py>(
    py: Python<'py>,
    mut keys: Vec<Vec<u8>>,
    nonces: Vec<Vec<u8>>,
    ciphertexts: Vec<Vec<u8>>,
    ads: Vec<Vec<u8>>,
) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
    let mut opened = {
        let items = items(py, &keys, &nonces, &ciphertexts, &ads)?;
        detach_if(py, items.len() >= DETACH_MIN_ITEMS, || {
            aead::open_many(&items)
        })
    };
    let out = opened
        .iter()
        .map(|p| p.as_ref().map(|p| PyBytes::new(py, p)))
        .collect();
    // The copies of the keys and plaintexts (Shamir shares) are wiped.
    keys.zeroize();
    opened.iter_mut().flatten().for_each(|p| p.zeroize());
    Ok(out)
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(chacha20poly1305_seal, m)?)?;
    m.add_function(wrap_pyfunction!(chacha20poly1305_open, m)?)?;
    Ok(())
}
