//! `gridsim._core.merkle_*`: the RFC 9162 Merkle tree of `crate::merkle`.
//!
//! Leaves arrive as a sequence of `bytes` and are hashed in place: the slices
//! borrow the immutable `bytes` objects, which the argument list keeps alive
//! while the GIL is released.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::to_py_err;
use crate::error::CoreError;
use crate::merkle::{self, Hash, HASH_LEN};

fn as_slices<'a>(leaves: &'a [Bound<'_, PyBytes>]) -> Vec<&'a [u8]> {
    leaves.iter().map(|leaf| leaf.as_bytes()).collect()
}

fn to_hash(py: Python<'_>, what: &str, bytes: &[u8]) -> PyResult<Hash> {
    bytes.try_into().map_err(|_| {
        let msg = format!("{what} must be {HASH_LEN} bytes, got {}", bytes.len());
        to_py_err(py, CoreError::InvalidArgument(msg))
    })
}

fn to_proof(py: Python<'_>, proof: &[Bound<'_, PyBytes>]) -> PyResult<Vec<Hash>> {
    proof
        .iter()
        .enumerate()
        .map(|(i, hash)| to_hash(py, &format!("proof[{i}]"), hash.as_bytes()))
        .collect()
}

fn to_py_list<'py>(py: Python<'py>, hashes: &[Hash]) -> Vec<Bound<'py, PyBytes>> {
    hashes.iter().map(|hash| PyBytes::new(py, hash)).collect()
}

/// `SHA-256(0x00 || data)`.
#[pyfunction]
fn merkle_leaf_hash<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &py.detach(|| merkle::leaf_hash(data)))
}

/// Root of the tree over `leaves`.
#[pyfunction]
fn merkle_root<'py>(py: Python<'py>, leaves: Vec<Bound<'py, PyBytes>>) -> Bound<'py, PyBytes> {
    let leaves = as_slices(&leaves);
    PyBytes::new(py, &py.detach(|| merkle::root(&leaves)))
}

/// Audit path of leaf `index`, bottom-up.
#[pyfunction]
fn merkle_inclusion_proof<'py>(
    py: Python<'py>,
    leaves: Vec<Bound<'py, PyBytes>>,
    index: usize,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let leaves = as_slices(&leaves);
    let proof = py
        .detach(|| merkle::inclusion_proof(&leaves, index))
        .map_err(|e| to_py_err(py, e))?;
    Ok(to_py_list(py, &proof))
}

/// The root of the tree over `leaves` and every leaf's audit path, in one pass.
#[pyfunction]
fn merkle_root_and_inclusion_proofs<'py>(
    py: Python<'py>,
    leaves: Vec<Bound<'py, PyBytes>>,
) -> (Bound<'py, PyBytes>, Vec<Vec<Bound<'py, PyBytes>>>) {
    let leaves = as_slices(&leaves);
    let (root, proofs) = py.detach(|| merkle::root_and_inclusion_proofs(&leaves));
    let proofs = proofs.iter().map(|p| to_py_list(py, p)).collect();
    (PyBytes::new(py, &root), proofs)
}

/// Proof that the first `old_size` leaves are a prefix of `leaves`.
#[pyfunction]
fn merkle_consistency_proof<'py>(
    py: Python<'py>,
    leaves: Vec<Bound<'py, PyBytes>>,
    old_size: usize,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let leaves = as_slices(&leaves);
    let proof = py
        .detach(|| merkle::consistency_proof(&leaves, old_size))
        .map_err(|e| to_py_err(py, e))?;
    Ok(to_py_list(py, &proof))
}

/// Whether `proof` places `leaf_hash` at `index` of the tree with `root`.
#[pyfunction]
fn merkle_verify_inclusion(
    py: Python<'_>,
    leaf_hash: &[u8],
    index: u64,
    tree_size: u64,
    proof: Vec<Bound<'_, PyBytes>>,
    root: &[u8],
) -> PyResult<bool> {
    let leaf_hash = to_hash(py, "leaf_hash", leaf_hash)?;
    let root = to_hash(py, "root", root)?;
    let proof = to_proof(py, &proof)?;
    Ok(merkle::verify_inclusion(
        &leaf_hash, index, tree_size, &proof, &root,
    ))
}

/// Whether `proof` shows the old tree is a prefix of the new one.
#[pyfunction]
fn merkle_verify_consistency(
    py: Python<'_>,
    old_size: u64,
    new_size: u64,
    old_root: &[u8],
    new_root: &[u8],
    proof: Vec<Bound<'_, PyBytes>>,
) -> PyResult<bool> {
    let old_root = to_hash(py, "old_root", old_root)?;
    let new_root = to_hash(py, "new_root", new_root)?;
    let proof = to_proof(py, &proof)?;
    Ok(merkle::verify_consistency(
        old_size, new_size, &old_root, &new_root, &proof,
    ))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(merkle_leaf_hash, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_root, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_inclusion_proof, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_root_and_inclusion_proofs, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_consistency_proof, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_verify_inclusion, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_verify_consistency, m)?)?;
    Ok(())
}
