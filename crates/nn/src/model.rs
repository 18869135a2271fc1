//! A LLaMA-family decoder (RMSNorm, adjacent-pair RoPE, grouped-query attention, SwiGLU, tied or separate
//! LM head) on the native CPU backend: weights dequantised to f32, projections through the `matrixmultiply`
//! sgemm (many rows) or the few-row kernels of `skinny` (decoding), a KV cache for incremental decoding. This is
//! the inference path and the oracle the wgpu kernels will be checked against.
//!
//! [`Precision::F16`] and [`Precision::Bf16`] add 16-bit copies of the matrices that decoding reads instead of
//! the f32 ones (decoding one sequence is bound by the bytes of weights streamed per token; a batch of them, on
//! CPUs with AVX512-BF16, by multiplies that bf16 does at twice the f32 rate); the f32 weights stay the model's
//! truth for long prefills, training, checkpoints and export.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::gguf::{Gguf, GgufError};
use crate::skinny::{Linear, Weights, to_bf16, to_f16};

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
    /// The shapes of SmolLM2-135M(-Instruct), as its GGUF states them (embeddings tied to the LM head).
    pub fn smollm2_135m() -> LlamaConfig {
        LlamaConfig {
            vocab: 49_152,
            hidden: 576,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            ffn: 1536,
            rope_theta: 100_000.0,
            eps: 1e-5,
            context: 8192,
        }
    }

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
    /// 16-bit copies of the matrices for decoding ([`Precision::F16`], [`Precision::Bf16`]); `None` decodes in
    /// f32. Made by
    /// [`Llama::set_precision`]; whoever changes the f32 weights refreshes them (`TrainableLlama::write_into`
    /// does).
    pub half: Option<HalfWeights>,
}

/// The weight format that decoding's matrix products read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The f32 weights themselves.
    #[default]
    F32,
    /// IEEE half-precision copies (round to nearest): half the bytes per decoded token, logits within ~1e-2.
    F16,
    /// bfloat16 copies (round to nearest), products with the inputs rounded to bf16 too: the bytes of f16, and
    /// on CPUs with AVX512-BF16 twice the multiply rate, which is what batched decoding is bound by; 3 fewer
    /// mantissa bits than f16 (SmolLM2 itself was trained in bf16).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "f16" | "fp16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("unknown weight precision `{other}` (f32, f16 or bf16)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

/// One matrix in a 16-bit format.
#[derive(Clone, Debug, PartialEq)]
pub enum HalfMatrix {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl HalfMatrix {
    fn new(w: &[f32], precision: Precision) -> HalfMatrix {
        match precision {
            Precision::Bf16 => HalfMatrix::Bf16(to_bf16(w)),
            Precision::F16 | Precision::F32 => HalfMatrix::F16(to_f16(w)),
        }
    }

    pub fn weights(&self) -> Weights<'_> {
        match self {
            HalfMatrix::F16(w) => Weights::F16(w),
            HalfMatrix::Bf16(w) => Weights::Bf16(w),
        }
    }
}

/// One decoder block's matrices in 16 bits.
pub struct HalfLayer {
    pub wq: HalfMatrix,
    pub wk: HalfMatrix,
    pub wv: HalfMatrix,
    pub wo: HalfMatrix,
    pub w_gate: HalfMatrix,
    pub w_up: HalfMatrix,
    pub w_down: HalfMatrix,
}

/// 16-bit copies of every matrix a decoding step reads (the embedding lookup stays f32).
pub struct HalfWeights {
    /// `F16` or `Bf16`.
    pub precision: Precision,
    pub layers: Vec<HalfLayer>,
    /// The LM head (the embedding's copy when tied).
    pub head: HalfMatrix,
}

