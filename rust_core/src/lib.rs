//! gridsim's native core.
//!
//! The algorithms live in pure Rust modules with no pyo3 in them; `bind` is the
//! thin layer that exposes them to Python as `gridsim._core` (feature `python`).

pub mod aead;
pub mod dgauss;
pub mod ed25519;
pub mod error;
pub mod fedavg;
pub mod memo;
pub mod merkle;
pub mod prg;
pub mod quant;
pub mod secagg_meter;
pub mod shamir;
pub mod x25519;

#[cfg(test)]
mod test_util;

#[cfg(feature = "python")]
mod bind;
