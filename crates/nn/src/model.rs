//! A LLaMA-family decoder (RMSNorm, adjacent-pair RoPE, grouped-query attention, SwiGLU, tied or separate
//! LM head) on the native CPU backend: weights dequantised to f32, projections through the `matrixmultiply`
//! sgemm, a KV cache for incremental decoding. This is the inference path and the oracle the wgpu kernels
//! will be checked against.

use crate::gguf::{Gguf, GgufError};

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub rope_theta: f32,
    pub eps: f32,
    pub context: usize,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig, ModelError> {
        let arch = g.str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::Unsupported(format!("architecture `{arch}` (only llama)")));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let vocab = match g.u64(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0),
        };
        let config = LlamaConfig {
            vocab,
            hidden: g.u64(&key("embedding_length"))? as usize,
            layers: g.u64(&key("block_count"))? as usize,
            heads: g.u64(&key("attention.head_count"))? as usize,
            kv_heads: g.u64(&key("attention.head_count_kv")).unwrap_or(g.u64(&key("attention.head_count"))?) as usize,
            ffn: g.u64(&key("feed_forward_length"))? as usize,
            rope_theta: g.f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            eps: g.f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            context: g.u64(&key("context_length")).unwrap_or(2048) as usize,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let ok = self.vocab > 0
            && self.hidden > 0
            && self.heads > 0
            && self.kv_heads > 0
            && self.hidden.is_multiple_of(self.heads)
            && self.heads.is_multiple_of(self.kv_heads)
            && self.head_dim().is_multiple_of(2);
        if ok { Ok(()) } else { Err(ModelError::Unsupported(format!("inconsistent config {self:?}"))) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tensor `{name}` has {got} values, expected {want}")]
    Shape { name: String, got: usize, want: usize },
    #[error("the sequence would reach {len} tokens, past the context of {context}")]
    ContextOverflow { len: usize, context: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("empty input: nothing to run")]
    Empty,
}

/// One decoder block's weights, row-major `[out, in]`.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Vec<f32>,
    pub w_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

pub struct Llama {
    pub config: LlamaConfig,
    /// `[vocab, hidden]`.
    pub embed: Vec<f32>,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to the embedding.
    pub lm_head: Option<Vec<f32>>,
}

impl Llama {
    pub fn from_gguf(g: &Gguf) -> Result<Llama, ModelError> {
        let c = LlamaConfig::from_gguf(g)?;
        let load = |name: &str, want: usize| -> Result<Vec<f32>, ModelError> {
            let v = g.tensor_f32(name)?;
            if v.len() != want {
                return Err(ModelError::Shape { name: name.into(), got: v.len(), want });
            }
            Ok(v)
        };
        let (h, kv, f) = (c.hidden, c.kv_dim(), c.ffn);
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: load(&n("attn_norm"), h)?,
                wq: load(&n("attn_q"), h * h)?,
                wk: load(&n("attn_k"), kv * h)?,
                wv: load(&n("attn_v"), kv * h)?,
                wo: load(&n("attn_output"), h * h)?,
                ffn_norm: load(&n("ffn_norm"), h)?,
                w_gate: load(&n("ffn_gate"), f * h)?,
                w_up: load(&n("ffn_up"), f * h)?,
                w_down: load(&n("ffn_down"), h * f)?,
            });
        }
        let lm_head = if g.tensor("output.weight").is_ok() { Some(load("output.weight", c.vocab * h)?) } else { None };
        Ok(Llama {
            embed: load("token_embd.weight", c.vocab * h)?,
            norm: load("output_norm.weight", h)?,
            layers,
            lm_head,
            config: c,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache { k: vec![Vec::new(); self.config.layers], v: vec![Vec::new(); self.config.layers], len: 0 }
    }

    /// Runs `tokens` after what the cache holds and returns the logits of every new position, `[t, vocab]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        let x = self.hidden_states(tokens, cache)?;
        Ok(self.logits(&x, tokens.len()))
    }

    /// Like `forward` but only the last position's logits (what decoding needs).
    pub fn forward_last(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        let x = self.hidden_states(tokens, cache)?;
        let h = self.config.hidden;
        Ok(self.logits(&x[(tokens.len() - 1) * h..], 1))
    }

    fn logits(&self, x: &[f32], t: usize) -> Vec<f32> {
        let c = &self.config;
        let head = self.lm_head.as_deref().unwrap_or(&self.embed);
        let mut out = vec![0.0; t * c.vocab];
        linear(x, t, head, c.hidden, c.vocab, &mut out);
        out
    }

    fn hidden_states(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(ModelError::Empty);
        }
        let t = tokens.len();
        if cache.len + t > c.context {
            return Err(ModelError::ContextOverflow { len: cache.len + t, context: c.context });
        }
        let (h, hd, kvd) = (c.hidden, c.head_dim(), c.kv_dim());
        let mut x = vec![0.0f32; t * h];
        for (i, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            if tok >= c.vocab {
                return Err(ModelError::BadToken { id: tok as u32, vocab: c.vocab });
            }
            x[i * h..(i + 1) * h].copy_from_slice(&self.embed[tok * h..(tok + 1) * h]);
        }
        let start = cache.len;
        let mut normed = vec![0.0f32; t * h];
        let mut q = vec![0.0f32; t * h];
        let mut k = vec![0.0f32; t * kvd];
        let mut v = vec![0.0f32; t * kvd];
        let mut attn = vec![0.0f32; t * h];
        let mut proj = vec![0.0f32; t * h];
        let mut gate = vec![0.0f32; t * c.ffn];
        let mut up = vec![0.0f32; t * c.ffn];
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.eps, h, &mut normed);
            linear(&normed, t, &layer.wq, h, h, &mut q);
            linear(&normed, t, &layer.wk, h, kvd, &mut k);
            linear(&normed, t, &layer.wv, h, kvd, &mut v);
            for i in 0..t {
                let pos = start + i;
                rope(&mut q[i * h..(i + 1) * h], hd, pos, c.rope_theta);
                rope(&mut k[i * kvd..(i + 1) * kvd], hd, pos, c.rope_theta);
            }
            cache.k[li].extend_from_slice(&k);
            cache.v[li].extend_from_slice(&v);
            let (kc, vc) = (&cache.k[li], &cache.v[li]);
            let mut scores = vec![0.0f32; start + t];
            for i in 0..t {
                let visible = start + i + 1;
                for head in 0..c.heads {
                    let kvh = head / group;
                    let qh = &q[i * h + head * hd..i * h + (head + 1) * hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in scores[..visible].iter_mut().enumerate() {
                        let kj = &kc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                        *s = dot(qh, kj) * scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0;
                    for s in scores[..visible].iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let out = &mut attn[i * h + head * hd..i * h + (head + 1) * hd];
                    out.fill(0.0);
                    for (j, s) in scores[..visible].iter().enumerate() {
                        let w = s / sum;
                        let vj = &vc[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                        for (o, vv) in out.iter_mut().zip(vj) {
                            *o += w * vv;
                        }
                    }
                }
            }
            linear(&attn, t, &layer.wo, h, h, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            rms_norm(&x, &layer.ffn_norm, c.eps, h, &mut normed);
            linear(&normed, t, &layer.w_gate, h, c.ffn, &mut gate);
            linear(&normed, t, &layer.w_up, h, c.ffn, &mut up);
            gate.iter_mut().zip(&up).for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
            linear(&gate, t, &layer.w_down, c.ffn, h, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        cache.len += t;
        let mut out = vec![0.0f32; t * h];
        rms_norm(&x, &self.norm, c.eps, h, &mut out);
        Ok(out)
    }
}

/// Keys and values of every layer for the positions run so far.
#[derive(Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pub len: usize,
}

/// A dot product with eight independent accumulators, so the compiler vectorises it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += xa[i] * xb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Up to this many rows, `linear` runs as dot products over the weight rows: a GEMM would repack the whole
/// weight matrix for a handful of rows, which dominates decoding.
const GEMV_MAX_ROWS: usize = 4;

/// `y[t, out] = x[t, in] · w[out, in]ᵀ`.
pub fn linear(x: &[f32], t: usize, w: &[f32], in_dim: usize, out_dim: usize, y: &mut [f32]) {
    debug_assert_eq!(x.len(), t * in_dim);
    debug_assert_eq!(w.len(), out_dim * in_dim);
    if t <= GEMV_MAX_ROWS {
        use rayon::prelude::*;
        const BLOCK: usize = 64;
        for (xr, yr) in x.chunks_exact(in_dim).zip(y.chunks_exact_mut(out_dim)) {
            yr.par_chunks_mut(BLOCK).zip(w.par_chunks(BLOCK * in_dim)).for_each(|(ys, ws)| {
                for (yv, wr) in ys.iter_mut().zip(ws.chunks_exact(in_dim)) {
                    *yv = dot(xr, wr);
                }
            });
        }
        return;
    }
    // SAFETY: the slices cover the strided extents: x is t×in (row stride in), w is out×in read as its
    // transpose (in×out with row stride 1, column stride in), y is t×out (row stride out).
    unsafe {
        matrixmultiply::sgemm(
            t,
            in_dim,
            out_dim,
            1.0,
            x.as_ptr(),
            in_dim as isize,
            1,
            w.as_ptr(),
            1,
            in_dim as isize,
            0.0,
            y.as_mut_ptr(),
            out_dim as isize,
            1,
        );
    }
}

pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, dim: usize, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// Rotates adjacent pairs `(2i, 2i+1)` of each head by `pos · θ^(-2i/d)` (the GGUF llama layout).
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, theta: f32) {
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let freq = theta.powf(-((2 * i) as f32) / head_dim as f32);
            let (sin, cos) = (pos as f32 * freq).sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos - b * sin;
            head[2 * i + 1] = a * sin + b * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive() {
        let (t, i, o) = (3, 5, 4);
        let x: Vec<f32> = (0..t * i).map(|v| v as f32 * 0.1 - 0.5).collect();
        let w: Vec<f32> = (0..o * i).map(|v| (v as f32 * 0.37).sin()).collect();
        let mut y = vec![0.0; t * o];
        linear(&x, t, &w, i, o, &mut y);
        for r in 0..t {
            for c in 0..o {
                let want: f32 = (0..i).map(|k| x[r * i + k] * w[c * i + k]).sum();
                assert!((y[r * o + c] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let mut x = vec![1.0, 0.0, 0.5, 0.5];
        rope(&mut x, 4, 0, 10_000.0);
        assert_eq!(x, vec![1.0, 0.0, 0.5, 0.5]);
        rope(&mut x, 4, 3, 10_000.0);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
        assert!(((x[2] * x[2] + x[3] * x[3]) - 0.5).abs() < 1e-6);
    }
}