impl HalfWeights {
    /// Copies of `model`'s matrices in `precision` (`F32` is taken as `F16`: there is no f32 copy to make).
    pub fn from_model(model: &Llama, precision: Precision) -> HalfWeights {
        let precision = if precision == Precision::F32 { Precision::F16 } else { precision };
        let layers = model
            .layers
            .par_iter()
            .map(|l| HalfLayer {
                wq: HalfMatrix::new(&l.wq, precision),
                wk: HalfMatrix::new(&l.wk, precision),
                wv: HalfMatrix::new(&l.wv, precision),
                wo: HalfMatrix::new(&l.wo, precision),
                w_gate: HalfMatrix::new(&l.w_gate, precision),
                w_up: HalfMatrix::new(&l.w_up, precision),
                w_down: HalfMatrix::new(&l.w_down, precision),
            })
            .collect();
        let head = HalfMatrix::new(model.lm_head.as_deref().unwrap_or(&model.embed), precision);
        HalfWeights { precision, layers, head }
    }
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
            half: None,
        })
    }

    pub fn precision(&self) -> Precision {
        self.half.as_ref().map_or(Precision::F32, |h| h.precision)
    }

    /// Decoding reads `precision`'s weights from now on. F16 and Bf16 make 16-bit copies (half the f32
    /// matrices' memory again) from the current f32 weights; F32 drops them.
    pub fn set_precision(&mut self, precision: Precision) {
        self.half = match precision {
            Precision::F32 => None,
            Precision::F16 | Precision::Bf16 => Some(HalfWeights::from_model(self, precision)),
        };
    }

    pub fn with_precision(mut self, precision: Precision) -> Llama {
        self.set_precision(precision);
        self
    }

    /// Remakes the 16-bit copies after the f32 weights changed (nothing to do in f32).
    pub fn refresh_half(&mut self) {
        self.set_precision(self.precision());
    }

    /// Layer `li`'s matrices as the products read them: f32, with the half copy when there is one.
    pub(crate) fn mats(&self, li: usize) -> LayerMats<'_> {
        let (l, half) = (&self.layers[li], self.half.as_ref().map(|h| &h.layers[li]));
        LayerMats {
            wq: Mat { w: &l.wq, half: half.map(|h| h.wq.weights()) },
            wk: Mat { w: &l.wk, half: half.map(|h| h.wk.weights()) },
            wv: Mat { w: &l.wv, half: half.map(|h| h.wv.weights()) },
            wo: Mat { w: &l.wo, half: half.map(|h| h.wo.weights()) },
            w_gate: Mat { w: &l.w_gate, half: half.map(|h| h.w_gate.weights()) },
            w_up: Mat { w: &l.w_up, half: half.map(|h| h.w_up.weights()) },
            w_down: Mat { w: &l.w_down, half: half.map(|h| h.w_down.weights()) },
        }
    }

    /// The LM head as the products read it.
    pub(crate) fn head(&self) -> Mat<'_> {
        Mat { w: self.lm_head.as_deref().unwrap_or(&self.embed), half: self.half.as_ref().map(|h| h.head.weights()) }
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
        let mut out = vec![0.0; t * c.vocab];
        linear_set(x, t, c.hidden, &mut [(self.head(), c.vocab, &mut out)]);
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
        let rope_cs: Vec<(f32, f32)> = (0..t).flat_map(|i| rope_angles(hd, start + i, c.rope_theta)).collect();
        for (li, layer) in self.layers.iter().enumerate() {
            let m = self.mats(li);
            rms_norm(&x, &layer.attn_norm, c.eps, h, &mut normed);
            linear_set(&normed, t, h, &mut [(m.wq, h, &mut q), (m.wk, kvd, &mut k), (m.wv, kvd, &mut v)]);
            for (i, cs) in rope_cs.chunks_exact(hd / 2).enumerate() {
                rope_with(&mut q[i * h..(i + 1) * h], hd, cs);
                rope_with(&mut k[i * kvd..(i + 1) * kvd], hd, cs);
            }
            cache.k[li].extend_from_slice(&k);
            cache.v[li].extend_from_slice(&v);
            // Causal grouped-query attention over the cache, query rows in parallel.
            crate::batch::attend(&q, &cache.k[li], &cache.v[li], &mut attn, start, t, c.heads, group, hd, scale);
            linear_set(&attn, t, h, &mut [(m.wo, h, &mut proj)]);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            rms_norm(&x, &layer.ffn_norm, c.eps, h, &mut normed);
            linear_set(&normed, t, h, &mut [(m.w_gate, c.ffn, &mut gate), (m.w_up, c.ffn, &mut up)]);
            gate.iter_mut().zip(&up).for_each(|(g, u)| *g = *g / (1.0 + crate::cpu_ops::exp_f32(-*g)) * u);
            linear_set(&gate, t, c.ffn, &mut [(m.w_down, h, &mut proj)]);
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

/// A matrix `[out, in]` as the products read it: the f32 weights, and their 16-bit copy when the model has one
/// (decoding-sized products read that instead).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub w: &'a [f32],
    pub half: Option<Weights<'a>>,
}

/// One layer's matrices, see [`Llama::mats`].
pub(crate) struct LayerMats<'a> {
    pub wq: Mat<'a>,
    pub wk: Mat<'a>,
    pub wv: Mat<'a>,
    pub wo: Mat<'a>,
    pub w_gate: Mat<'a>,
    pub w_up: Mat<'a>,
    pub w_down: Mat<'a>,
}

