//! Bindings of X25519 key agreement (`x25519`).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{fixed, same_lengths};
use crate::x25519::{self, KEY_LEN};

fn key(py: Python<'_>, what: &str, bytes: &[u8]) -> PyResult<[u8; KEY_LEN]> {
    fixed(py, &format!("X25519 {what}"), bytes).copied()
}

type Pair = ([u8; KEY_LEN], [u8; KEY_LEN]);

/// `(secrets[i], publics[i])` as keys, checked for length.
fn pairs(py: Python<'_>, secrets: &[Vec<u8>], publics: &[Vec<u8>]) -> PyResult<Vec<Pair>> {
    same_lengths(py, secrets.len(), &[publics.len()])?;
    secrets
        .iter()
        .zip(publics)
        .map(|(s, p)| Ok((key(py, "secret", s)?, key(py, "public key", p)?)))
        .collect()
}

/// The public key of a 32-byte X25519 secret (RFC 7748).
#[pyfunction]
fn x25519_public_key<'py>(py: Python<'py>, secret: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let secret = key(py, "secret", secret)?;
    Ok(PyBytes::new(py, &x25519::public_key(&secret)))
}

/// The shared secret of `secrets[i]` and `publics[i]` for each i, computed with
/// the GIL released over rayon's pool; None where the agreement is all zeros
/// (a low-order public key), which the caller must refuse.
#[pyfunction]
fn x25519_agree<'py>(
    py: Python<'py>,
    secrets: Vec<Vec<u8>>,
    publics: Vec<Vec<u8>>,
) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
    let pairs = pairs(py, &secrets, &publics)?;
    let shared = py.detach(|| x25519::agree_many(&pairs));
    Ok(shared
        .iter()
        .map(|s| s.as_ref().map(|s| PyBytes::new(py, s)))
        .collect())
}

/// [`x25519_agree`], each shared secret stretched with HKDF-SHA256 (no salt)
/// into one 32-byte key per string of `infos[i]`; the secrets never reach
/// Python. None where the agreement is all zeros.
#[pyfunction]
fn x25519_derive<'py>(
    py: Python<'py>,
    secrets: Vec<Vec<u8>>,
    publics: Vec<Vec<u8>>,
    infos: Vec<Vec<Vec<u8>>>,
) -> PyResult<Vec<Option<Vec<Bound<'py, PyBytes>>>>> {
    same_lengths(py, secrets.len(), &[infos.len()])?;
    let pairs = pairs(py, &secrets, &publics)?;
    let derived = py.detach(|| x25519::agree_derive_many(&pairs, &infos));
    Ok(derived
        .iter()
        .map(|keys| {
            keys.as_ref()
                .map(|keys| keys.iter().map(|k| PyBytes::new(py, k)).collect())
        })
        .collect())
}

/// Which engine computes batches of agreements on this CPU: "ifma-ladder-x8"
/// (eight Montgomery ladders at once on AVX-512 IFMA) or "edwards".
#[pyfunction]
fn x25519_engine() -> &'static str {
    x25519::engine()
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(x25519_engine, m)?)?;
    m.add_function(wrap_pyfunction!(x25519_public_key, m)?)?;
    m.add_function(wrap_pyfunction!(x25519_agree, m)?)?;
    m.add_function(wrap_pyfunction!(x25519_derive, m)?)?;
    Ok(())
}
