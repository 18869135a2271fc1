//! Deterministic train/test splits: a seeded shuffle of the task ids, so a split never changes when the
//! machine, the thread count or the order of loading changes.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(format!("unknown split `{other}` (expected `train` or `test`)")),
        }
    }
}

/// Assigns `n` items to splits: a seeded permutation, the first `round(n * test_fraction)` are test.
pub fn assign(n: usize, test_fraction: f64, seed: u64) -> Vec<Split> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_test = ((n as f64) * test_fraction.clamp(0.0, 1.0)).round() as usize;
    let mut splits = vec![Split::Train; n];
    for &i in order.iter().take(n_test) {
        splits[i] = Split::Test;
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_sized() {
        let a = assign(100, 0.2, 7);
        assert_eq!(a, assign(100, 0.2, 7));
        assert_eq!(a.iter().filter(|s| **s == Split::Test).count(), 20);
        assert_ne!(a, assign(100, 0.2, 8));
    }
}
