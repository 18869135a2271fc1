//! GRPO with a KL penalty to a frozen reference policy (the policy GRPO started from). Per policy token, with
//! δ = log π_ref − log π, the k3 estimator k3 = e^δ − δ − 1 (non-negative, unbiased for KL(π‖π_ref) under
//! samples from π, low variance) is added to the clipped surrogate: loss = mean(−surrogate + β·k3).
//!
//! The trainer's objectives see the loss only through its per-token derivative w.r.t. log π, so the combined
//! loss is trained as a policy-gradient step whose per-token weight is minus that derivative at the current
//! weights: one extra forward per mini-batch for the current log-probs, and the exact gradient.

use userrl_nn::cpu_ops::{GrpoClip, grpo_token};
use userrl_nn::train::TrainSequence;

/// The k3 estimate at one token and its derivative w.r.t. the policy's log-prob.
pub fn k3(logp: f32, ref_logp: f32) -> (f32, f32) {
    let delta = ref_logp - logp;
    let e = delta.exp();
    (e - delta - 1.0, 1.0 - e)
}

/// Mean k3 over the masked tokens of `seqs` (entry `i` of each array concerns token `i`).
pub fn mean_k3(seqs: &[TrainSequence], logp: &[Vec<f32>], ref_logp: &[Vec<f32>]) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for ((s, lp), rp) in seqs.iter().zip(logp).zip(ref_logp) {
        for i in 0..s.tokens.len() {
            if s.mask[i] {
                sum += k3(lp[i], rp[i]).0 as f64;
                n += 1;
            }
        }
    }
    sum / n.max(1) as f64
}

/// A GRPO + KL mini-batch rewritten as policy-gradient sequences, and its loss terms.
#[derive(Clone, Debug, Default)]
pub struct KlBatch {
    /// The sequences with `advantages` = −∂loss/∂log π · (masked tokens) and no `old_logp`.
    pub sequences: Vec<TrainSequence>,
    /// mean(−surrogate + β·k3) over the masked tokens.
    pub loss: f64,
    /// mean k3.
    pub kl: f64,
    pub clipped: usize,
    /// Tokens whose ratio was clipped at 1 − ε (A < 0) and at 1 + ε (A > 0).
    pub clipped_low: usize,
    pub clipped_high: usize,
    pub tokens: usize,
}

/// Builds the policy-gradient batch for `seqs` (GRPO sequences with advantages and old log-probs), given the
/// current log-probs `logp` and the reference's `ref_logp`.
pub fn grpo_kl_batch(
    seqs: &[TrainSequence],
    logp: &[Vec<f32>],
    ref_logp: &[Vec<f32>],
    clip: &GrpoClip,
    beta: f32,
) -> KlBatch {
    let mut batch = KlBatch::default();
    let (mut loss, mut kl) = (0.0f64, 0.0f64);
    for ((s, lp), rp) in seqs.iter().zip(logp).zip(ref_logp) {
        let mut weights = vec![0.0f32; s.tokens.len()];
        for i in 0..s.tokens.len() {
            if !s.mask[i] {
                continue;
            }
            let adv = s.advantages.as_ref().and_then(|a| a.get(i)).copied().unwrap_or(0.0);
            let old = s.old_logp.as_ref().and_then(|o| o.get(i)).copied().unwrap_or(lp[i]);
            let (objective, grad, clipped) = grpo_token(lp[i], old, adv, clip);
            let (k, dk) = k3(lp[i], rp[i]);
            loss += (-objective + beta * k) as f64;
            kl += k as f64;
            // The policy-gradient loss is −Σ w·log π / N, so w = −∂(−objective + β·k3)/∂log π.
            weights[i] = grad - beta * dk;
            batch.tokens += 1;
            if clipped {
                batch.clipped += 1;
                let ratio = (lp[i] - old).exp();
                batch.clipped_low += (adv < 0.0 && ratio < 1.0) as usize;
                batch.clipped_high += (adv > 0.0 && ratio > 1.0) as usize;
            }
        }
        batch.sequences.push(TrainSequence {
            tokens: s.tokens.clone(),
            mask: s.mask.clone(),
            advantages: Some(weights),
            old_logp: None,
        });
    }
    let n = batch.tokens.max(1) as f64;
    batch.loss = loss / n;
    batch.kl = kl / n;
    batch
}

#[cfg(test)]
mod tests {
    use userrl_nn::model::LlamaConfig;
    use userrl_nn::train::{Objective, TrainableLlama};

    use super::*;

