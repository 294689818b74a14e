//! Bindings of Ed25519 signing and verification (`ed25519`).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{fixed, same_lengths};
use crate::ed25519::{self, KEY_LEN};

fn key<'a>(py: Python<'_>, what: &str, bytes: &'a [u8]) -> PyResult<&'a [u8; KEY_LEN]> {
    fixed(py, &format!("Ed25519 {what}"), bytes)
}

/// An Ed25519 signing key expanded once from its 32-byte seed (RFC 8032).
#[pyclass(frozen, module = "gridsim._core")]
struct Ed25519Signer {
    inner: ed25519::Signer,
}

#[pymethods]
impl Ed25519Signer {
    #[new]
    fn new(py: Python<'_>, seed: &[u8]) -> PyResult<Self> {
        Ok(Ed25519Signer {
            inner: ed25519::Signer::new(key(py, "seed", seed)?),
        })
    }

    /// The 32-byte public key.
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.public_key())
    }

    /// The 64-byte signature of `message`. Holds the GIL: a signature takes
    /// microseconds, less than handing the GIL over and back would.
    fn sign<'py>(&self, py: Python<'py>, message: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.sign(message))
    }
}

/// Whether `signature` is `public`'s Ed25519 signature of `message` (strict
/// verification: small-order keys and R values are refused). Holds the GIL.
#[pyfunction]
fn ed25519_verify(
    py: Python<'_>,
    public: &[u8],
    message: &[u8],
    signature: &[u8],
) -> PyResult<bool> {
    Ok(ed25519::verify(
        key(py, "public key", public)?,
        message,
        signature,
    ))
}

/// [`ed25519_verify`] of each `(publics[i], messages[i], signatures[i])`, with the
/// GIL released: over rayon's pool, or with `parallel=False` on the calling thread
/// alone (a caller that is itself the one spare thread: rayon's workers would
/// compete with the rest of the process and spin between batches).
#[pyfunction]
#[pyo3(signature = (publics, messages, signatures, parallel=true))]
fn ed25519_verify_many(
    py: Python<'_>,
    publics: Vec<Vec<u8>>,
    messages: Vec<Vec<u8>>,
    signatures: Vec<Vec<u8>>,
    parallel: bool,
) -> PyResult<Vec<bool>> {
    same_lengths(py, publics.len(), &[messages.len(), signatures.len()])?;
    let items = publics
        .iter()
        .zip(&messages)
        .zip(&signatures)
        .map(|((p, m), s)| Ok((key(py, "public key", p)?, m.as_slice(), s.as_slice())))
        .collect::<PyResult<Vec<_>>>()?;
    let verify = if parallel {
        ed25519::verify_many
    } else {
        ed25519::verify_each
    };
    Ok(py.detach(|| verify(&items)))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Ed25519Signer>()?;
    m.add_function(wrap_pyfunction!(ed25519_verify, m)?)?;
    m.add_function(wrap_pyfunction!(ed25519_verify_many, m)?)?;
    Ok(())
}
