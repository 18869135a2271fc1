//! Decoding: prefill the prompt, then sample one token at a time from the KV cache (greedy at temperature 0,
//! else temperature + top-k + top-p with a seeded RNG), stopping at a stop token or the token budget.

use crate::backend::LogitsModel;
use crate::cpu_ops::exp_f32;
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

/// The largest value, in 16 lanes so that it vectorises (a vocabulary per sampled token).
fn max_of(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (m, x) in lanes.iter_mut().zip(c) {
            *m = m.max(*x);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// `log softmax(logits)[index]`, with the polynomial `exp` summed in 16 lanes (a libm `exp` per token of a 49k
/// vocabulary, twice per sampled token, was a visible share of a batched decoding step).
pub(crate) fn log_softmax_at(logits: &[f32], index: usize) -> f32 {
    let max = max_of(logits);
    let mut lanes = [0.0f32; 16];
    let chunks = logits.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&l| exp_f32(l - max)).sum();
    for c in chunks {
        for (s, &l) in lanes.iter_mut().zip(c) {
            *s += exp_f32(l - max);
        }
    }
    logits[index] - max - (lanes.iter().sum::<f32>() + tail).ln()
}

/// Candidates ordered for a top-p draw without top-k; more are ordered only when the nucleus reaches past them.
const NUCLEUS_CANDIDATES: usize = 1024;

/// Draws a token: greedy at temperature 0, else from the tempered softmax restricted to the top-k and then to the
/// top-p nucleus. Only the candidates are ordered (a full sort of a 49k vocabulary per token would cost more than
/// a batched decode step's share of the forward).
pub(crate) fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> usize {
    let n = logits.len();
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    if s.temperature <= 0.0 || n == 0 {
        return argmax();
    }
    let max = max_of(logits);
    let weight = |l: f32| f64::from(exp_f32((l - max) / s.temperature));
    let k = if s.top_k > 0 { s.top_k.min(n) } else { n };
    if k == n && s.top_p >= 1.0 {
        // The whole vocabulary: no order needed. The weights are computed once (an `exp` per token of the
        // vocabulary is most of a sample's cost) and summed in the same order as the draw walks them.
        let weights: Vec<f64> = logits.iter().map(|&l| weight(l)).collect();
        let total: f64 = weights.iter().sum();
        let r = f64::from(rng.next_f32()) * total;
        let mut cumulative = 0.0;
        for (i, &p) in weights.iter().enumerate() {
            cumulative += p;
            if r < cumulative {
                return i;
            }
        }
        return argmax();
    }
    // Without top-k the nucleus is a share of the whole vocabulary's mass.
    let total_all = (k == n).then(|| logits.iter().map(|&l| weight(l)).sum::<f64>());
    let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
    let mut m = if k < n { k } else { NUCLEUS_CANDIDATES.min(n) };
    loop {
        let mut order: Vec<usize> = (0..n).collect();
        if m < n {
            order.select_nth_unstable_by(m - 1, by_logit);
            order.truncate(m);
        }
        order.sort_unstable_by(by_logit);
        let probs: Vec<f64> = order.iter().map(|&i| weight(logits[i])).collect();
        let total = total_all.unwrap_or_else(|| probs.iter().sum());
        let mut keep = probs.len();
        if s.top_p < 1.0 {
            let mut cumulative = 0.0;
            match probs.iter().position(|p| {
                cumulative += p / total;
                cumulative >= f64::from(s.top_p)
            }) {
                Some(i) => keep = i + 1,
                None if m < k => {
                    m = k;
                    continue;
                }
                None => {}
            }
        }
        let kept: f64 = probs[..keep].iter().sum();
        let r = f64::from(rng.next_f32()) * kept;
        let mut cumulative = 0.0;
        for (p, &i) in probs[..keep].iter().zip(&order) {
            cumulative += p;
            if r < cumulative {
                return i;
            }
        }
        return order[keep - 1];
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(logits: &[f32], s: &Sampling, draws: usize) -> Vec<f64> {
        let mut rng = Rng::seeded(s.seed);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sample(logits, s, &mut rng)] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    /// Draws follow the tempered softmax, cut to the top-k and the top-p nucleus.
    #[test]
    fn sampling_follows_temperature_top_k_and_top_p() {
        let logits: Vec<f32> = (0..2000).map(|i| if i < 4 { i as f32 } else { -4.0 - (i % 7) as f32 }).collect();
        let softmax = |t: f32, ids: &[usize]| -> Vec<f64> {
            let w: Vec<f64> = ids.iter().map(|&i| f64::from(((logits[i] - 3.0) / t).exp())).collect();
            let z: f64 = w.iter().sum();
            w.iter().map(|x| x / z).collect()
        };
        let base = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 3, max_new_tokens: 1 };
        let all: Vec<usize> = (0..logits.len()).collect();
        let want = softmax(1.0, &all);
        let got = frequencies(&logits, &base, 40_000);
        for i in 0..4 {
            assert!((got[i] - want[i]).abs() < 0.01, "token {i}: {} vs {}", got[i], want[i]);
        }
        // top-k 2: only the two best, in their renormalised proportions.
        let got = frequencies(&logits, &Sampling { top_k: 2, ..base.clone() }, 20_000);
        let want = softmax(1.0, &[3, 2]);
        assert!((got[3] - want[0]).abs() < 0.01 && (got[2] - want[1]).abs() < 0.01, "{:?}", &got[..4]);
        assert!(got.iter().enumerate().all(|(i, &f)| i >= 2 || f == 0.0));
        // top-p 0.5 at temperature 0.5: the best token alone holds more than half of the mass.
        let got = frequencies(&logits, &Sampling { top_p: 0.5, temperature: 0.5, ..base.clone() }, 2_000);
        assert_eq!(got[3], 1.0);
        // A nucleus wider than the first candidates (flat logits): every token can come.
        let flat = vec![0.0f32; 3000];
        let got = frequencies(&flat, &Sampling { top_p: 0.9, ..base }, 30_000);
        assert!(got.iter().filter(|&&f| f > 0.0).count() > 2000);
    }
}
