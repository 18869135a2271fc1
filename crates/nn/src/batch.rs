//! A batched forward on the CPU backend: the new tokens of several sequences, each with its own KV cache, go
//! through one set of matmuls (rows of every sequence stacked), and only attention runs per sequence. Batched
//! decoding is this with one token per sequence: 16 sequences cost one `[16, hidden]` matmul per weight instead
//! of 16 matrix-vector products, which is what makes batch decoding faster than batch 1 on a CPU.

use rayon::prelude::*;

use crate::model::{Llama, ModelError, linear_set, rms_norm, rope_angles, rope_with};

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
    // Each row's rotation angles, computed once for all layers.
    let mut rope_cs = Vec::with_capacity(rows * hd / 2);
    for (s, t) in tokens.iter().enumerate() {
        for i in 0..t.len() {
            rope_cs.extend(rope_angles(hd, caches[s].len + i, c.rope_theta));
        }
    }
    for (li, layer) in model.layers.iter().enumerate() {
        let m = model.mats(li);
        rms_norm(&x, &layer.attn_norm, c.eps, h, &mut normed);
        linear_set(&normed, rows, h, &mut [(m.wq, h, &mut q), (m.wk, kvd, &mut k), (m.wv, kvd, &mut v)]);
        // Each sequence: RoPE at its own positions, append to its cache; then all sequences' attention at once.
        for (s, cache) in caches.iter_mut().enumerate() {
            let (lo, hi) = (starts[s], starts[s + 1]);
            for i in lo..hi {
                let cs = &rope_cs[i * (hd / 2)..(i + 1) * (hd / 2)];
                rope_with(&mut q[i * h..(i + 1) * h], hd, cs);
                rope_with(&mut k[i * kvd..(i + 1) * kvd], hd, cs);
            }
            cache.k[li].extend_from_slice(&k[lo * kvd..hi * kvd]);
            cache.v[li].extend_from_slice(&v[lo * kvd..hi * kvd]);
        }
        let attn_parts = split_rows(&mut attn, &starts, h);
        let mut jobs: Vec<AttnSeq<'_>> = caches
            .iter()
            .zip(attn_parts)
            .enumerate()
            .map(|(s, (cache, out))| AttnSeq {
                q: &q[starts[s] * h..starts[s + 1] * h],
                k: &cache.k[li],
                v: &cache.v[li],
                out,
                start: cache.len,
            })
            .collect();
        attend_batch(&mut jobs, c.heads, group, hd, scale);
        drop(jobs);
        linear_set(&attn, rows, h, &mut [(m.wo, h, &mut proj)]);
        x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        rms_norm(&x, &layer.ffn_norm, c.eps, h, &mut normed);
        linear_set(&normed, rows, h, &mut [(m.w_gate, c.ffn, &mut gate), (m.w_up, c.ffn, &mut up)]);
        gate.iter_mut().zip(&up).for_each(|(g, u)| *g = *g / (1.0 + crate::cpu_ops::exp_f32(-*g)) * u);
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

/// One sequence's part of an attention call: its new query rows `q` `[t, heads * hd]` (already rotated), its
/// caches `[start + t, kv_dim]` (the new rows appended), and where its output rows go.
pub(crate) struct AttnSeq<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub out: &'a mut [f32],
    pub start: usize,
}

/// One (sequence, row, kv head) of [`attend_batch`]: the `group` query heads, the caches, how many positions
/// it sees, the kv head, and its output.
type AttnTask<'a> = (&'a [f32], &'a [f32], &'a [f32], usize, usize, &'a mut [f32]);

/// Below this many multiply-adds in all the attention of a step runs on the calling thread: waking the pool
/// costs more than a batch-1 step's attention at short contexts. Above it the caches' reads (they come from
/// memory every step: the weights streamed in between evict them) go faster on two threads: SmolLM2 batch 8 at
/// ~100 positions, 2 cores, quiet: attention 4.6 -> 3.0 ms of a ~28 ms step, and the other thread stays awake
/// for the next matrix product.
const ATTN_SERIAL_WORK: usize = 150_000;

