//! Benchmarks behind `userrl bench nn`: `model::linear` against the raw `matrixmultiply` sgemm on the same square
//! problem, prefill and batch-1 decode tokens/s on either backend (any [`LogitsModel`]), decode tokens/s at
//! batch N (`batch::forward_last_batch`, one set of matmuls for N sequences) and CPU training-step tokens/s
//! (the wgpu training step is in `wgpu::bench`). Every number is the median of several timed runs after one
//! warm-up.

use std::time::Instant;

use crate::backend::LogitsModel;
use crate::engine::BatchModel;
use crate::model::{Llama, LlamaConfig, ModelError, linear};

/// The median of `runs` timings of `f` (seconds), after one untimed warm-up call.
pub fn median_seconds<E>(runs: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    f()?;
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MatmulResult {
    pub n: usize,
    pub linear_gflops: f64,
    pub sgemm_gflops: f64,
    /// `linear_gflops / sgemm_gflops`.
    pub ratio: f64,
}

/// `y = x · wᵀ` through `model::linear` against a plain row-major `C = A · B` sgemm, both `n × n × n`.
pub fn matmul(n: usize, runs: usize) -> MatmulResult {
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    let mut c = vec![0.0f32; n * n];
    let flops = 2.0 * (n as f64).powi(3);
    let linear_s = median_seconds::<()>(runs, || {
        linear(&a, n, &b, n, n, &mut c);
        Ok(())
    })
    .unwrap_or(f64::NAN);
    let sgemm_s = median_seconds::<()>(runs, || {
        // SAFETY: a, b and c are n×n row-major buffers (row stride n, column stride 1).
        unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                n as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        Ok(())
    })
    .unwrap_or(f64::NAN);
    let (linear_gflops, sgemm_gflops) = (flops / linear_s / 1e9, flops / sgemm_s / 1e9);
    MatmulResult { n, linear_gflops, sgemm_gflops, ratio: linear_gflops / sgemm_gflops }
}

/// A deterministic prompt of `len` ordinary token ids (no specials), for timing.
pub fn synthetic_prompt(config: &LlamaConfig, len: usize) -> Vec<u32> {
    let vocab = config.vocab as u64;
    (0..len as u64).map(|i| (1000 + (i * 7919) % (vocab.saturating_sub(1000).max(1))) as u32 % vocab as u32).collect()
}

/// Prefill tokens/s on either backend: a fresh cache, `prompt_len` tokens, last-position logits.
pub fn prefill<M: LogitsModel>(model: &M, prompt_len: usize, runs: usize) -> Result<f64, M::Error> {
    let prompt = synthetic_prompt(model.config(), prompt_len);
    let s = median_seconds(runs, || model.forward_last(&prompt, &mut model.new_cache()).map(|_| ()))?;
    Ok(prompt_len as f64 / s)
}

/// Decode tokens/s at batch 1 on either backend: `steps` single-token steps after a `context`-token prompt
/// (the prompt's prefill is not timed; one untimed warm-up run, then the median of `runs`).
pub fn decode<M: LogitsModel>(model: &M, context: usize, steps: usize, runs: usize) -> Result<f64, M::Error> {
    let prompt = synthetic_prompt(model.config(), context + steps);
    let mut times = Vec::with_capacity(runs);
    for run in 0..=runs.max(1) {
        let mut cache = model.new_cache();
        model.forward_last(&prompt[..context], &mut cache)?;
        let start = Instant::now();
        for &tok in &prompt[context..] {
            model.forward_last(&[tok], &mut cache)?;
        }
        if run > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(steps as f64 / times[times.len() / 2])
}

/// Decode tokens/s at batch `batch` through `forward_last_batch` (the engine's forward, on either backend):
/// every step runs one new token of each sequence (so `batch × steps` tokens), each sequence after its own
/// `context`-token prompt; each run starts from copies of the prompts' caches, made before its clock starts.
pub fn decode_batch<M: BatchModel>(
    model: &M,
    batch: usize,
    context: usize,
    steps: usize,
    runs: usize,
) -> Result<f64, M::Error> {
    let prompt = synthetic_prompt(model.config(), context + steps + batch);
    let mut base: Vec<M::Cache> = (0..batch).map(|_| model.new_cache()).collect();
    for (s, cache) in base.iter_mut().enumerate() {
        model.forward_last_batch(&[&prompt[s..s + context]], std::slice::from_mut(cache))?;
    }
    let mut times = Vec::with_capacity(runs.max(1));
    for run in 0..=runs.max(1) {
        let mut caches = base.iter().map(|c| model.prefix_cache(c, context)).collect::<Result<Vec<_>, _>>()?;
        let start = Instant::now();
        for step in 0..steps {
            let tokens: Vec<&[u32]> = (0..batch).map(|s| &prompt[s + context + step..s + context + step + 1]).collect();
            model.forward_last_batch(&tokens, &mut caches)?;
        }
        if run > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((batch * steps) as f64 / times[times.len() / 2])
}

/// `batch` deterministic pseudo-text sequences of `seq` tokens, the loss on every predicted token (the training
/// benches of both backends and `examples/train_bench.rs` use the same batch).
pub fn synthetic_batch(vocab: usize, seq: usize, batch: usize) -> Vec<crate::train::TrainSequence> {
    let vocab = vocab.max(1) as u64;
    (0..batch as u64)
        .map(|b| {
            let tokens =
                (0..seq as u64).map(|i| ((i * 7919 + b * 104_729 + 13) * 2_654_435_761 % vocab) as u32).collect();
            crate::train::TrainSequence::sft(tokens, 1)
        })
        .collect()
}

/// CPU training-step tokens/s (forward + backward + AdamW with grad clipping) on [`synthetic_batch`]; the
/// model is trained in place, so pass a copy you do not need.
pub fn train_step(
    model: &mut crate::train::TrainableLlama,
    seq: usize,
    batch: usize,
    runs: usize,
) -> Result<f64, crate::train::TrainError> {
    use crate::train::{Objective, TrainStep};
    let seqs = synthetic_batch(model.config.vocab, seq, batch);
    let step = TrainStep {
        micro_batches: vec![&seqs],
        objective: Objective::Sft,
        adamw: crate::cpu_ops::AdamW { lr: 1e-5, ..crate::cpu_ops::AdamW::default() },
        max_grad_norm: Some(1.0),
    };
    let seconds = median_seconds(runs, || model.train_step(&step).map(|_| ()))?;
    Ok((seq * batch) as f64 / seconds)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SkinnyResult {
    pub rows: usize,
    pub in_dim: usize,
    pub out_dim: usize,
    /// `2 · rows · in · out` over the median time, f32 weights.
    pub f32_gflops: f64,
    /// The same with half-precision weights.
    pub f16_gflops: f64,
    /// The same with bf16 weights (and inputs rounded to bf16).
    pub bf16_gflops: f64,
}

/// GFLOP/s of the few-row kernels (`skinny::linear_few_rows` and its f16 twins) at each row count of `rows`, on
/// a `[out_dim, in_dim]` matrix (pick one larger than the last-level cache to see decoding's streaming).
pub fn skinny(rows: &[usize], in_dim: usize, out_dim: usize, runs: usize) -> Vec<SkinnyResult> {
    use crate::skinny::{Linear, Weights, linear_many, to_bf16, to_f16};
    let w: Vec<f32> = (0..in_dim * out_dim).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    let (wh, wb) = (to_f16(&w), to_bf16(&w));
    rows.iter()
        .map(|&t| {
            let x: Vec<f32> = (0..t * in_dim).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
            let mut y = vec![0.0f32; t * out_dim];
            let flops = 2.0 * (t * in_dim * out_dim) as f64;
            let mut time = |w: Weights<'_>| {
                median_seconds::<()>(runs, || {
                    linear_many(&x, t, in_dim, &mut [Linear { w, out_dim, y: &mut y }]);
                    Ok(())
                })
                .unwrap_or(f64::NAN)
            };
            let f32_s = time(Weights::F32(&w));
            let f16_s = time(Weights::F16(&wh));
            let bf16_s = time(Weights::Bf16(&wb));
            SkinnyResult {
                rows: t,
                in_dim,
                out_dim,
                f32_gflops: flops / f32_s / 1e9,
                f16_gflops: flops / f16_s / 1e9,
                bf16_gflops: flops / bf16_s / 1e9,
            }
        })
        .collect()
}

/// How far the log-probs a sampler reports drift from what a trainer recomputes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogprobGap {
    /// The sampler's weight precision.
    pub precision: crate::model::Precision,
    pub tokens: usize,
    /// Mean and max of |sampler log-prob − f32 full-forward log-prob| over the sampled tokens.
    pub mean_abs: f64,
    pub max_abs: f64,
}

/// Samples `new_tokens` tokens after `prompt` at temperature 1 (seeded, no stop) with `model` at its current
/// precision, then scores the whole sequence with one f32 forward (what the trainer does: many rows go through
/// the f32 sgemm whatever the precision) and compares each sampled token's log-prob.
pub fn logprob_gap(model: &Llama, prompt: &[u32], new_tokens: usize, seed: u64) -> Result<LogprobGap, ModelError> {
    let sampling =
        crate::generate::Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed, max_new_tokens: new_tokens };
    let generation = crate::generate::generate(model, prompt, &[], &sampling)?;
    let all: Vec<u32> = prompt.iter().chain(&generation.tokens).copied().collect();
    let logits = model.forward(&all, &mut model.new_cache())?;
    let vocab = model.config.vocab;
    let (mut sum, mut max) = (0.0f64, 0.0f64);
    for (i, (&tok, &sampler)) in generation.tokens.iter().zip(&generation.logprobs).enumerate() {
        // The logits at position p predict token p + 1.
        let row = prompt.len() + i - 1;
        let trainer = crate::generate::log_softmax_at(&logits[row * vocab..(row + 1) * vocab], tok as usize);
        let d = (sampler as f64 - trainer as f64).abs();
        sum += d;
        max = max.max(d);
    }
    let n = generation.tokens.len();
    Ok(LogprobGap { precision: model.precision(), tokens: n, mean_abs: sum / n.max(1) as f64, max_abs: max })
}
