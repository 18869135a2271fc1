//! UserRL reward shaping (reference §7): a trajectory's turn rewards r_1..r_T become a trajectory score S (Sum or
//! R2G) and turn credits c_t (Equalized, R2G, EM or Naive); scores are normalised within a GRPO group into an
//! advantage Â; each turn's policy tokens get `Â · c_t / c̄`, where c̄ is the credit averaged over the
//! trajectory's policy tokens with non-zero credit, so their mean is Â.

use serde::{Deserialize, Serialize};

/// The discount of the R2G score and credits in the paper's runs.
pub const DEFAULT_GAMMA: f64 = 0.8;
/// Added to the group's standard deviation before dividing (as the original).
pub const STD_EPSILON: f64 = 1e-6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrajectoryScore {
    /// The mean of the turn rewards, rounded to 4 decimals (the original divides the sum by T despite the name).
    #[default]
    Sum,
    /// Σ γ^(t−1) r_t: earlier success is worth more.
    R2g,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TurnCredit {
    /// Every turn gets 1 (plain GRPO).
    #[default]
    Equalized,
    /// Reward to go: Σ_{k≥t} γ^(k−t) r_k.
    R2g,
    /// Exponential mapping of the turn's own reward: 0.5 + 0.5 (1 − e^(−2r)) / (1 − e^(−2)), rounded to 4 decimals.
    Em,
    /// The raw turn reward (a baseline the paper names; absent from the original code).
    Naive,
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

pub fn trajectory_score(rewards: &[f64], method: TrajectoryScore, gamma: f64) -> f64 {
    match method {
        TrajectoryScore::Sum if rewards.is_empty() => 0.0,
        TrajectoryScore::Sum => round4(rewards.iter().sum::<f64>() / rewards.len() as f64),
        TrajectoryScore::R2g => rewards.iter().rev().fold(0.0, |acc, r| r + gamma * acc),
    }
}

pub fn turn_credits(rewards: &[f64], method: TurnCredit, gamma: f64) -> Vec<f64> {
    match method {
        TurnCredit::Equalized => vec![1.0; rewards.len()],
        TurnCredit::Naive => rewards.to_vec(),
        TurnCredit::Em => {
            let denominator = 1.0 - (-2.0f64).exp();
            rewards.iter().map(|r| round4(0.5 + 0.5 * (1.0 - (-2.0 * r).exp()) / denominator)).collect()
        }
        TurnCredit::R2g => {
            let mut credits = vec![0.0; rewards.len()];
            let mut to_go = 0.0;
            for (t, r) in rewards.iter().enumerate().rev() {
                to_go = r + gamma * to_go;
                credits[t] = to_go;
            }
            credits
        }
    }
}

/// Group-normalised advantages: `(S − mean) / (std + 1e-6)` with the unbiased std; a group of one uses mean 0
/// and std 1 (as the original).
pub fn group_advantages(scores: &[f64]) -> Vec<f64> {
    let n = scores.len();
    let (mean, std) = if n <= 1 {
        (0.0, 1.0)
    } else {
        let mean = scores.iter().sum::<f64>() / n as f64;
        let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (mean, var.sqrt())
    };
    scores.iter().map(|s| (s - mean) / (std + STD_EPSILON)).collect()
}

/// The advantage of each turn's policy tokens: `Â · c_t · N / Σ c`, where N counts the policy tokens whose
/// credit is non-zero and Σ c sums their credits. All zero when the credits sum to zero (even for Â < 0, as
/// the original).
pub fn turn_token_advantages(advantage: f64, credits: &[f64], policy_tokens_per_turn: &[usize]) -> Vec<f64> {
    let mut weighted = 0.0;
    let mut nonzero = 0usize;
    for (c, &n) in credits.iter().zip(policy_tokens_per_turn) {
        if *c != 0.0 {
            weighted += c * n as f64;
            nonzero += n;
        }
    }
    if weighted == 0.0 {
        return vec![0.0; policy_tokens_per_turn.len()];
    }
    policy_tokens_per_turn
        .iter()
        .enumerate()
        .map(|(t, _)| credits.get(t).map_or(0.0, |c| advantage * c * nonzero as f64 / weighted))
        .collect()
}

/// Everything shaping needs to know about one trajectory.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapingInput {
    pub rewards: Vec<f64>,
    pub policy_tokens_per_turn: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shaping {
    pub score: TrajectoryScore,
    pub credit: TurnCredit,
    pub gamma: f64,
}

impl Default for Shaping {
    fn default() -> Self {
        Shaping { score: TrajectoryScore::Sum, credit: TurnCredit::Equalized, gamma: DEFAULT_GAMMA }
    }
}

/// One trajectory's shaped signal.
#[derive(Clone, Debug, PartialEq)]
pub struct Shaped {
    pub score: f64,
    pub advantage: f64,
    pub credits: Vec<f64>,
    /// The advantage every policy token of turn t gets.
    pub turn_advantages: Vec<f64>,
}

impl Shaping {
    /// Shapes one GRPO group (the rollouts of one prompt).
    pub fn group(&self, group: &[ShapingInput]) -> Vec<Shaped> {
        let scores: Vec<f64> = group.iter().map(|t| trajectory_score(&t.rewards, self.score, self.gamma)).collect();
        let advantages = group_advantages(&scores);
        group
            .iter()
            .zip(scores.iter().zip(advantages))
            .map(|(t, (&score, advantage))| {
                let credits = turn_credits(&t.rewards, self.credit, self.gamma);
                let turn_advantages = turn_token_advantages(advantage, &credits, &t.policy_tokens_per_turn);
                Shaped { score, advantage, credits, turn_advantages }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    // Reference §7.3 worked example: rewards [0, 0, 1], 100/50/50 policy tokens, Â = 1.2, R2G credits.
    #[test]
    fn worked_example_from_the_reference() {
        let rewards = [0.0, 0.0, 1.0];
        let credits = turn_credits(&rewards, TurnCredit::R2g, 0.8);
        assert!(close(&credits, &[0.64, 0.8, 1.0], 1e-12), "{credits:?}");
        let per_turn = turn_token_advantages(1.2, &credits, &[100, 50, 50]);
        assert!(close(&per_turn, &[0.9974, 1.2468, 1.5584], 1e-4), "{per_turn:?}");
        // The mean over policy tokens equals Â.
        let mean = (per_turn[0] * 100.0 + per_turn[1] * 50.0 + per_turn[2] * 50.0) / 200.0;
        assert!((mean - 1.2).abs() < 1e-12);
        assert_eq!(trajectory_score(&rewards, TrajectoryScore::Sum, 0.8), 0.3333);
        assert!((trajectory_score(&rewards, TrajectoryScore::R2g, 0.8) - 0.64).abs() < 1e-12);
        assert_eq!(turn_credits(&rewards, TurnCredit::Em, 0.8), vec![0.5, 0.5, 1.0]);
    }

    // Reference §7.3 group example (Sum scores): S = [0.3333, 0, 0, 0.5] -> Â ≈ [0.50, −0.83, −0.83, 1.17].
    #[test]
    fn group_normalisation_uses_the_unbiased_std() {
        let a = group_advantages(&[0.3333, 0.0, 0.0, 0.5]);
        assert!(close(&a, &[0.50, -0.83, -0.83, 1.17], 0.005), "{a:?}");
        // A singleton group uses mean 0 and std 1; equal scores give 0.
        assert!(close(&group_advantages(&[0.7]), &[0.7 / (1.0 + STD_EPSILON)], 1e-12));
        assert_eq!(group_advantages(&[0.5, 0.5, 0.5]), vec![0.0, 0.0, 0.0]);
    }

    // Reference §7.2: EM maps 0 -> 0.5, 0.2 -> 0.6906, 0.5 -> 0.8655, 0.8 -> 0.9615, 1 -> 1.
    #[test]
    fn em_credit_values() {
        assert_eq!(
            turn_credits(&[0.0, 0.2, 0.5, 0.8, 1.0], TurnCredit::Em, 0.8),
            vec![0.5, 0.6906, 0.8655, 0.9615, 1.0]
        );
        assert_eq!(turn_credits(&[0.3, 0.0], TurnCredit::Naive, 0.8), vec![0.3, 0.0]);
        assert_eq!(turn_credits(&[0.3, 0.0], TurnCredit::Equalized, 0.8), vec![1.0, 1.0]);
    }

    // Reference §7.3: all-zero credits give zero token advantages, even below the group mean.
    #[test]
    fn all_zero_credits_give_zero_advantage() {
        let credits = turn_credits(&[0.0, 0.0], TurnCredit::R2g, 0.8);
        assert_eq!(turn_token_advantages(-0.9, &credits, &[10, 20]), vec![0.0, 0.0]);
        // Zero-credit turns get 0 and the non-zero ones average to Â.
        let per_turn = turn_token_advantages(2.0, &[1.0, 0.0], &[10, 30]);
        assert_eq!(per_turn, vec![2.0, 0.0]);
    }

    #[test]
    fn equalized_sum_is_plain_grpo() {
        let shaping = Shaping::default();
        let group = vec![
            ShapingInput { rewards: vec![0.0, 1.0], policy_tokens_per_turn: vec![5, 7] },
            ShapingInput { rewards: vec![0.0, 0.0], policy_tokens_per_turn: vec![4, 4] },
        ];
        let shaped = shaping.group(&group);
        assert_eq!(shaped[0].score, 0.5);
        assert!(shaped[0].advantage > 0.0 && shaped[1].advantage < 0.0);
        for s in &shaped {
            assert!(s.turn_advantages.iter().all(|a| (a - s.advantage).abs() < 1e-12));
        }
        assert_eq!(trajectory_score(&[], TrajectoryScore::Sum, 0.8), 0.0);
    }
}
