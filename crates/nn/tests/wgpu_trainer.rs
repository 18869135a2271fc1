//! The wgpu training step against the CPU `TrainableLlama` (the oracle) on a tiny random model: an SFT loss curve
//! over 20 AdamW steps, GRPO and policy-gradient steps over micro-batches, and bad input. Losses must agree within
//! 1e-3 (absolute, the losses are O(1)); gradients and weights within 1e-3 of their largest magnitude.

use userrl_nn::cpu_ops::{AdamW, GrpoClip};
use userrl_nn::model::LlamaConfig;
use userrl_nn::train::{Objective, TrainError, TrainSequence, TrainStep, TrainableLlama, tiny_config};
use userrl_nn::wgpu::{MatmulTiles, WgpuError, WgpuLlama, WgpuTrainer};

mod common;
use common::{device, rel_err};

fn seq(tokens: &[u32], prompt: usize) -> TrainSequence {
    TrainSequence::sft(tokens.to_vec(), prompt)
}

fn batch() -> Vec<TrainSequence> {
    vec![seq(&[1, 5, 9, 5, 33, 60, 2, 7, 7, 12, 40, 5], 2), seq(&[3, 9, 5, 18, 44, 63, 0, 5], 1), seq(&[8, 8, 21], 1)]
}

fn step<'a>(mbs: Vec<&'a [TrainSequence]>, objective: Objective) -> TrainStep<'a> {
    TrainStep { micro_batches: mbs, objective, adamw: AdamW { lr: 1e-2, ..AdamW::default() }, max_grad_norm: Some(1.0) }
}

#[test]
fn sft_loss_curve_matches_the_cpu_trainer_over_20_steps() {
    // Both matmul tilings (each adapter kind defaults to one of them).
    let cases = [(true, MatmulTiles::Registers), (false, MatmulTiles::Registers), (true, MatmulTiles::Shared)];
    for (tied, tiles) in cases {
        let dev = device().with_matmul_tiles(tiles);
        let mut cpu = TrainableLlama::random(&tiny_config(), 3, tied).unwrap();
        // 64 classes in chunks of 24: the LM head runs as three chunks on both backends.
        cpu.head_chunk = 24;
        let mut gpu = WgpuTrainer::new(&dev, &cpu).unwrap();
        let b = batch();
        let mut first = None;
        for i in 0..20 {
            let want = cpu.train_step(&step(vec![&b], Objective::Sft)).unwrap();
            let got = gpu.train_step(&step(vec![&b], Objective::Sft)).unwrap();
            eprintln!("tied {tied} step {i}: cpu loss {:.6} wgpu loss {:.6}", want.loss, got.loss);
            assert!((got.loss - want.loss).abs() <= 1e-3, "step {i}: loss {} vs {}", got.loss, want.loss);
            assert!((got.grad_norm - want.grad_norm).abs() <= 1e-3 * want.grad_norm, "step {i}: grad norm");
            assert!((got.entropy - want.entropy).abs() <= 1e-3, "step {i}: entropy");
            assert_eq!((got.tokens, got.tokens_processed), (want.tokens, want.tokens_processed));
            first.get_or_insert(want.loss);
        }
        // It did train (the curve is not flat), and the weights still agree. AdamW's first update of an element is
        // lr·g/(|g| + eps): where g is rounding noise (one weight of the untied model has g = -7e-9 on the CPU and
        // -1.6e-8 here) the two backends move it by visibly different amounts (1.3e-3), and the rest of the run
        // inherits that. So the weights get a looser bound than the losses.
        let mut back = TrainableLlama::random(&tiny_config(), 99, tied).unwrap();
        gpu.write_into(&mut back).unwrap();
        assert_eq!(back.step, 20);
        let e = rel_err(&back.params, &cpu.params);
        eprintln!("tied {tied}: weights after 20 steps, relative error {e:.2e}");
        assert!(e <= 1e-2, "weights after 20 steps: relative error {e}");
        let last = cpu.loss_and_grad(&[&b], &Objective::Sft).unwrap().loss;
        assert!(last < 0.7 * first.unwrap(), "loss {last} after 20 steps from {first:?}");
    }
}

#[test]
fn vocabulary_tables_past_one_binding_train_in_row_parts() {
    // A 6 KiB binding cap: the layers' largest matrix (48×32 floats) just fits, the 64×32 embedding and LM head
    // do not and train as parts of 48 and 16 rows (with LM-head chunks of 24 classes inside them), the way
    // SmolLM2-360M's 189 MB embedding has to under the real 128 MiB cap.
    let dev = device().with_binding_limit(6 << 10);
    assert!(matches!(dev.zeros(64 * 32), Err(WgpuError::TooLarge { .. })));
    for tied in [true, false] {
        let mut cpu = TrainableLlama::random(&tiny_config(), 4, tied).unwrap();
        cpu.head_chunk = 24;
        let mut gpu = WgpuTrainer::new(&dev, &cpu).unwrap();
        let b = batch();
        for i in 0..5 {
            let want = cpu.train_step(&step(vec![&b], Objective::Sft)).unwrap();
            let got = gpu.train_step(&step(vec![&b], Objective::Sft)).unwrap();
            assert!((got.loss - want.loss).abs() <= 1e-3, "tied {tied} step {i}: loss {} vs {}", got.loss, want.loss);
            assert!((got.grad_norm - want.grad_norm).abs() <= 1e-3 * want.grad_norm, "step {i}: grad norm");
        }
        let e = rel_err(&gpu.grads().unwrap(), &cpu.grads);
        assert!(e <= 1e-3, "tied {tied}: gradient of the last step, relative error {e}");
        let mut back = TrainableLlama::random(&tiny_config(), 99, tied).unwrap();
        gpu.write_into(&mut back).unwrap();
        let e = rel_err(&back.params, &cpu.params);
        assert!(e <= 1e-2, "tied {tied}: weights after 5 steps, relative error {e}");
    }
}

