//! Bindings of the secure-aggregation primitives: mask expansion (`prg`),
//! quantisation and packing (`quant`), Shamir sharing (`shamir`).

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::{same_lengths, to_py_err};
use crate::error::CoreError;
use crate::prg::{self, MaskContext, MaskStream, MaskWord, Sign, SEED_LEN};
use crate::quant::{self, Quantizer};
use crate::shamir::{self, Share};
use zeroize::Zeroize;

fn invalid(py: Python<'_>, msg: String) -> PyErr {
    to_py_err(py, CoreError::InvalidArgument(msg))
}

/// A CSPRNG from a 32-byte seed, or from 32 bytes of the OS when `seed` is None:
/// ChaCha20 (`ChaCha20Rng`) for Shamir coefficients, the AES-256-CTR keystream
/// generator (`prg::KeystreamRng`) for stochastic rounding, one word per value.
fn csprng<R: SeedableRng<Seed = [u8; 32]>>(py: Python<'_>, seed: Option<&[u8]>) -> PyResult<R> {
    let mut key = [0u8; 32];
    match seed {
        Some(s) => {
            key = s
                .try_into()
                .map_err(|_| invalid(py, format!("a CSPRNG seed is 32 bytes, got {}", s.len())))?;
        }
        None => getrandom::getrandom(&mut key)
            .map_err(|e| PyOSError::new_err(format!("OS randomness unavailable: {e}")))?,
    }
    let rng = R::from_seed(key);
    key.zeroize();
    Ok(rng)
}