    #[test]
    fn k3_is_zero_at_the_reference_and_its_derivative_matches_finite_differences() {
        assert_eq!(k3(-1.5, -1.5), (0.0, 0.0));
        for (lp, rp) in [(-2.0f32, -1.0f32), (-0.3, -2.5), (-4.0, -3.9)] {
            let (k, dk) = k3(lp, rp);
            assert!(k > 0.0);
            let h = 1e-3f64;
            let f = |x: f64| {
                let d = rp as f64 - x;
                d.exp() - d - 1.0
            };
            let fd = (f(lp as f64 + h) - f(lp as f64 - h)) / (2.0 * h);
            assert!((fd - dk as f64).abs() < 1e-4, "{fd} vs {dk}");
        }
    }

    fn tiny(seed: u64) -> TrainableLlama {
        let config = LlamaConfig {
            vocab: 37,
            hidden: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            ffn: 24,
            rope_theta: 10_000.0,
            eps: 1e-5,
            context: 64,
        };
        TrainableLlama::random(&config, seed, true).unwrap()
    }

    /// The loss the batch stands for, recomputed from scratch at the model's current weights.
    fn loss_at(model: &TrainableLlama, seqs: &[TrainSequence], reference: &[Vec<f32>], beta: f32) -> f64 {
        let tokens: Vec<&[u32]> = seqs.iter().map(|s| s.tokens.as_slice()).collect();
        let logp = model.token_logprobs(&tokens).unwrap();
        grpo_kl_batch(seqs, &logp, reference, &GrpoClip::default(), beta).loss
    }

    /// The gradient the policy-gradient rewrite produces equals finite differences of the GRPO + β·k3 loss.
    #[test]
    fn grpo_kl_gradient_matches_finite_differences() {
        let mut model = tiny(1);
        let reference_model = tiny(2);
        let seqs: Vec<TrainSequence> = (0..2u32)
            .map(|s| {
                let tokens: Vec<u32> = (0..12u32).map(|i| (i * 7 + s * 3 + 1) % 37).collect();
                let mask: Vec<bool> = (0..12).map(|i| i >= 4).collect();
                let advantages: Vec<f32> = (0..12).map(|i| if s == 0 { 0.8 } else { -0.6 + 0.01 * i as f32 }).collect();
                TrainSequence { tokens, mask, advantages: Some(advantages), old_logp: None }
            })
            .collect();
        let owned: Vec<Vec<u32>> = seqs.iter().map(|s| s.tokens.clone()).collect();
        let tokens: Vec<&[u32]> = owned.iter().map(|t| t.as_slice()).collect();
        // Old log-probs a little off the current ones, inside the clip range, so the surrogate is smooth here.
        let now = model.token_logprobs(&tokens).unwrap();
        let seqs: Vec<TrainSequence> = seqs
            .into_iter()
            .zip(&now)
            .map(|(mut s, lp)| {
                s.old_logp = Some(lp.iter().enumerate().map(|(i, l)| l + 0.03 * ((i % 3) as f32 - 1.0)).collect());
                s
            })
            .collect();
        let reference = reference_model.token_logprobs(&tokens).unwrap();
        let beta = 0.5;
        let batch = grpo_kl_batch(&seqs, &now, &reference, &GrpoClip::default(), beta);
        assert_eq!(batch.clipped, 0);
        assert!(batch.kl > 0.0);
        model.loss_and_grad(&[&batch.sequences], &Objective::PolicyGradient).unwrap();
        let grads = model.grads.clone();
        // The parameters with the largest gradients (the most signal over f32 rounding).
        let mut order: Vec<usize> = (0..grads.len()).collect();
        order.sort_by(|&a, &b| grads[b].abs().total_cmp(&grads[a].abs()));
        for &p in order.iter().take(8) {
            let h = 1e-2f32;
            let keep = model.params[p];
            model.params[p] = keep + h;
            let up = loss_at(&model, &seqs, &reference, beta);
            model.params[p] = keep - h;
            let down = loss_at(&model, &seqs, &reference, beta);
            model.params[p] = keep;
            let fd = (up - down) / (2.0 * h as f64);
            let g = grads[p] as f64;
            assert!((fd - g).abs() <= 0.03 * g.abs() + 1e-4, "param {p}: finite difference {fd} vs gradient {g}");
        }
        // Without the KL term the rewrite is plain GRPO: same gradient as the GRPO objective.
        let plain = grpo_kl_batch(&seqs, &now, &reference, &GrpoClip::default(), 0.0);
        model.loss_and_grad(&[&plain.sequences], &Objective::PolicyGradient).unwrap();
        let via_pg = model.grads.clone();
        let stats = model.loss_and_grad(&[&seqs], &Objective::Grpo(GrpoClip::default())).unwrap();
        assert!((stats.loss as f64 - plain.loss).abs() < 1e-5, "{} vs {}", stats.loss, plain.loss);
        for (a, b) in via_pg.iter().zip(&model.grads) {
            assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{a} vs {b}");
        }
    }
}
