//! The one error type of the crate; the binding layer maps it to the Python
//! exceptions of `gridsim/exceptions.py`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// Arrays whose lengths must agree do not.
    LengthMismatch { expected: usize, got: usize },
    /// An argument is outside the domain of the function.
    InvalidArgument(String),
    /// A proof, signature, hash or share failed to verify.
    Integrity(String),
    /// A protocol rule was broken (e.g. an unmasking request naming a meter twice).
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::LengthMismatch { expected, got } => {
                write!(f, "length mismatch: expected {expected}, got {got}")
            }
            CoreError::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            CoreError::Integrity(msg) => write!(f, "integrity check failed: {msg}"),
            CoreError::Protocol(msg) => write!(f, "protocol violation: {msg}"),
        }
    }
}

impl std::error::Error for CoreError {}