fn mask_streams(
    py: Python<'_>,
    seeds: &PyReadonlyArray2<'_, u8>,
    streams: &PyReadonlyArray1<'_, u64>,
    signs: &PyReadonlyArray1<'_, i8>,
) -> PyResult<Vec<MaskStream>> {
    let shape = seeds.as_array().shape().to_vec();
    if shape[1] != SEED_LEN {
        return Err(invalid(
            py,
            format!("seeds must have shape (m, {SEED_LEN}), got {shape:?}"),
        ));
    }
    let (seeds, streams, signs) = (seeds.as_slice()?, streams.as_slice()?, signs.as_slice()?);
    let m = shape[0];
    same_lengths(py, m, &[streams.len(), signs.len()])?;
    seeds
        .chunks_exact(SEED_LEN)
        .zip(streams)
        .zip(signs)
        .map(|((seed, &stream), &sign)| {
            let sign = match sign {
                1 => Sign::Add,
                -1 => Sign::Subtract,
                other => return Err(invalid(py, format!("a sign is +1 or -1, got {other}"))),
            };
            Ok(MaskStream {
                seed: seed.try_into().expect("chunks of SEED_LEN"),
                stream,
                sign,
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn expand<W: MaskWord + numpy::Element>(
    py: Python<'_>,
    mut acc: PyReadwriteArray1<'_, W>,
    seeds: PyReadonlyArray2<'_, u8>,
    streams: PyReadonlyArray1<'_, u64>,
    signs: PyReadonlyArray1<'_, i8>,
    session: &[u8],
    round: u64,
    vector: u32,
    bits: u32,
    threads: usize,
) -> PyResult<()> {
    let list = mask_streams(py, &seeds, &streams, &signs)?;
    let acc = acc.as_slice_mut()?;
    let ctx = MaskContext {
        session,
        round,
        vector,
    };
    py.detach(|| prg::expand_masks(acc, &list, &ctx, bits, threads))
        .map_err(|e| to_py_err(py, e))
}

/// Adds (+1) or subtracts (-1) the AES-256-CTR mask of each seed into `acc`,
/// then reduces `acc` modulo 2^bits; GIL released, split over `threads`.
#[pyfunction]
#[pyo3(signature = (acc, seeds, streams, signs, session, round, vector, bits, threads=0))]
#[allow(clippy::too_many_arguments)]
fn expand_masks_u32(
    py: Python<'_>,
    acc: PyReadwriteArray1<'_, u32>,
    seeds: PyReadonlyArray2<'_, u8>,
    streams: PyReadonlyArray1<'_, u64>,
    signs: PyReadonlyArray1<'_, i8>,
    session: &[u8],
    round: u64,
    vector: u32,
    bits: u32,
    threads: usize,
) -> PyResult<()> {
    expand(
        py, acc, seeds, streams, signs, session, round, vector, bits, threads,
    )
}

/// As `expand_masks_u32`, for a u64 accumulator (bits up to 64).
#[pyfunction]
#[pyo3(signature = (acc, seeds, streams, signs, session, round, vector, bits, threads=0))]
#[allow(clippy::too_many_arguments)]
fn expand_masks_u64(
    py: Python<'_>,
    acc: PyReadwriteArray1<'_, u64>,
    seeds: PyReadonlyArray2<'_, u8>,
    streams: PyReadonlyArray1<'_, u64>,
    signs: PyReadonlyArray1<'_, i8>,
    session: &[u8],
    round: u64,
    vector: u32,
    bits: u32,
    threads: usize,
) -> PyResult<()> {
    expand(
        py, acc, seeds, streams, signs, session, round, vector, bits, threads,
    )
}

/// The AES-256 key of one mask stream (exposed for known-answer tests).
#[pyfunction]
fn derive_mask_key<'py>(
    py: Python<'py>,
    seed: &[u8],
    session: &[u8],
    round: u64,
    vector: u32,
    stream: u64,
    word_bits: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let seed: [u8; SEED_LEN] = seed.try_into().map_err(|_| {
        invalid(
            py,
            format!("a mask seed is {SEED_LEN} bytes, got {}", seed.len()),
        )
    })?;
    let ctx = MaskContext {
        session,
        round,
        vector,
    };
    let key = prg::derive_key(&seed, &ctx, stream, word_bits).map_err(|e| to_py_err(py, e))?;
    Ok(PyBytes::new(py, &key))
}

/// True when AES runs on AES-NI.
#[pyfunction]
fn aes_hardware() -> bool {
    prg::aes_hardware()
}

fn quantizer(py: Python<'_>, clip: f64, scale: f64, bits: u32) -> PyResult<Quantizer> {
    Quantizer::new(clip, scale, bits).map_err(|e| to_py_err(py, e))
}

/// Quantises `x` into Z_{2^bits} (bits <= 32); returns (residues, saturated count).
#[pyfunction]
#[pyo3(signature = (x, clip, scale, bits, seed=None))]
fn quantize_u32<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f32>,
    clip: f64,
    scale: f64,
    bits: u32,
    seed: Option<&[u8]>,
) -> PyResult<(Bound<'py, PyArray1<u32>>, usize)> {
    let q = quantizer(py, clip, scale, bits)?;
    let mut rng = csprng::<prg::KeystreamRng>(py, seed)?;
    let x = x.as_slice()?;
    let (out, saturated) = py
        .detach(|| {
            let mut out = vec![0u32; x.len()];
            q.quantize_u32(x, &mut out, &mut rng).map(|s| (out, s))
        })
        .map_err(|e| to_py_err(py, e))?;
    Ok((out.into_pyarray(py), saturated))
}

/// Quantises `x` into Z_{2^bits} (bits <= 64); returns (residues, saturated count).
#[pyfunction]
#[pyo3(signature = (x, clip, scale, bits, seed=None))]
fn quantize_u64<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f32>,
    clip: f64,
    scale: f64,
    bits: u32,
    seed: Option<&[u8]>,
) -> PyResult<(Bound<'py, PyArray1<u64>>, usize)> {
    let q = quantizer(py, clip, scale, bits)?;
    let mut rng = csprng::<prg::KeystreamRng>(py, seed)?;
    let x = x.as_slice()?;
    let (out, saturated) = py
        .detach(|| {
            let mut out = vec![0u64; x.len()];
            q.quantize_u64(x, &mut out, &mut rng).map(|s| (out, s))
        })
        .map_err(|e| to_py_err(py, e))?;
    Ok((out.into_pyarray(py), saturated))
}

/// Decodes the modular sum of `n` quantised vectors; returns (values, out-of-range count).
#[pyfunction]
fn dequantize_sum_u32<'py>(
    py: Python<'py>,
    total: PyReadonlyArray1<'py, u32>,
    clip: f64,
    scale: f64,
    bits: u32,
    n: u64,
) -> PyResult<(Bound<'py, PyArray1<f64>>, usize)> {
    let q = quantizer(py, clip, scale, bits)?;
    let total = total.as_slice()?;
    let (out, bad) = py
        .detach(|| {
            let mut out = vec![0f64; total.len()];
            q.dequantize_sum_u32(total, n, &mut out).map(|c| (out, c))
        })
        .map_err(|e| to_py_err(py, e))?;
    Ok((out.into_pyarray(py), bad))
}

/// Decodes the modular sum of `n` quantised vectors; returns (values, out-of-range count).
#[pyfunction]
fn dequantize_sum_u64<'py>(
    py: Python<'py>,
    total: PyReadonlyArray1<'py, u64>,
    clip: f64,
    scale: f64,
    bits: u32,
    n: u64,
) -> PyResult<(Bound<'py, PyArray1<f64>>, usize)> {
    let q = quantizer(py, clip, scale, bits)?;
    let total = total.as_slice()?;
    let (out, bad) = py
        .detach(|| {
            let mut out = vec![0f64; total.len()];
            q.dequantize_sum_u64(total, n, &mut out).map(|c| (out, c))
        })
        .map_err(|e| to_py_err(py, e))?;
    Ok((out.into_pyarray(py), bad))
}

