//! Weighted accumulation of model updates (the FedAvg sum).
//!
//! The aggregator folds each arriving update into an f64 accumulator as it
//! comes in, so a round never holds all updates in memory at once, and the sum
//! does not lose precision in f32 when hundreds of updates are added.

use crate::error::{CoreError, Result};

/// `acc[i] += weight * update[i]` for every i.
pub fn accumulate_weighted(acc: &mut [f64], update: &[f32], weight: f64) -> Result<()> {
    if acc.len() != update.len() {
        return Err(CoreError::LengthMismatch {
            expected: acc.len(),
            got: update.len(),
        });
    }
    if !weight.is_finite() {
        return Err(CoreError::InvalidArgument(format!(
            "weight must be finite, got {weight}"
        )));
    }
    for (a, &u) in acc.iter_mut().zip(update) {
        *a += weight * f64::from(u);
    }
    Ok(())
}

/// Number of entries of `update` that are NaN or infinite.
pub fn count_non_finite(update: &[f32]) -> usize {
    update.iter().filter(|x| !x.is_finite()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_weighted_sum() {
        let mut acc = vec![1.0, 2.0, 3.0];
        accumulate_weighted(&mut acc, &[1.0, -1.0, 0.5], 2.0).unwrap();
        assert_eq!(acc, vec![3.0, 0.0, 4.0]);
    }

    #[test]
    fn rejects_length_mismatch() {
        let mut acc = vec![0.0; 3];
        let err = accumulate_weighted(&mut acc, &[1.0, 2.0], 1.0).unwrap_err();
        assert_eq!(
            err,
            CoreError::LengthMismatch {
                expected: 3,
                got: 2
            }
        );
        assert_eq!(
            acc,
            vec![0.0; 3],
            "a rejected update must leave the sum untouched"
        );
    }

    #[test]
    fn rejects_non_finite_weight() {
        let mut acc = vec![0.0; 2];
        assert!(accumulate_weighted(&mut acc, &[1.0, 2.0], f64::NAN).is_err());
    }

    #[test]
    fn counts_non_finite() {
        assert_eq!(count_non_finite(&[1.0, f32::NAN, f32::INFINITY, -0.0]), 2);
    }
}
