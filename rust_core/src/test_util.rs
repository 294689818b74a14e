//! Helpers shared by the modules' tests.

/// The bytes of a hex string (whitespace, e.g. from a wrapped RFC vector, ignored).
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The bytes of a hex string of exactly `N` bytes.
pub(crate) fn unhex_array<const N: usize>(s: &str) -> [u8; N] {
    unhex(s).try_into().unwrap()
}