/// Largest scale at which a sum of `n` clipped vectors cannot wrap modulo 2^bits.
#[pyfunction]
fn max_scale(py: Python<'_>, clip: f64, bits: u32, n: u64) -> PyResult<f64> {
    quant::max_scale(clip, bits, n).map_err(|e| to_py_err(py, e))
}

/// Packs u32 values at exactly `bits` bits each (little-endian bit order).
#[pyfunction]
fn pack_u32<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, u32>,
    bits: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let values = values.as_slice()?;
    let len = quant::packed_len(values.len(), bits).map_err(|e| to_py_err(py, e))?;
    PyBytes::new_with(py, len, |out| {
        py.detach(|| quant::pack_u32(values, bits, out))
            .map_err(|e| to_py_err(py, e))
    })
}

/// Packs u64 values at exactly `bits` bits each (little-endian bit order).
#[pyfunction]
fn pack_u64<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, u64>,
    bits: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let values = values.as_slice()?;
    let len = quant::packed_len(values.len(), bits).map_err(|e| to_py_err(py, e))?;
    PyBytes::new_with(py, len, |out| {
        py.detach(|| quant::pack_u64(values, bits, out))
            .map_err(|e| to_py_err(py, e))
    })
}

/// Unpacks `d` values of `bits` bits (<= 32) into a u32 array.
#[pyfunction]
fn unpack_u32<'py>(
    py: Python<'py>,
    data: &[u8],
    bits: u32,
    d: usize,
) -> PyResult<Bound<'py, PyArray1<u32>>> {
    let out = py
        .detach(|| {
            let mut out = vec![0u32; d];
            quant::unpack_u32(data, bits, &mut out).map(|()| out)
        })
        .map_err(|e| to_py_err(py, e))?;
    Ok(out.into_pyarray(py))
}

/// Unpacks `d` values of `bits` bits (<= 64) into a u64 array.
#[pyfunction]
fn unpack_u64<'py>(
    py: Python<'py>,
    data: &[u8],
    bits: u32,
    d: usize,
) -> PyResult<Bound<'py, PyArray1<u64>>> {
    let out = py
        .detach(|| {
            let mut out = vec![0u64; d];
            quant::unpack_u64(data, bits, &mut out).map(|()| out)
        })
        .map_err(|e| to_py_err(py, e))?;
    Ok(out.into_pyarray(py))
}

/// Shamir-splits a 32-byte secret at the x-coordinates `xs`; returns encoded shares.
#[pyfunction]
#[pyo3(signature = (secret, threshold, xs, seed=None))]
fn shamir_split<'py>(
    py: Python<'py>,
    secret: &[u8],
    threshold: u32,
    xs: Vec<u32>,
    seed: Option<&[u8]>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let secret: [u8; shamir::SECRET_LEN] = secret.try_into().map_err(|_| {
        invalid(
            py,
            format!(
                "a secret is {} bytes, got {}",
                shamir::SECRET_LEN,
                secret.len()
            ),
        )
    })?;
    let mut rng = csprng::<ChaCha20Rng>(py, seed)?;
    let shares = py
        .detach(|| shamir::split(&secret, threshold, &xs, &mut rng))
        .map_err(|e| to_py_err(py, e))?;
    Ok(shares
        .iter()
        .map(|s| PyBytes::new(py, &s.to_bytes()))
        .collect())
}

/// Reconstructs a 32-byte secret from encoded shares.
#[pyfunction]
fn shamir_combine<'py>(py: Python<'py>, shares: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyBytes>> {
    let secret = py
        .detach(|| {
            let parsed = shares
                .iter()
                .map(|b| Share::from_bytes(b))
                .collect::<Result<Vec<_>, _>>()?;
            shamir::combine(&parsed)
        })
        .map_err(|e| to_py_err(py, e))?;
    Ok(PyBytes::new(py, &secret))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(expand_masks_u32, m)?)?;
    m.add_function(wrap_pyfunction!(expand_masks_u64, m)?)?;
    m.add_function(wrap_pyfunction!(derive_mask_key, m)?)?;
    m.add_function(wrap_pyfunction!(aes_hardware, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_u32, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_u64, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_sum_u32, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_sum_u64, m)?)?;
    m.add_function(wrap_pyfunction!(max_scale, m)?)?;
    m.add_function(wrap_pyfunction!(pack_u32, m)?)?;
    m.add_function(wrap_pyfunction!(pack_u64, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_u32, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_u64, m)?)?;
    m.add_function(wrap_pyfunction!(shamir_split, m)?)?;
    m.add_function(wrap_pyfunction!(shamir_combine, m)?)?;
    Ok(())
}