/// Causal grouped-query attention of every sequence's new rows over its cache. One task per (sequence, row, kv
/// head) reads each cached key and value row once for the `group` query heads that share it; the tasks of all
/// sequences form one parallel region (or none, when the work is small). Each task's arithmetic does not
/// depend on the others or on the scheduling, so a sequence gets the same result alone or in a batch.
pub(crate) fn attend_batch(seqs: &mut [AttnSeq<'_>], heads: usize, group: usize, hd: usize, scale: f32) {
    let h = heads * hd;
    let kvd = h / group;
    let mut work = 0usize;
    let mut tasks = Vec::new();
    for seq in seqs.iter_mut() {
        let t = seq.out.len() / h;
        debug_assert_eq!(seq.q.len(), t * h);
        debug_assert!(seq.k.len() >= (seq.start + t) * kvd && seq.v.len() >= (seq.start + t) * kvd);
        work += t * (seq.start + t) * 2 * h;
        let (q, k, v, start) = (seq.q, seq.k, seq.v, seq.start);
        // Output row i's heads are laid out `[heads, hd]`: kv head g owns heads g*group..(g+1)*group, adjacent.
        for (n, o) in seq.out.chunks_mut(group * hd).enumerate() {
            let (i, g) = (n / (heads / group), n % (heads / group));
            let qg = &q[i * h + g * group * hd..i * h + (g + 1) * group * hd];
            tasks.push((qg, k, v, start + i + 1, g, o));
        }
    }
    let isa = crate::skinny::Isa::detect();
    let run = |(qg, k, v, visible, g, o): AttnTask<'_>| {
        let mut scores = vec![0.0f32; group * visible];
        attend_group(isa, qg, k, v, kvd, g * hd, hd, visible, scale, &mut scores, o);
    };
    if work < ATTN_SERIAL_WORK || tasks.len() == 1 {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().with_min_len(1).for_each(run);
    }
}

/// Causal grouped-query attention of `t` new rows (positions `start..start + t`) over a cache of `start + t`
/// positions: `q`, `out` `[t, heads * hd]`, caches `[positions, kv_heads * hd]`.
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
    debug_assert_eq!(out.len(), t * heads * hd);
    attend_batch(&mut [AttnSeq { q, k: kc, v: vc, out, start }], heads, group, hd, scale);
}

/// The `group` query heads `qg` `[group, hd]` that share the kv head at column `col` of the caches, over the
/// first `visible` positions; `scores` is scratch of `group * visible`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend_group(
    isa: crate::skinny::Isa,
    qg: &[f32],
    kc: &[f32],
    vc: &[f32],
    kvd: usize,
    col: usize,
    hd: usize,
    visible: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match isa {
        // SAFETY: AVX-512F was detected at run time; the head width selects the kernel built for it.
        #[cfg(target_arch = "x86_64")]
        crate::skinny::Isa::Avx512 if matches!(hd, 16 | 32 | 64 | 128) => unsafe {
            match hd {
                16 => avx512::attend_group::<1>(qg, kc, vc, kvd, col, visible, scale, scores, out),
                32 => avx512::attend_group::<2>(qg, kc, vc, kvd, col, visible, scale, scores, out),
                64 => avx512::attend_group::<4>(qg, kc, vc, kvd, col, visible, scale, scores, out),
                _ => avx512::attend_group::<8>(qg, kc, vc, kvd, col, visible, scale, scores, out),
            }
        },
        // SAFETY: AVX2 and FMA were detected at run time (AVX-512 implies them).
        #[cfg(target_arch = "x86_64")]
        crate::skinny::Isa::Avx2 | crate::skinny::Isa::Avx512 => unsafe {
            attend_group_avx2(qg, kc, vc, kvd, col, hd, visible, scale, scores, out)
        },
        _ => attend_group_body(qg, kc, vc, kvd, col, hd, visible, scale, scores, out),
    }
}

