//! CPU-backend benchmarks behind `userrl bench nn`: `model::linear` against the raw `matrixmultiply` sgemm on the
//! same square problem, prefill tokens/s, and decode tokens/s at batch 1 (the KV-cache path of `Llama`) and at
//! batch N (`batch::forward_last_batch`, one set of matmuls for N sequences). Every number is the median of
//! several timed runs after one warm-up.

use std::time::Instant;

use crate::batch::{SeqCache, forward_last_batch};
use crate::model::{Llama, ModelError, linear};

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
pub fn synthetic_prompt(model: &Llama, len: usize) -> Vec<u32> {
    let vocab = model.config.vocab as u64;
    (0..len as u64).map(|i| (1000 + (i * 7919) % (vocab.saturating_sub(1000).max(1))) as u32 % vocab as u32).collect()
}

/// Prefill tokens/s: a fresh cache, `prompt_len` tokens, last-position logits.
pub fn prefill(model: &Llama, prompt_len: usize, runs: usize) -> Result<f64, ModelError> {
    let prompt = synthetic_prompt(model, prompt_len);
    let s = median_seconds(runs, || model.forward_last(&prompt, &mut model.new_cache()).map(|_| ()))?;
    Ok(prompt_len as f64 / s)
}

/// Decode tokens/s at batch 1: `steps` single-token steps after a `context`-token prompt (prefill not timed).
pub fn decode(model: &Llama, context: usize, steps: usize, runs: usize) -> Result<f64, ModelError> {
    let prompt = synthetic_prompt(model, context + steps);
    let mut base = model.new_cache();
    model.forward_last(&prompt[..context], &mut base)?;
    let s = median_seconds(runs, || {
        let mut cache = base.clone();
        for &tok in &prompt[context..] {
            model.forward_last(&[tok], &mut cache)?;
        }
        Ok::<(), ModelError>(())
    })?;
    Ok(steps as f64 / s)
}

/// Decode tokens/s at batch `batch` through `forward_last_batch`: every step runs one new token of each
/// sequence (so `batch × steps` tokens), each sequence after its own `context`-token prompt.
pub fn decode_batch(model: &Llama, batch: usize, context: usize, steps: usize, runs: usize) -> Result<f64, ModelError> {
    let prompt = synthetic_prompt(model, context + steps + batch);
    let mut base: Vec<SeqCache> = (0..batch).map(|_| SeqCache::new(model)).collect();
    for (s, cache) in base.iter_mut().enumerate() {
        forward_last_batch(model, &[&prompt[s..s + context]], std::slice::from_mut(cache))?;
    }
    let s = median_seconds(runs, || {
        let mut caches = base.clone();
        for step in 0..steps {
            let tokens: Vec<&[u32]> = (0..batch).map(|s| &prompt[s + context + step..s + context + step + 1]).collect();
            forward_last_batch(model, &tokens, &mut caches)?;
        }
        Ok::<(), ModelError>(())
    })?;
    Ok((batch * steps) as f64 / s)
}
