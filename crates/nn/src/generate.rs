//! Decoding: prefill the prompt, then sample one token at a time from the KV cache (greedy at temperature 0,
//! else temperature + top-k + top-p with a seeded RNG), stopping at a stop token or the token budget.

use crate::backend::LogitsModel;
use crate::model::{Llama, ModelError};

#[derive(Clone, Debug)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, max_new_tokens: 128 }
    }
}

/// What was generated: the token ids and the log-probability of each under the (untempered) model.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// True when a stop token ended it (the stop token is included in `tokens`).
    pub stopped: bool,
}

/// xorshift64*: a tiny seeded generator, enough for sampling and reproducible across platforms.
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator a generation with this `Sampling::seed` starts from (shared with `engine`, so both sample
    /// the same tokens).
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    }
}

pub(crate) fn log_softmax_at(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    logits[index] - max - sum.ln()
}

pub(crate) fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> usize {
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    if s.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let max = logits[order[0]];
    let mut probs: Vec<f32> = order.iter().map(|&i| ((logits[i] - max) / s.temperature).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = probs.iter().position(|p| {
            cumulative += p;
            cumulative >= s.top_p
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let r = rng.next_f32();
    let mut cumulative = 0.0;
    for (p, &i) in probs.iter().zip(&order) {
        cumulative += p;
        if r < cumulative {
            return i;
        }
    }
    order[order.len() - 1]
}

pub fn generate(model: &Llama, prompt: &[u32], stop: &[u32], sampling: &Sampling) -> Result<Generation, ModelError> {
    generate_with(model, prompt, stop, sampling)
}

/// [`generate`] on any backend (the CPU [`Llama`] or `wgpu::WgpuLlama`).
pub fn generate_with<M: LogitsModel>(
    model: &M,
    prompt: &[u32],
    stop: &[u32],
    sampling: &Sampling,
) -> Result<Generation, M::Error> {
    generate_stream(model, prompt, stop, sampling, &mut |_| {})
}

/// [`generate_with`], calling `on_token` with each token as soon as it is sampled (streaming output).
pub fn generate_stream<M: LogitsModel>(
    model: &M,
    prompt: &[u32],
    stop: &[u32],
    sampling: &Sampling,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation, M::Error> {
    let mut cache = model.new_cache();
    generate_continue(model, &mut cache, prompt, stop, sampling, on_token)
}

/// Continues a sequence whose earlier tokens `cache` already holds: runs `new_tokens`, then samples. On return
/// the cache holds `new_tokens` and every generated token but the last (which was sampled, not yet run), so a
/// multi-turn caller can append what comes next without recomputing the prefix.
pub fn generate_continue<M: LogitsModel>(
    model: &M,
    cache: &mut M::Cache,
    new_tokens: &[u32],
    stop: &[u32],
    sampling: &Sampling,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation, M::Error> {
    let mut rng = Rng::seeded(sampling.seed);
    let mut logits = model.forward_last(new_tokens, cache)?;
    let mut out = Generation { tokens: Vec::new(), logprobs: Vec::new(), stopped: false };
    for _ in 0..sampling.max_new_tokens {
        let next = sample(&logits, sampling, &mut rng);
        out.tokens.push(next as u32);
        out.logprobs.push(log_softmax_at(&logits, next));
        on_token(next as u32);
        if stop.contains(&(next as u32)) {
            out.stopped = true;
            break;
        }
        if M::cache_len(cache) + 1 > model.config().context {
            break;
        }
        if out.tokens.len() == sampling.max_new_tokens {
            break;
        }
        logits = model.forward_last(&[next as u32], cache)?;
    }
    Ok(out)
}