/// Softmax of each `visible`-long row of `scores`, in place.
#[inline(always)]
fn softmax_rows(scores: &mut [f32], visible: usize) {
    for s in scores.chunks_exact_mut(visible) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in s.iter_mut() {
            *v = crate::cpu_ops::exp_f32(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        s.iter_mut().for_each(|v| *v *= inv);
    }
}

/// The attention of one kv head with the head width fixed at compile time (`D` vectors of 16 lanes), so a key
/// or value row and a head's output live in registers: a decoding step's attention is thousands of these
/// calls over ~100 positions each, where the generic body spent more on horizontal sums and reloading the
/// output than on arithmetic. What is left is mostly waiting for the caches' rows from memory.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Cache rows ahead that the loops prefetch: a head's slice of a row is 4 of a row's 12 cache lines (SmolLM2),
    /// a strided walk the hardware prefetcher follows poorly, and the caches come from memory on every step (the
    /// weights streamed in between evict them).
    const PREFETCH_ROWS: usize = 6;

    /// Hints the cache lines of one head's slice at element `at` (an address past the cache is harmless).
    #[inline(always)]
    fn prefetch_head<const D: usize>(base: *const f32, at: usize) {
        for c in 0..D {
            // SAFETY: a prefetch never faults; wrapping_add keeps the pointer arithmetic defined.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(at + 16 * c).cast()) };
        }
    }

    /// # Safety
    /// AVX-512F must be available; `qg` is `[group, D * 16]`, the caches hold `visible` rows of `kvd` with the
    /// head at columns `col..col + D * 16`, `scores` holds `group * visible`, `out` `group * D * 16`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_group<const D: usize>(
        qg: &[f32],
        kc: &[f32],
        vc: &[f32],
        kvd: usize,
        col: usize,
        visible: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = D * 16;
        let group = qg.len() / hd;
        assert!(
            out.len() >= group * hd
                && scores.len() >= group * visible
                && kc.len() >= (visible - 1) * kvd + col + hd
                && vc.len() >= (visible - 1) * kvd + col + hd,
            "attention buffers are smaller than their shapes"
        );
        let (q, k, v) = (qg.as_ptr(), kc.as_ptr(), vc.as_ptr());
        for j in 0..visible {
            prefetch_head::<D>(k, (j + PREFETCH_ROWS) * kvd + col);
            let mut kj = [_mm512_setzero_ps(); D];
            for (c, kv) in kj.iter_mut().enumerate() {
                // SAFETY: row j < visible, columns col..col + hd: inside kc (checked above).
                *kv = unsafe { _mm512_loadu_ps(k.add(j * kvd + col + 16 * c)) };
            }
            for a in 0..group {
                let mut acc = _mm512_setzero_ps();
                for (c, kv) in kj.iter().enumerate() {
                    // SAFETY: head a < group of qg's [group, hd].
                    acc = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(q.add(a * hd + 16 * c)) }, *kv, acc);
                }
                scores[a * visible + j] = _mm512_reduce_add_ps(acc) * scale;
            }
        }
        super::softmax_rows(&mut scores[..group * visible], visible);
        for a in 0..group {
            let mut acc = [_mm512_setzero_ps(); D];
            for j in 0..visible {
                if a == 0 {
                    prefetch_head::<D>(v, (j + PREFETCH_ROWS) * kvd + col);
                }
                let w = _mm512_set1_ps(scores[a * visible + j]);
                for (c, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: as for the keys.
                    *acc = _mm512_fmadd_ps(w, unsafe { _mm512_loadu_ps(v.add(j * kvd + col + 16 * c)) }, *acc);
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                // SAFETY: head a's output columns a * hd..(a + 1) * hd are inside out (checked above).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(a * hd + 16 * c), *acc) };
            }
        }
    }
}

/// [`attend_group_body`] compiled for AVX2 + FMA (the same code, wider vectors).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_group_avx2(
    qg: &[f32],
    kc: &[f32],
    vc: &[f32],
    kvd: usize,
    col: usize,
    hd: usize,
    visible: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_group_body(qg, kc, vc, kvd, col, hd, visible, scale, scores, out)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_group_body(
    qg: &[f32],
    kc: &[f32],
    vc: &[f32],
    kvd: usize,
    col: usize,
    hd: usize,
    visible: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = qg.len() / hd;
    for j in 0..visible {
        let kj = &kc[j * kvd + col..j * kvd + col + hd];
        for (a, qa) in qg.chunks_exact(hd).enumerate() {
            scores[a * visible + j] = crate::skinny::dot(qa, kj) * scale;
        }
    }
    softmax_rows(scores, visible);
    out.fill(0.0);
    for j in 0..visible {
        let vj = &vc[j * kvd + col..j * kvd + col + hd];
        for (a, o) in out.chunks_exact_mut(hd).enumerate().take(group) {
            let w = scores[a * visible + j];
            for (o, v) in o.iter_mut().zip(vj) {
                *o += w * v;
            }
        }
    }
}

