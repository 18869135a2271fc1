//! A batched forward on the CPU backend: the new tokens of several sequences, each with its own KV cache, go
//! through one set of matmuls (rows of every sequence stacked), and only attention runs per sequence. Batched
//! decoding is this with one token per sequence: 16 sequences cost one `[16, hidden]` matmul per weight instead
//! of 16 matrix-vector products, which is what makes batch decoding faster than batch 1 on a CPU.

use rayon::prelude::*;

use crate::model::{Llama, ModelError, linear_set, rms_norm, rope};

/// One sequence's keys and values, `[positions, kv_dim]` per layer.
#[derive(Clone, Debug, Default)]
pub struct SeqCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pub len: usize,
}

impl SeqCache {
    pub fn new(model: &Llama) -> SeqCache {
        SeqCache { k: vec![Vec::new(); model.config.layers], v: vec![Vec::new(); model.config.layers], len: 0 }
    }
}

/// Runs `tokens[i]` after what `caches[i]` holds, for every sequence `i` at once, and returns the logits of each
/// sequence's last new position, `[sequences, vocab]`. A sequence with no new tokens is an error.
pub fn forward_last_batch(model: &Llama, tokens: &[&[u32]], caches: &mut [SeqCache]) -> Result<Vec<f32>, ModelError> {
    let c = &model.config;
    if tokens.is_empty() || tokens.len() != caches.len() || tokens.iter().any(|t| t.is_empty()) {
        return Err(ModelError::Empty);
    }
    for (t, cache) in tokens.iter().zip(caches.iter()) {
        if cache.len + t.len() > c.context {
            return Err(ModelError::ContextOverflow { len: cache.len + t.len(), context: c.context });
        }
        if let Some(&id) = t.iter().find(|&&id| id as usize >= c.vocab) {
            return Err(ModelError::BadToken { id, vocab: c.vocab });
        }
    }
    let (h, hd, kvd) = (c.hidden, c.head_dim(), c.kv_dim());
    // Row ranges of each sequence in the stacked activations.
    let mut starts = Vec::with_capacity(tokens.len() + 1);
    starts.push(0);
    for t in tokens {
        starts.push(starts[starts.len() - 1] + t.len());
    }
    let rows = starts[tokens.len()];
    let mut x = vec![0.0f32; rows * h];
    for (row, &tok) in tokens.iter().flat_map(|t| t.iter()).enumerate() {
        let tok = tok as usize;
        x[row * h..(row + 1) * h].copy_from_slice(&model.embed[tok * h..(tok + 1) * h]);
    }
    let mut normed = vec![0.0f32; rows * h];
    let mut q = vec![0.0f32; rows * h];
    let mut k = vec![0.0f32; rows * kvd];
    let mut v = vec![0.0f32; rows * kvd];
    let mut attn = vec![0.0f32; rows * h];
    let mut proj = vec![0.0f32; rows * h];
    let mut gate = vec![0.0f32; rows * c.ffn];
    let mut up = vec![0.0f32; rows * c.ffn];
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    for (li, layer) in model.layers.iter().enumerate() {
        let m = model.mats(li);
        rms_norm(&x, &layer.attn_norm, c.eps, h, &mut normed);
        linear_set(&normed, rows, h, &mut [(m.wq, h, &mut q), (m.wk, kvd, &mut k), (m.wv, kvd, &mut v)]);
        // Each sequence: RoPE at its own positions, append to its cache, attend over it. Sequences are
        // independent, so they run on the rayon pool.
        let q_parts = split_rows(&mut q, &starts, h);
        let attn_parts = split_rows(&mut attn, &starts, h);
        caches.par_iter_mut().zip(q_parts).zip(attn_parts).enumerate().for_each(|(s, ((cache, q), attn))| {
            let (lo, hi) = (starts[s], starts[s + 1]);
            let t = hi - lo;
            let start = cache.len;
            let mut ks = k[lo * kvd..hi * kvd].to_vec();
            for i in 0..t {
                rope(&mut q[i * h..(i + 1) * h], hd, start + i, c.rope_theta);
                rope(&mut ks[i * kvd..(i + 1) * kvd], hd, start + i, c.rope_theta);
            }
            cache.k[li].extend_from_slice(&ks);
            cache.v[li].extend_from_slice(&v[lo * kvd..hi * kvd]);
            attend(q, &cache.k[li], &cache.v[li], attn, start, t, c.heads, group, hd, scale);
        });
        linear_set(&attn, rows, h, &mut [(m.wo, h, &mut proj)]);
        x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        rms_norm(&x, &layer.ffn_norm, c.eps, h, &mut normed);
        linear_set(&normed, rows, h, &mut [(m.w_gate, c.ffn, &mut gate), (m.w_up, c.ffn, &mut up)]);
        gate.iter_mut().zip(&up).for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
        linear_set(&gate, rows, c.ffn, &mut [(m.w_down, h, &mut proj)]);
        x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
    }
    for (cache, t) in caches.iter_mut().zip(tokens) {
        cache.len += t.len();
    }
    // Only each sequence's last row needs the final norm and the LM head.
    let mut last = vec![0.0f32; tokens.len() * h];
    for s in 0..tokens.len() {
        let row = starts[s + 1] - 1;
        last[s * h..(s + 1) * h].copy_from_slice(&x[row * h..(row + 1) * h]);
    }
    let mut normed_last = vec![0.0f32; tokens.len() * h];
    rms_norm(&last, &model.norm, c.eps, h, &mut normed_last);
    let mut logits = vec![0.0f32; tokens.len() * c.vocab];
    linear_set(&normed_last, tokens.len(), h, &mut [(model.head(), c.vocab, &mut logits)]);
    Ok(logits)
}

