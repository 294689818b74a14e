//! The pyo3 layer: small functions that borrow numpy arrays, run the pure Rust
//! code with the GIL released, and map `CoreError` to `gridsim.exceptions`.

use pyo3::prelude::*;

use crate::error::CoreError;

mod aead;
mod dgauss;
mod ed25519;
mod fedavg;
mod masking;
mod merkle;
mod secagg_meter;
mod x25519;

/// Converts a core error into the matching exception of `gridsim.exceptions`.
pub(crate) fn to_py_err(py: Python<'_>, err: CoreError) -> PyErr {
    let class = match err {
        CoreError::LengthMismatch { .. } | CoreError::InvalidArgument(_) => "InvalidInputError",
        CoreError::Integrity(_) => "IntegrityError",
        CoreError::Protocol(_) => "ProtocolError",
    };
    let exc = py
        .import("gridsim.exceptions")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1((err.to_string(),)));
    match exc {
        Ok(exc) => PyErr::from_value(exc),
        Err(import_err) => import_err,
    }
}

/// `bytes` as a fixed-size key, or `InvalidInputError` naming `what` it should be.
pub(crate) fn fixed<'a, const N: usize>(
    py: Python<'_>,
    what: &str,
    bytes: &'a [u8],
) -> PyResult<&'a [u8; N]> {
    bytes.try_into().map_err(|_| {
        to_py_err(
            py,
            CoreError::InvalidArgument(format!("an {what} is {N} bytes, got {}", bytes.len())),
        )
    })
}

/// `InvalidInputError` unless every length in `got` equals `expected` (parallel
/// argument lists of one batch call).
pub(crate) fn same_lengths(py: Python<'_>, expected: usize, got: &[usize]) -> PyResult<()> {
    match got.iter().find(|&&n| n != expected) {
        Some(&got) => Err(to_py_err(py, CoreError::LengthMismatch { expected, got })),
        None => Ok(()),
    }
}

/// Runs `work` with the GIL released when it is `long` enough to pay for that,
/// else holding it. Giving the GIL up costs little, but taking it back from
/// another thread waits for that thread's switch interval: a SecAgg+ meter's call
/// of a few microseconds (a share batch's AEAD) cost 2 us isolated and 5.5 us in
/// a 500-meter run, where the training pool's and the verifier's threads are
/// waiting for the GIL (Zen 4).
pub(crate) fn detach_if<T, F>(py: Python<'_>, long: bool, work: F) -> T
where
    F: pyo3::marker::Ungil + FnOnce() -> T,
    T: pyo3::marker::Ungil,
{
    if long {
        py.detach(work)
    } else {
        work()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    aead::register(m)?;
    fedavg::register(m)?;
    merkle::register(m)?;
    dgauss::register(m)?;
    ed25519::register(m)?;
    masking::register(m)?;
    secagg_meter::register(m)?;
    x25519::register(m)?;
    Ok(())
}