#[test]
fn the_inference_model_gets_the_trained_weights_on_the_device() {
    // Under the 6 KiB cap the trainer's parts (48 + 16 rows) and the inference model's chunks (48 + 16 rows of the
    // tables and of the fused q|k|v matrix, 48 + 48 of gate|up) differ from the flat layer tensors, so the copies
    // cross boundaries.
    let dev = device().with_binding_limit(6 << 10);
    for tied in [true, false] {
        let mut cpu = TrainableLlama::random(&tiny_config(), 6, tied).unwrap();
        let mut gpu = WgpuTrainer::new(&dev, &cpu).unwrap();
        let b = batch();
        gpu.train_step(&step(vec![&b], Objective::Sft)).unwrap();
        let mut live = gpu.inference_model().unwrap();
        let prompt = [1u32, 5, 9, 5, 33, 60, 2];
        for round in 0..2 {
            // The reference: the same weights through the host (download, then upload as an inference model).
            gpu.write_into(&mut cpu).unwrap();
            let reference = WgpuLlama::new(&dev, &cpu.to_llama()).unwrap();
            let want = reference.forward_last(&prompt, &mut reference.new_cache()).unwrap();
            let got = live.forward_last(&prompt, &mut live.new_cache()).unwrap();
            assert_eq!(got, want, "tied {tied}, round {round}: the device copy is not the trained weights");
            // Train on, and refresh the existing inference model in place.
            gpu.train_step(&step(vec![&b], Objective::Sft)).unwrap();
            gpu.write_weights_into(&mut live).unwrap();
        }
        let other = WgpuTrainer::new(&dev, &TrainableLlama::random(&tiny_config(), 6, !tied).unwrap()).unwrap();
        assert!(matches!(other.write_weights_into(&mut live), Err(WgpuError::Shape(_))));
    }
}

#[test]
fn grpo_and_policy_gradient_over_micro_batches_match_the_cpu_trainer() {
    let dev = device();
    let mut cpu = TrainableLlama::random(&tiny_config(), 5, true).unwrap();
    let mut b = batch();
    let toks: Vec<&[u32]> = b.iter().map(|s| s.tokens.as_slice()).collect();
    let logp = cpu.token_logprobs(&toks).unwrap();
    // Old log-probs off by up to ±0.5 so that the ratio leaves the clip range on some tokens.
    for (k, (s, lp)) in b.iter_mut().zip(logp).enumerate() {
        let n = s.tokens.len();
        s.advantages = Some((0..n).map(|i| if (i + k) % 3 == 0 { -1.5 } else { 0.7 }).collect());
        s.old_logp = Some(lp.iter().enumerate().map(|(i, l)| l + ((i * 7 + k) % 11) as f32 / 10.0 - 0.5).collect());
    }
    let mut gpu = WgpuTrainer::new(&dev, &cpu).unwrap();
    let (mb1, mb2) = b.split_at(1);
    // A third micro-batch with no token in the loss still runs (and adds nothing).
    let mut quiet = b[2].clone();
    quiet.mask.fill(false);
    let mb3 = std::slice::from_ref(&quiet);
    for objective in
        [Objective::Grpo(GrpoClip::default()), Objective::PolicyGradient, Objective::Grpo(GrpoClip::default())]
    {
        let want = cpu.train_step(&step(vec![mb1, mb2, mb3], objective)).unwrap();
        let got = gpu.train_step(&step(vec![mb1, mb2, mb3], objective)).unwrap();
        assert_eq!((got.tokens, got.tokens_processed), (want.tokens, want.tokens_processed));
        assert!((got.loss - want.loss).abs() <= 1e-3, "{objective:?}: loss {} vs {}", got.loss, want.loss);
        assert_eq!(got.clipped, want.clipped, "{objective:?}");
        assert!((got.grad_norm - want.grad_norm).abs() <= 1e-3 * want.grad_norm, "{objective:?}: grad norm");
    }
    assert!(cpu.loss_and_grad(&[mb1, mb2], &Objective::Grpo(GrpoClip::default())).unwrap().clipped > 0);
    // Gradients (before clipping) of the last state agree too.
    gpu.loss_and_grad(&[mb1, mb2], &Objective::Grpo(GrpoClip::default())).unwrap();
    let e = rel_err(&gpu.grads().unwrap(), &cpu.grads);
    assert!(e <= 1e-3, "GRPO gradient: relative error {e}");
}