impl SeqCache {
    /// A new cache holding this one's first `len` positions (at most all of them): a prompt prefix that another
    /// sequence starting with the same tokens reuses instead of recomputing (the engine's prefix store).
    pub fn prefix(&self, len: usize) -> SeqCache {
        let len = len.min(self.len);
        let rows = |layers: &[Vec<f32>]| -> Vec<Vec<f32>> {
            layers.iter().map(|l| l[..l.len() / self.len.max(1) * len].to_vec()).collect()
        };
        SeqCache { k: rows(&self.k), v: rows(&self.v), len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::random_model;
    use crate::model::LlamaConfig;

    /// Causal GQA attention in f64, one (row, head) at a time: the reference for `attend_batch`.
    #[allow(clippy::too_many_arguments)]
    fn naive_attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        start: usize,
        t: usize,
        heads: usize,
        group: usize,
        hd: usize,
    ) -> Vec<f64> {
        let (h, kvd) = (heads * hd, heads / group * hd);
        let mut out = vec![0.0f64; t * h];
        for i in 0..t {
            for head in 0..heads {
                let col = head / group * hd;
                let qh = &q[i * h + head * hd..i * h + (head + 1) * hd];
                let scores: Vec<f64> = (0..start + i + 1)
                    .map(|j| {
                        let kj = &k[j * kvd + col..j * kvd + col + hd];
                        qh.iter().zip(kj).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let w = (s - max).exp() / sum;
                    for d in 0..hd {
                        out[i * h + head * hd + d] += w * f64::from(v[j * kvd + col + d]);
                    }
                }
            }
        }
        out
    }

    /// Sequences of different lengths and positions, small (run serially) and large (run on the pool): each
    /// matches the reference, and gives the same bits alone as beside the others.
    #[test]
    fn attention_matches_reference_alone_or_batched() {
        // Head widths with a fixed-width kernel (16, 64) and without one (24).
        for (heads, group, hd) in [(8, 4, 16), (9, 3, 64), (4, 2, 24)] {
            attention_case(heads, group, hd);
        }
    }

    fn attention_case(heads: usize, group: usize, hd: usize) {
        let (h, kvd) = (heads * hd, heads / group * hd);
        let noise = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0) * 0.7).collect()
        };
        // (start, new rows): decoding steps, a prompt chunk after a prefix, and one large enough for the pool.
        let shapes = [(5usize, 1usize), (0, 3), (40, 7), (0, 1), (128, 128)];
        let data: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = shapes
            .iter()
            .enumerate()
            .map(|(s, &(start, t))| {
                (noise(t * h, s), noise((start + t) * kvd, s + 10), noise((start + t) * kvd, s + 20))
            })
            .collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let run = |which: &[usize]| -> Vec<Vec<f32>> {
            let mut outs: Vec<Vec<f32>> = which.iter().map(|&s| vec![f32::NAN; shapes[s].1 * h]).collect();
            let mut jobs: Vec<AttnSeq<'_>> = which
                .iter()
                .zip(outs.iter_mut())
                .map(|(&s, out)| AttnSeq { q: &data[s].0, k: &data[s].1, v: &data[s].2, out, start: shapes[s].0 })
                .collect();
            attend_batch(&mut jobs, heads, group, hd, scale);
            drop(jobs);
            outs
        };
        let all: Vec<usize> = (0..shapes.len()).collect();
        let together = run(&all);
        for (s, &(start, t)) in shapes.iter().enumerate() {
            let want = naive_attention(&data[s].0, &data[s].1, &data[s].2, start, t, heads, group, hd);
            let diff = want.iter().zip(&together[s]).fold(0.0f64, |m, (a, b)| m.max((a - f64::from(*b)).abs()));
            assert!(diff < 1e-5, "hd {hd} sequence {s}: {diff}");
            assert_eq!(run(&[s])[0], together[s], "hd {hd} sequence {s} alone");
        }
    }

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