/// Every `y = x · wᵀ` of `products` (`(matrix, out_dim, y)`, all reading the same `x` `[t, in_dim]`). Few rows go
/// through the `skinny` kernels in one parallel region, half-precision weights where the model has them; many
/// rows through the f32 sgemm, one product after another.
pub(crate) fn linear_set(x: &[f32], t: usize, in_dim: usize, products: &mut [(Mat<'_>, usize, &mut [f32])]) {
    if t <= crate::skinny::MAX_ROWS {
        let mut jobs: Vec<Linear<'_>> = products
            .iter_mut()
            .map(|(m, out_dim, y)| Linear { w: m.half.unwrap_or(Weights::F32(m.w)), out_dim: *out_dim, y })
            .collect();
        crate::skinny::linear_many(x, t, in_dim, &mut jobs);
        return;
    }
    for (m, out_dim, y) in products.iter_mut() {
        linear(x, t, m.w, in_dim, *out_dim, y);
    }
}

/// `y[t, out] = x[t, in] · w[out, in]ᵀ`.
pub fn linear(x: &[f32], t: usize, w: &[f32], in_dim: usize, out_dim: usize, y: &mut [f32]) {
    debug_assert_eq!(x.len(), t * in_dim);
    debug_assert_eq!(w.len(), out_dim * in_dim);
    // Decoding-sized inputs skip the sgemm, whose packing of the whole weight matrix costs more than the
    // arithmetic at a few rows (10x at one row on SmolLM2's layers).
    if t <= crate::skinny::MAX_ROWS {
        crate::skinny::linear_few_rows(x, t, w, in_dim, out_dim, y);
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

/// Rotates adjacent pairs `(2i, 2i+1)` of each head by `pos · θ^(-2i/d)` (the GGUF llama layout). The angles
/// are computed once for all heads of the row, exactly as `cpu_ops::RopeTable` computes them.
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, theta: f32) {
    let cs: Vec<(f32, f32)> = rope_angles(head_dim, pos, theta).collect();
    rope_with(x, head_dim, &cs);
}

/// `(sin, cos)` of position `pos`'s angle for each pair `i < head_dim / 2` (computed once per row and reused by
/// every layer).
pub fn rope_angles(head_dim: usize, pos: usize, theta: f32) -> impl Iterator<Item = (f32, f32)> {
    (0..head_dim / 2).map(move |i| {
        let freq = theta.powf(-((2 * i) as f32) / head_dim as f32);
        (pos as f32 * freq).sin_cos()
    })
}

/// [`rope`] with the angles from [`rope_angles`].
pub fn rope_with(x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &(sin, cos)) in head.chunks_exact_mut(2).zip(cs) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
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
    fn half_decoding_stays_close_to_f32_and_can_be_dropped() {
        let config = LlamaConfig {
            vocab: 300,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 96,
            rope_theta: 10_000.0,
            eps: 1e-5,
            context: 64,
        };
        let mut model = crate::checkpoint::random_model(config, true, 11);
        let prompt = [5u32, 17, 42, 99, 123, 7];
        let run = |m: &Llama| {
            let mut cache = m.new_cache();
            let mut out = m.forward_last(&prompt, &mut cache).unwrap();
            for tok in [3u32, 250, 77] {
                out.extend(m.forward_last(&[tok], &mut cache).unwrap());
            }
            out
        };
        let exact = run(&model);
        model.set_precision(Precision::F16);
        assert_eq!(model.precision(), Precision::F16);
        let half = run(&model);
        let scale = exact.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let diff = exact.iter().zip(&half).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        // Every step here has at most `skinny::MAX_ROWS` rows, so all read the f16 copies: close, not equal.
        assert!(diff > 0.0 && diff < 1e-2 * scale, "f16 logits differ by {diff} (scale {scale})");
        // bf16 rounds weights and inputs to 8 mantissa bits: further from f32 than f16, still close.
        model.set_precision(Precision::Bf16);
        assert_eq!(model.precision(), Precision::Bf16);
        let brain = run(&model);
        let bdiff = exact.iter().zip(&brain).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(bdiff > diff && bdiff < 5e-2 * scale, "bf16 logits differ by {bdiff} (scale {scale})");
        model.refresh_half();
        assert_eq!(model.precision(), Precision::Bf16, "a refresh keeps the precision");
        model.set_precision(Precision::F32);
        assert!(model.half.is_none());
        assert_eq!(run(&model), exact);
        assert_eq!("F16".parse::<Precision>(), Ok(Precision::F16));
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("int4".parse::<Precision>().is_err());
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