#[test]
fn a_model_deeper_than_one_submission_matches_the_cpu_trainer() {
    // 9 layers: the forward and the backward are each submitted in several parts, and two micro-batches follow
    // each other, with clipping that bites (max norm 0.05) inside the AdamW kernel.
    let config = LlamaConfig { layers: 9, ..tiny_config() };
    let mut cpu = TrainableLlama::random(&config, 11, false).unwrap();
    let mut gpu = WgpuTrainer::new(&device(), &cpu).unwrap();
    let b = batch();
    let (mb1, mb2) = b.split_at(2);
    for i in 0..4 {
        let mut s = step(vec![mb1, mb2], Objective::Sft);
        s.max_grad_norm = Some(0.05);
        let want = cpu.train_step(&s).unwrap();
        let got = gpu.train_step(&s).unwrap();
        assert!(want.grad_norm > 0.05, "the clipping must bite");
        assert!((got.loss - want.loss).abs() <= 1e-3, "step {i}: loss {} vs {}", got.loss, want.loss);
        assert!((got.grad_norm - want.grad_norm).abs() <= 1e-3 * want.grad_norm, "step {i}: grad norm");
        assert_eq!((got.tokens, got.tokens_processed), (want.tokens, want.tokens_processed));
    }
    let mut back = TrainableLlama::random(&config, 99, false).unwrap();
    gpu.write_into(&mut back).unwrap();
    let e = rel_err(&back.params, &cpu.params);
    assert!(e <= 1e-3, "weights after 4 steps: relative error {e}");
    // The gradients left on the device are the clipped ones, as the CPU trainer leaves them.
    let e = rel_err(&gpu.grads().unwrap(), &cpu.grads);
    assert!(e <= 1e-3, "clipped gradients: relative error {e}");
}

#[test]
fn token_logprobs_match_the_cpu_trainer_in_groups_and_refuse_bad_input() {
    for tied in [true, false] {
        let cpu = TrainableLlama::random(&tiny_config(), 21, tied).unwrap();
        // A 6 KiB binding cap holds [32, 48] activations: the five sequences (12, 8, 3, 1 and 20 tokens) run as
        // two groups, the 1-token one giving its lone 0.
        let devices = [device(), device().with_binding_limit(6 << 10)];
        for dev in devices {
            let gpu = WgpuTrainer::new(&dev, &cpu).unwrap();
            let long: Vec<u32> = (0..20).map(|i| (i * 13 + 5) % 64).collect();
            let b = batch();
            let seqs: Vec<&[u32]> = vec![&b[0].tokens, &b[1].tokens, &b[2].tokens, &[7], &long];
            let want = cpu.token_logprobs(&seqs).unwrap();
            let got = gpu.token_logprobs(&seqs).unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.len(), w.len());
                assert_eq!(g[0], 0.0);
                let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 1e-4, "tied {tied}: log-probs differ by {worst}");
            }
            assert!(matches!(
                gpu.token_logprobs(&[&[1, 2], &[]]),
                Err(WgpuError::Train(TrainError::EmptySequence { seq: 1 }))
            ));
            assert!(matches!(
                gpu.token_logprobs(&[&[1, 64]]),
                Err(WgpuError::Train(TrainError::BadToken { seq: 0, pos: 1, id: 64, vocab: 64 }))
            ));
            assert!(matches!(gpu.token_logprobs(&[]), Err(WgpuError::Train(TrainError::EmptyBatch))));
        }
    }
}

#[test]
fn bad_batches_give_the_cpu_trainer_errors() {
    let dev = device();
    let cpu = TrainableLlama::random(&tiny_config(), 1, true).unwrap();
    let mut broken = TrainableLlama::random(&tiny_config(), 1, true).unwrap();
    broken.adam_v.pop();
    assert!(matches!(WgpuTrainer::new(&dev, &broken), Err(WgpuError::Shape(_))));
    let mut gpu = WgpuTrainer::new(&dev, &cpu).unwrap();
    let mut untied = TrainableLlama::random(&tiny_config(), 1, false).unwrap();
    assert!(matches!(gpu.write_into(&mut untied), Err(WgpuError::Shape(_))));
    let empty: Vec<TrainSequence> = Vec::new();
    assert!(matches!(gpu.loss_and_grad(&[&empty], &Objective::Sft), Err(WgpuError::Train(TrainError::EmptyBatch))));
    let bad = vec![seq(&[1, 2, 64], 1)];
    assert!(matches!(
        gpu.loss_and_grad(&[&bad], &Objective::Sft),
        Err(WgpuError::Train(TrainError::BadToken { id: 64, .. }))
    ));
    let no_adv = batch();
    assert!(matches!(
        gpu.loss_and_grad(&[&no_adv], &Objective::PolicyGradient),
        Err(WgpuError::Train(TrainError::MissingField { .. }))
    ));
    let unmasked = vec![seq(&[1, 2, 3], 3)];
    assert!(matches!(
        gpu.loss_and_grad(&[&unmasked], &Objective::Sft),
        Err(WgpuError::Train(TrainError::NothingMasked))
    ));
}
