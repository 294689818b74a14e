use numpy::{PyReadonlyArray1, PyReadwriteArray1};
use pyo3::prelude::*;

use super::to_py_err;
use crate::fedavg;

/// `acc += weight * update`, in place, with the GIL released.
#[pyfunction]
fn accumulate_weighted(
    py: Python<'_>,
    mut acc: PyReadwriteArray1<'_, f64>,
    update: PyReadonlyArray1<'_, f32>,
    weight: f64,
) -> PyResult<()> {
    let acc = acc.as_slice_mut()?;
    let update = update.as_slice()?;
    py.detach(|| fedavg::accumulate_weighted(acc, update, weight))
        .map_err(|e| to_py_err(py, e))
}

/// Number of NaN or infinite entries.
#[pyfunction]
fn count_non_finite(py: Python<'_>, update: PyReadonlyArray1<'_, f32>) -> PyResult<usize> {
    let update = update.as_slice()?;
    Ok(py.detach(|| fedavg::count_non_finite(update)))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(accumulate_weighted, m)?)?;
    m.add_function(wrap_pyfunction!(count_non_finite, m)?)?;
    Ok(())
}