/// Splits a `[rows, width]` buffer into the row ranges `starts[i]..starts[i + 1]`.
fn split_rows<'a>(mut buf: &'a mut [f32], starts: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(starts.len() - 1);
    for w in starts.windows(2) {
        let (head, rest) = buf.split_at_mut((w[1] - w[0]) * width);
        parts.push(head);
        buf = rest;
    }
    parts
}

/// Causal grouped-query attention of `t` new rows (positions `start..start + t`) over a cache of `start + t`
/// positions: `q`, `out` `[t, heads * hd]`, caches `[positions, kv_heads * hd]`. Query rows run in parallel (a
/// long prefill spends most of its time here).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    out: &mut [f32],
    start: usize,
    t: usize,
    heads: usize,
    group: usize,
    hd: usize,
    scale: f32,
) {
    let h = heads * hd;
    let kvd = h / group;
    debug_assert_eq!(out.len(), t * h);
    debug_assert!(kc.len() >= (start + t) * kvd && vc.len() >= (start + t) * kvd);
    // One task per (row, head): a decoding step (one row) still spreads its heads over the pool.
    out.par_chunks_mut(hd).enumerate().for_each(|(n, o)| {
        let (i, head) = (n / heads, n % heads);
        let visible = start + i + 1;
        let mut scores = vec![0.0f32; visible];
        let kvh = head / group;
        let qh = &q[i * h + head * hd..i * h + (head + 1) * hd];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let kj = &kc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
            *s = crate::skinny::dot(qh, kj) * scale;
            max = max.max(*s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            let w = s / sum;
            let vj = &vc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
            for (a, b) in o.iter_mut().zip(vj) {
                *a += w * b;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::random_model;
    use crate::model::LlamaConfig;

    #[test]
    fn batched_steps_match_one_sequence_at_a_time() {
        let config = LlamaConfig {
            vocab: 50,
            hidden: 16,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 24,
            rope_theta: 10_000.0,
            eps: 1e-5,
            context: 32,
        };
        let model = random_model(config, true, 3);
        let prompts: [&[u32]; 3] = [&[1, 2, 3], &[4], &[5, 6, 7, 8, 9]];
        let mut caches: Vec<SeqCache> = (0..3).map(|_| SeqCache::new(&model)).collect();
        let mut refs: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
        let mut step = prompts.to_vec();
        let next: [[u32; 3]; 3] = [[10, 11, 12], [20, 21, 22], [30, 31, 32]];
        for round in 0..4 {
            let got = forward_last_batch(&model, &step, &mut caches).unwrap();
            for s in 0..3 {
                let want = model.forward_last(step[s], &mut refs[s]).unwrap();
                let diff = want.iter().zip(&got[s * 50..(s + 1) * 50]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(diff < 1e-4, "round {round} sequence {s}: {diff}");
                assert_eq!(caches[s].len, refs[s].len);
            }
            if round < 3 {
                step = (0..3).map(|s| &next[s][round..round + 1]).collect();
            }
        }
        assert!(matches!(forward_last_batch(&model, &[], &mut []), Err(ModelError::Empty)));
        assert!(matches!(
            forward_last_batch(&model, &[&[99]], &mut caches[..1]),
            Err(ModelError::BadToken { id: 99, .. })
        ));
    }
}
