use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;

use super::to_py_err;
use crate::dgauss::{self, DiscreteGaussian};
use crate::error::CoreError;

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
    let seed: [u8; 32] = match seed {
        Some(bytes) => bytes.try_into().map_err(|_| {
            to_py_err(
                py,
                CoreError::InvalidArgument(format!("seed must be 32 bytes, got {}", bytes.len())),
            )
        })?,
        None => dgauss::os_seed().map_err(|e| to_py_err(py, e))?,
    };
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

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sample_discrete_gaussian, m)?)?;
    Ok(())
}
