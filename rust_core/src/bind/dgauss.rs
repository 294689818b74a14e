use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;

use super::to_py_err;
use crate::dgauss::{self, DiscreteGaussian};
use crate::error::CoreError;

/// The 32-byte seed a caller passed, or a fresh one from the OS.
fn seed_bytes(py: Python<'_>, seed: Option<&[u8]>) -> PyResult<[u8; 32]> {
    match seed {
        Some(bytes) => bytes.try_into().map_err(|_| {
            to_py_err(
                py,
                CoreError::InvalidArgument(format!("seed must be 32 bytes, got {}", bytes.len())),
            )
        }),
        None => dgauss::os_seed().map_err(|e| to_py_err(py, e)),
    }
}

/// `size` exact samples of the discrete Gaussian N_Z(0, sigma^2) as a new int64
/// array, filled with the GIL released. `seed` (32 bytes) makes the result
/// reproducible; without it the seed comes from the OS. `threads` = 0 uses all
/// cores; the seeded result does not depend on it.
#[pyfunction]
#[pyo3(signature = (sigma, size, seed=None, threads=0))]
fn sample_discrete_gaussian<'py>(
    py: Python<'py>,
    sigma: f64,
    size: usize,
    seed: Option<&[u8]>,
    threads: usize,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let sampler = DiscreteGaussian::new(sigma).map_err(|e| to_py_err(py, e))?;
    let seed = seed_bytes(py, seed)?;
    // Allocated by numpy.empty rather than PyArray1::zeros so that a size too
    // large for memory raises MemoryError instead of panicking; every element is
    // written below.
    let out = py
        .import("numpy")?
        .getattr("empty")?
        .call1((size, "int64"))?
        .cast_into::<PyArray1<i64>>()?;
    {
        let mut view = out.readwrite();
        let slice = view.as_slice_mut()?;
        py.detach(|| sampler.fill(slice, &seed, threads))
            .map_err(|e| to_py_err(py, e))?;
    }
    Ok(out)
}

/// The same samples written into an existing contiguous int64 array `out`
/// (no allocation, no copy): with the same seed, `out` ends up equal to
/// `sample_discrete_gaussian(sigma, len(out), seed)`.
#[pyfunction]
#[pyo3(signature = (sigma, out, seed=None, threads=0))]
fn fill_discrete_gaussian(
    py: Python<'_>,
    sigma: f64,
    out: &Bound<'_, PyArray1<i64>>,
    seed: Option<&[u8]>,
    threads: usize,
) -> PyResult<()> {
    let sampler = DiscreteGaussian::new(sigma).map_err(|e| to_py_err(py, e))?;
    let seed = seed_bytes(py, seed)?;
    let mut view = out.try_readwrite().map_err(|e| {
        to_py_err(
            py,
            CoreError::InvalidArgument(format!("out is not writable: {e}")),
        )
    })?;
    let slice = view.as_slice_mut().map_err(|_| {
        to_py_err(
            py,
            CoreError::InvalidArgument("out must be a contiguous int64 array".into()),
        )
    })?;
    py.detach(|| sampler.fill(slice, &seed, threads))
        .map_err(|e| to_py_err(py, e))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sample_discrete_gaussian, m)?)?;
    m.add_function(wrap_pyfunction!(fill_discrete_gaussian, m)?)?;
    Ok(())
}
