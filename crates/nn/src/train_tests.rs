//! The trainable model against the inference path, finite differences, and an overfitting run.

use super::*;

fn seq(tokens: &[u32], prompt: usize) -> TrainSequence {
    TrainSequence::sft(tokens.to_vec(), prompt)
}

fn batch() -> Vec<TrainSequence> {
    vec![seq(&[1, 5, 9, 5, 33, 60, 2, 7, 7, 12, 40, 5], 2), seq(&[3, 9, 5, 18, 44, 63, 0, 5], 1), seq(&[8, 8, 21], 1)]
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn forward_equals_llama_forward() {
    for tied in [true, false] {
        let model = random_llama(&tiny_config(), 7, tied).unwrap();
        let train = TrainableLlama::from_llama(&model).unwrap();
        let tokens = [1u32, 5, 9, 5, 33, 60, 2, 7, 63, 0];
        let want = model.forward(&tokens, &mut model.new_cache()).unwrap();
        let got = train.logits(&tokens).unwrap();
        assert!(max_abs_diff(&got, &want) <= 1e-4, "tied {tied}: {}", max_abs_diff(&got, &want));
        // The chunked per-token log-probs equal log_softmax of those logits.
        let mut small = TrainableLlama::from_llama(&model).unwrap();
        small.head_chunk = 10;
        let lp = small.token_logprobs(&[&tokens]).unwrap();
        let v = model.config.vocab;
        for i in 1..tokens.len() {
            let row = &want[(i - 1) * v..i * v];
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            assert!((lp[0][i] - (row[tokens[i] as usize] - lse)).abs() < 1e-4);
        }
        assert_eq!(lp[0][0], 0.0);
    }
}

/// The loss in f64 from the f32 per-token log-probs (SFT: the masked token mean of -logp).
fn sft_loss(m: &TrainableLlama, seqs: &[TrainSequence]) -> f64 {
    let toks: Vec<&[u32]> = seqs.iter().map(|s| s.tokens.as_slice()).collect();
    let lp = m.token_logprobs(&toks).unwrap();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (s, l) in seqs.iter().zip(&lp) {
        for (&m, &lp) in s.mask.iter().zip(l) {
            if m {
                sum -= lp as f64;
                n += 1;
            }
        }
    }
    sum / n as f64
}

#[test]
fn whole_model_gradient_matches_finite_differences() {
    for tied in [true, false] {
        let mut m = TrainableLlama::random(&tiny_config(), 11, tied).unwrap();
        m.head_chunk = 10;
        let b = batch();
        let stats = m.loss_and_grad(&[&b], &Objective::Sft).unwrap();
        assert!((stats.loss as f64 - sft_loss(&m, &b)).abs() < 1e-5);
        let grads = m.grads.clone();
        // A few parameters of every kind: the largest gradient in each tensor (so that f32 round-off of the loss
        // is small next to it), plus embedding rows of token 5 (input and target: both tied contributions).
        let mut picks: Vec<usize> = Vec::new();
        for (_, r, _) in m.layout.tensors() {
            let best = r.clone().max_by(|&a, &b| grads[a].abs().total_cmp(&grads[b].abs())).unwrap();
            picks.push(best);
        }
        let h = m.config.hidden;
        let row5 = m.layout.embed.start + 5 * h;
        picks.push((row5..row5 + h).max_by(|&a, &b| grads[a].abs().total_cmp(&grads[b].abs())).unwrap());
        let mut worst = 0.0f64;
        for &i in &picks {
            let eps = 2e-3f32;
            let old = m.params[i];
            m.params[i] = old + eps;
            let up = sft_loss(&m, &b);
            m.params[i] = old - eps;
            let down = sft_loss(&m, &b);
            m.params[i] = old;
            let num = (up - down) / (2.0 * eps as f64);
            let err = (grads[i] as f64 - num).abs() / num.abs().max(1e-3);
            worst = worst.max(err);
            assert!(err < 1e-3, "tied {tied}: param {i}: analytic {} numeric {num} (rel {err})", grads[i]);
        }
        assert!(worst < 1e-3);
    }
}

#[test]
fn micro_batches_accumulate_to_the_whole_batch_gradient() {
    let mut m = TrainableLlama::random(&tiny_config(), 3, true).unwrap();
    let b = batch();
    let whole = m.loss_and_grad(&[&b], &Objective::Sft).unwrap();
    let g_whole = m.grads.clone();
    let split = m.loss_and_grad(&[&b[..1], &b[1..]], &Objective::Sft).unwrap();
    assert!((whole.loss - split.loss).abs() < 1e-5);
    assert_eq!((whole.tokens, split.tokens), (split.tokens, 10 + 7 + 2));
    assert!(max_abs_diff(&g_whole, &m.grads) < 1e-5);
    assert!((whole.entropy - split.entropy).abs() < 1e-5 && whole.entropy > 0.0);
}

#[test]
fn grpo_at_the_sampling_policy_has_the_policy_gradient() {
    // With old_logp = current logp the ratio is 1, no clip is active, and ∂(r·A)/∂θ = A·∂logp/∂θ.
    let mut m = TrainableLlama::random(&tiny_config(), 5, true).unwrap();
    let mut b = batch();
    let toks: Vec<&[u32]> = b.iter().map(|s| s.tokens.as_slice()).collect();
    let old = m.token_logprobs(&toks).unwrap();
    for (k, (s, o)) in b.iter_mut().zip(old).enumerate() {
        s.advantages = Some((0..s.tokens.len()).map(|i| if (i + k) % 3 == 0 { -1.5 } else { 0.7 }).collect());
        s.old_logp = Some(o);
    }
    let pg = m.loss_and_grad(&[&b], &Objective::PolicyGradient).unwrap();
    let g_pg = m.grads.clone();
    let grpo = m.loss_and_grad(&[&b], &Objective::Grpo(GrpoClip::default())).unwrap();
    assert_eq!(grpo.clipped, 0);
    assert!(max_abs_diff(&g_pg, &m.grads) < 1e-5 * (1.0 + pg.grad_norm));
    // GRPO's loss at r = 1 is -mean(A); the policy gradient's is -mean(A·logp).
    let mean_adv: f32 = b
        .iter()
        .flat_map(|s| s.mask.iter().zip(s.advantages.as_ref().unwrap()).filter(|(m, _)| **m).map(|(_, a)| *a))
        .sum::<f32>()
        / grpo.tokens as f32;
    assert!((grpo.loss + mean_adv).abs() < 1e-4, "{} vs {}", grpo.loss, -mean_adv);
}

#[test]
fn tiny_model_overfits_one_batch() {
    let mut m = TrainableLlama::random(&tiny_config(), 1, true).unwrap();
    let b = batch();
    let step = TrainStep {
        micro_batches: vec![&b],
        objective: Objective::Sft,
        adamw: AdamW { lr: 1e-2, weight_decay: 0.0, ..AdamW::default() },
        max_grad_norm: Some(1.0),
    };
    let first = m.train_step(&step).unwrap().loss;
    let mut last = first;
    for _ in 1..50 {
        last = m.train_step(&step).unwrap().loss;
    }
    let after = sft_loss(&m, &b) as f32;
    assert!(after < 0.1 * first, "loss {first} -> {last} (after the last step: {after})");
    assert_eq!(m.step, 50);

    // The trained weights reach inference: to_llama and write_into give the trainer's logits.
    let trained = m.to_llama();
    let tokens = &b[0].tokens;
    let want = m.logits(tokens).unwrap();
    let got = trained.forward(tokens, &mut trained.new_cache()).unwrap();
    assert!(max_abs_diff(&got, &want) <= 1e-4);
    let mut other = random_llama(&tiny_config(), 99, true).unwrap();
    m.write_into(&mut other).unwrap();
    let got = other.forward(tokens, &mut other.new_cache()).unwrap();
    assert!(max_abs_diff(&got, &want) <= 1e-4);
    // A model decoding in f16 gets half copies of the new weights, not stale ones.
    let mut half = random_llama(&tiny_config(), 99, true).unwrap().with_precision(crate::model::Precision::F16);
    m.write_into(&mut half).unwrap();
    let fresh = crate::skinny::to_f16(&other.layers[0].wq);
    assert_eq!(half.half.as_ref().unwrap().layers[0].wq, crate::model::HalfMatrix::F16(fresh));
    let mut untied = random_llama(&tiny_config(), 99, false).unwrap();
    assert!(matches!(m.write_into(&mut untied), Err(TrainError::ConfigMismatch(_))));
}

#[test]
fn train_step_clips_the_gradient_norm() {
    let mut m = TrainableLlama::random(&tiny_config(), 2, true).unwrap();
    let b = batch();
    let step = TrainStep {
        micro_batches: vec![&b],
        objective: Objective::Sft,
        adamw: AdamW::default(),
        max_grad_norm: Some(1e-3),
    };
    let stats = m.train_step(&step).unwrap();
    assert!(stats.grad_norm > 1e-3, "{}", stats.grad_norm);
    assert!((cpu_ops::grad_norm(&m.grads) - 1e-3).abs() < 1e-6);
}

#[test]
fn bad_input_gives_clear_errors() {
    let mut m = TrainableLlama::random(&tiny_config(), 4, true).unwrap();
    let err =
        |m: &mut TrainableLlama, seqs: Vec<TrainSequence>, o: Objective| m.loss_and_grad(&[&seqs], &o).unwrap_err();
    assert!(matches!(err(&mut m, vec![], Objective::Sft), TrainError::EmptyBatch));
    assert!(matches!(m.loss_and_grad(&[], &Objective::Sft), Err(TrainError::EmptyBatch)));
    assert!(matches!(err(&mut m, vec![seq(&[], 0)], Objective::Sft), TrainError::EmptySequence { seq: 0 }));
    let mut bad = seq(&[1, 2, 3], 1);
    bad.mask.pop();
    let e = err(&mut m, vec![seq(&[1, 2], 1), bad], Objective::Sft);
    assert!(matches!(e, TrainError::LengthMismatch { seq: 1, what: "mask", got: 2, want: 3 }), "{e}");
    let e = err(&mut m, vec![seq(&[1, 64, 3], 1)], Objective::Sft);
    assert!(matches!(e, TrainError::BadToken { seq: 0, pos: 1, id: 64, vocab: 64 }), "{e}");
    assert!(e.to_string().contains("outside the vocabulary"));
    let e = err(&mut m, vec![seq(&[1; 65], 1)], Objective::Sft);
    assert!(matches!(e, TrainError::ContextOverflow { seq: 0, len: 65, context: 64 }), "{e}");
    let mut first = seq(&[1, 2, 3], 1);
    first.mask[0] = true;
    assert!(matches!(err(&mut m, vec![first], Objective::Sft), TrainError::FirstTokenMasked { seq: 0 }));
    let e = err(&mut m, vec![seq(&[1, 2, 3], 3)], Objective::Sft);
    assert!(matches!(e, TrainError::NothingMasked), "{e}");
    let e = err(&mut m, vec![seq(&[1, 2, 3], 1)], Objective::Grpo(GrpoClip::default()));
    assert!(matches!(e, TrainError::MissingField { what: "advantages", .. }), "{e}");
    let mut nan = seq(&[1, 2, 3], 1);
    nan.advantages = Some(vec![0.0, f32::NAN, 1.0]);
    let e = err(&mut m, vec![nan], Objective::PolicyGradient);
    assert!(matches!(e, TrainError::NonFinite { pos: 1, what: "advantages", .. }), "{e}");
    assert!(matches!(m.logits(&[]), Err(TrainError::EmptySequence { .. })));
    assert!(matches!(m.token_logprobs(&[]), Err(TrainError::EmptyBatch)));
}
