//! Training a `Llama` on the CPU backend: the parameters live in one flat buffer with per-tensor offsets (llm.c's
//! layout), beside flat gradient and AdamW moment buffers of the same layout, so that the optimiser, the gradient
//! norm and a later wgpu backend see one contiguous tensor each. A step takes a batch of token sequences (ragged:
//! laid end to end, no padding), a loss mask, and either next-token targets (SFT cross-entropy) or per-token
//! advantages (REINFORCE-style policy gradient, or GRPO's clipped ratio against old log-probs); it runs forward,
//! backward over any number of micro-batches (gradients add up exactly: the token-mean uses the whole batch's
//! token count), clips the global gradient norm, and takes an AdamW step.
//!
//! Memory: per layer only the residual stream, q/k/v, the attention output and its log-sum-exp, and the FFN
//! gate/up activations are kept; norms' outputs and the SwiGLU product are recomputed in the backward, attention
//! probabilities are recomputed from the log-sum-exp, and the LM head runs in vocab chunks over only the rows
//! the loss uses.

use std::ops::Range;

use crate::cpu_ops::{self, AdamW, AttnShape, GrpoClip, HeadStats, RopeTable};
use crate::model::{Layer, Llama, LlamaConfig, ModelError};

/// Classes per LM-head chunk: `[tokens, 4096]` f32 is 8 MiB at 512 tokens.
pub const DEFAULT_HEAD_CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("empty batch: there are no sequences to train on")]
    EmptyBatch,
    #[error("sequence {seq} has no tokens")]
    EmptySequence { seq: usize },
    #[error("sequence {seq}: `{what}` has {got} entries but the sequence has {want} tokens")]
    LengthMismatch { seq: usize, what: &'static str, got: usize, want: usize },
    #[error("sequence {seq}, position {pos}: token id {id} is outside the vocabulary of {vocab}")]
    BadToken { seq: usize, pos: usize, id: u32, vocab: usize },
    #[error("sequence {seq} has {len} tokens, past the model's context of {context}")]
    ContextOverflow { seq: usize, len: usize, context: usize },
    #[error("sequence {seq}: the loss mask is set on the first token, which no position predicts")]
    FirstTokenMasked { seq: usize },
    #[error("sequence {seq}: the {objective} objective needs `{what}`, which is missing")]
    MissingField { seq: usize, objective: &'static str, what: &'static str },
    #[error("sequence {seq}, position {pos}: `{what}` is not finite ({value})")]
    NonFinite { seq: usize, pos: usize, what: &'static str, value: f32 },
    #[error("no token of the batch is marked for the loss")]
    NothingMasked,
    #[error("the weights belong to a different model: {0}")]
    ConfigMismatch(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

// ---------------------------------------------------------------------------------------------------------------
// Layout

/// Where each tensor of one decoder block lives in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSlots {
    pub attn_norm: Range<usize>,
    pub wq: Range<usize>,
    pub wk: Range<usize>,
    pub wv: Range<usize>,
    pub wo: Range<usize>,
    pub ffn_norm: Range<usize>,
    pub w_gate: Range<usize>,
    pub w_up: Range<usize>,
    pub w_down: Range<usize>,
}

/// Offsets of every tensor in the flat parameter (and gradient, and moment) buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    pub embed: Range<usize>,
    /// `None` when the LM head is tied to the embedding.
    pub lm_head: Option<Range<usize>>,
    pub norm: Range<usize>,
    pub layers: Vec<LayerSlots>,
    pub total: usize,
}

impl ParamLayout {
    pub fn new(c: &LlamaConfig, tied: bool) -> ParamLayout {
        let mut at = 0;
        let mut take = |n: usize| {
            at += n;
            at - n..at
        };
        let (h, kv, f) = (c.hidden, c.kv_dim(), c.ffn);
        let embed = take(c.vocab * h);
        let lm_head = if tied { None } else { Some(take(c.vocab * h)) };
        let norm = take(h);
        let layers = (0..c.layers)
            .map(|_| LayerSlots {
                attn_norm: take(h),
                wq: take(h * h),
                wk: take(kv * h),
                wv: take(kv * h),
                wo: take(h * h),
                ffn_norm: take(h),
                w_gate: take(f * h),
                w_up: take(f * h),
                w_down: take(h * f),
            })
            .collect();
        ParamLayout { embed, lm_head, norm, layers, total: at }
    }

    /// Every tensor with its GGUF name, its range, and whether weight decay applies (matrices yes, norms no).
    pub fn tensors(&self) -> Vec<(String, Range<usize>, bool)> {
        let mut out = vec![("token_embd.weight".to_string(), self.embed.clone(), true)];
        if let Some(r) = &self.lm_head {
            out.push(("output.weight".into(), r.clone(), true));
        }
        out.push(("output_norm.weight".into(), self.norm.clone(), false));
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            out.extend([
                (n("attn_norm"), l.attn_norm.clone(), false),
                (n("attn_q"), l.wq.clone(), true),
                (n("attn_k"), l.wk.clone(), true),
                (n("attn_v"), l.wv.clone(), true),
                (n("attn_output"), l.wo.clone(), true),
                (n("ffn_norm"), l.ffn_norm.clone(), false),
                (n("ffn_gate"), l.w_gate.clone(), true),
                (n("ffn_up"), l.w_up.clone(), true),
                (n("ffn_down"), l.w_down.clone(), true),
            ]);
        }
        out
    }

    fn head(&self) -> Range<usize> {
        self.lm_head.clone().unwrap_or(self.embed.clone())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Batches and objectives

/// One training sequence. Per-token arrays have one entry per token: entry `i` concerns token `i` as predicted
/// from position `i - 1`, so entry 0 is never used and its mask must be off.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainSequence {
    pub tokens: Vec<u32>,
    /// Whether token `i` counts in the loss (SFT: the assistant's tokens; RL: the policy's sampled tokens).
    pub mask: Vec<bool>,
    /// Per-token advantage (GRPO) or weight (policy gradient).
    pub advantages: Option<Vec<f32>>,
    /// Per-token log-probs under the policy that sampled the tokens (GRPO's ratio denominator).
    pub old_logp: Option<Vec<f32>>,
}

impl TrainSequence {
    /// An SFT sequence: the loss covers tokens `prompt_len..`.
    pub fn sft(tokens: Vec<u32>, prompt_len: usize) -> TrainSequence {
        let mask = (0..tokens.len()).map(|i| i >= prompt_len.max(1)).collect();
        TrainSequence { tokens, mask, advantages: None, old_logp: None }
    }
}

/// What the loss is, per masked token, averaged over the masked tokens of the whole batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// Cross-entropy `-log p(token)`.
    Sft,
    /// `-A · log p(token)` (REINFORCE with per-token weights).
    PolicyGradient,
    /// `-min(r·A, clip(r)·A)` with `r = exp(logp - old_logp)`, dual-clipped for `A < 0`.
    Grpo(GrpoClip),
}

impl Objective {
    fn name(&self) -> &'static str {
        match self {
            Objective::Sft => "SFT",
            Objective::PolicyGradient => "policy-gradient",
            Objective::Grpo(_) => "GRPO",
        }
    }
}

/// One optimiser step: its micro-batches (run one after another, gradients accumulated), the objective and the
/// optimiser settings.
#[derive(Clone, Debug)]
pub struct TrainStep<'a> {
    pub micro_batches: Vec<&'a [TrainSequence]>,
    pub objective: Objective,
    pub adamw: AdamW,
    /// Clip the global gradient norm to this before the update.
    pub max_grad_norm: Option<f32>,
}

/// What a step (or a gradient computation) reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// The masked token-mean loss of the whole batch.
    pub loss: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
    /// Masked tokens (those the loss averages over).
    pub tokens: usize,
    /// All tokens run through the model.
    pub tokens_processed: usize,
    /// Mean entropy of the predicted distributions at the masked tokens.
    pub entropy: f32,
    /// GRPO: masked tokens whose surrogate was clipped.
    pub clipped: usize,
}

pub(crate) fn validate(seqs: &[TrainSequence], objective: &Objective, c: &LlamaConfig) -> Result<usize, TrainError> {
    if seqs.is_empty() {
        return Err(TrainError::EmptyBatch);
    }
    let mut masked = 0;
    for (seq, s) in seqs.iter().enumerate() {
        let want = s.tokens.len();
        if want == 0 {
            return Err(TrainError::EmptySequence { seq });
        }
        if want > c.context {
            return Err(TrainError::ContextOverflow { seq, len: want, context: c.context });
        }
        if let Some((pos, &id)) = s.tokens.iter().enumerate().find(|&(_, &id)| id as usize >= c.vocab) {
            return Err(TrainError::BadToken { seq, pos, id, vocab: c.vocab });
        }
        if s.mask.len() != want {
            return Err(TrainError::LengthMismatch { seq, what: "mask", got: s.mask.len(), want });
        }
        if s.mask[0] {
            return Err(TrainError::FirstTokenMasked { seq });
        }
        let mut fields: Vec<(&'static str, &Option<Vec<f32>>)> = Vec::new();
        if !matches!(objective, Objective::Sft) {
            fields.push(("advantages", &s.advantages));
        }
        if matches!(objective, Objective::Grpo(_)) {
            fields.push(("old_logp", &s.old_logp));
        }
        for (what, field) in fields {
            let Some(values) = field else {
                return Err(TrainError::MissingField { seq, objective: objective.name(), what });
            };
            if values.len() != want {
                return Err(TrainError::LengthMismatch { seq, what, got: values.len(), want });
            }
            if let Some((pos, &value)) = values.iter().enumerate().find(|&(i, v)| s.mask[i] && !v.is_finite()) {
                return Err(TrainError::NonFinite { seq, pos, what, value });
            }
        }
        masked += s.mask.iter().filter(|&&m| m).count();
    }
    Ok(masked)
}

// ---------------------------------------------------------------------------------------------------------------
// The model

/// A `Llama` in training form: flat parameters, gradients and AdamW moments.
pub struct TrainableLlama {
    pub config: LlamaConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    /// AdamW steps taken.
    pub step: u64,
    /// LM-head classes per chunk.
    pub head_chunk: usize,
    rope: RopeTable,
}

/// What the forward keeps for the backward, per layer.
struct LayerActs {
    x: Vec<f32>,
    rstd1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    rstd2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

struct Acts {
    layers: Vec<LayerActs>,
    /// The residual stream after the last block, its final-norm rstd, and the normed output.
    x_last: Vec<f32>,
    rstd_f: Vec<f32>,
    xf: Vec<f32>,
}

/// The flattened batch: ids, positions within their sequence, and lengths.
struct Flat {
    ids: Vec<u32>,
    positions: Vec<usize>,
    seq_lens: Vec<usize>,
}

impl Flat {
    fn new<'a>(seqs: impl Iterator<Item = &'a [u32]>) -> Flat {
        let mut f = Flat { ids: Vec::new(), positions: Vec::new(), seq_lens: Vec::new() };
        for s in seqs {
            f.ids.extend_from_slice(s);
            f.positions.extend(0..s.len());
            f.seq_lens.push(s.len());
        }
        f
    }
}

impl TrainableLlama {
    /// Copies `model`'s weights into the flat layout (tied when the model has no separate LM head).
    pub fn from_llama(model: &Llama) -> Result<TrainableLlama, TrainError> {
        let c = model.config.clone();
        c.validate()?;
        let layout = ParamLayout::new(&c, model.lm_head.is_none());
        let mut params = vec![0.0f32; layout.total];
        let mut put = |r: &Range<usize>, name: &str, v: &[f32]| -> Result<(), TrainError> {
            if v.len() != r.len() {
                return Err(ModelError::Shape { name: name.into(), got: v.len(), want: r.len() }.into());
            }
            params[r.clone()].copy_from_slice(v);
            Ok(())
        };
        put(&layout.embed, "token_embd.weight", &model.embed)?;
        if let (Some(r), Some(w)) = (&layout.lm_head, &model.lm_head) {
            put(r, "output.weight", w)?;
        }
        put(&layout.norm, "output_norm.weight", &model.norm)?;
        if model.layers.len() != c.layers {
            return Err(TrainError::ConfigMismatch(format!("{} layers, config says {}", model.layers.len(), c.layers)));
        }
        for (s, l) in layout.layers.iter().zip(&model.layers) {
            put(&s.attn_norm, "attn_norm", &l.attn_norm)?;
            put(&s.wq, "attn_q", &l.wq)?;
            put(&s.wk, "attn_k", &l.wk)?;
            put(&s.wv, "attn_v", &l.wv)?;
            put(&s.wo, "attn_output", &l.wo)?;
            put(&s.ffn_norm, "ffn_norm", &l.ffn_norm)?;
            put(&s.w_gate, "ffn_gate", &l.w_gate)?;
            put(&s.w_up, "ffn_up", &l.w_up)?;
            put(&s.w_down, "ffn_down", &l.w_down)?;
        }
        let total = layout.total;
        Ok(TrainableLlama {
            rope: RopeTable::new(c.head_dim(), c.rope_theta, c.context),
            config: c,
            layout,
            params,
            grads: vec![0.0; total],
            adam_m: vec![0.0; total],
            adam_v: vec![0.0; total],
            step: 0,
            head_chunk: DEFAULT_HEAD_CHUNK,
        })
    }

    /// A seeded random model of `config` (for tests).
    pub fn random(config: &LlamaConfig, seed: u64, tied: bool) -> Result<TrainableLlama, TrainError> {
        TrainableLlama::from_llama(&random_llama(config, seed, tied)?)
    }

    /// The trained weights as an inference `Llama` (for generation).
    pub fn to_llama(&self) -> Llama {
        let p = |r: &Range<usize>| self.params[r.clone()].to_vec();
        Llama {
            config: self.config.clone(),
            embed: p(&self.layout.embed),
            layers: self
                .layout
                .layers
                .iter()
                .map(|s| Layer {
                    attn_norm: p(&s.attn_norm),
                    wq: p(&s.wq),
                    wk: p(&s.wk),
                    wv: p(&s.wv),
                    wo: p(&s.wo),
                    ffn_norm: p(&s.ffn_norm),
                    w_gate: p(&s.w_gate),
                    w_up: p(&s.w_up),
                    w_down: p(&s.w_down),
                })
                .collect(),
            norm: p(&self.layout.norm),
            lm_head: self.layout.lm_head.as_ref().map(p),
            half: None,
        }
    }

    /// Copies the trained weights into an existing `Llama` of the same shape, without reallocating its f32
    /// weights (its half-precision copies, if any, are remade).
    pub fn write_into(&self, model: &mut Llama) -> Result<(), TrainError> {
        if model.config != self.config || model.lm_head.is_none() != self.layout.lm_head.is_none() {
            return Err(TrainError::ConfigMismatch(format!(
                "target {:?} (tied: {}), trained {:?} (tied: {})",
                model.config,
                model.lm_head.is_none(),
                self.config,
                self.layout.lm_head.is_none()
            )));
        }
        let p = |r: &Range<usize>| &self.params[r.clone()];
        model.embed.copy_from_slice(p(&self.layout.embed));
        if let (Some(dst), Some(r)) = (model.lm_head.as_mut(), &self.layout.lm_head) {
            dst.copy_from_slice(p(r));
        }
        model.norm.copy_from_slice(p(&self.layout.norm));
        for (l, s) in model.layers.iter_mut().zip(&self.layout.layers) {
            l.attn_norm.copy_from_slice(p(&s.attn_norm));
            l.wq.copy_from_slice(p(&s.wq));
            l.wk.copy_from_slice(p(&s.wk));
            l.wv.copy_from_slice(p(&s.wv));
            l.wo.copy_from_slice(p(&s.wo));
            l.ffn_norm.copy_from_slice(p(&s.ffn_norm));
            l.w_gate.copy_from_slice(p(&s.w_gate));
            l.w_up.copy_from_slice(p(&s.w_up));
            l.w_down.copy_from_slice(p(&s.w_down));
        }
        // Decoding in f16 must read the new weights too.
        model.refresh_half();
        Ok(())
    }

    fn check_tokens(&self, seqs: &[&[u32]]) -> Result<(), TrainError> {
        let c = &self.config;
        if seqs.is_empty() {
            return Err(TrainError::EmptyBatch);
        }
        for (seq, s) in seqs.iter().enumerate() {
            if s.is_empty() {
                return Err(TrainError::EmptySequence { seq });
            }
            if s.len() > c.context {
                return Err(TrainError::ContextOverflow { seq, len: s.len(), context: c.context });
            }
            if let Some((pos, &id)) = s.iter().enumerate().find(|&(_, &id)| id as usize >= c.vocab) {
                return Err(TrainError::BadToken { seq, pos, id, vocab: c.vocab });
            }
        }
        Ok(())
    }

    /// Full logits `[tokens, vocab]` of one sequence from the flat weights (a check against `Llama::forward`;
    /// training never materialises them).
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, TrainError> {
        self.check_tokens(&[tokens])?;
        let acts = self.forward(&Flat::new(std::iter::once(tokens)), false);
        let c = &self.config;
        let mut out = vec![0.0f32; tokens.len() * c.vocab];
        cpu_ops::linear_fwd(&acts.xf, tokens.len(), &self.params[self.layout.head()], c.hidden, c.vocab, &mut out);
        Ok(out)
    }

    /// Per-token log-probs of each sequence under the current weights, aligned like `TrainSequence` (entry `i`
    /// is `log p(token i | tokens < i)`; entry 0 is 0). This is what GRPO stores as `old_logp`.
    pub fn token_logprobs(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, TrainError> {
        self.check_tokens(seqs)?;
        let flat = Flat::new(seqs.iter().copied());
        let acts = self.forward(&flat, false);
        let (rows, targets): (Vec<usize>, Vec<u32>) = row_targets(seqs.iter().map(|s| (*s, None)));
        let stats = self.head_fwd(&acts.xf, &rows, &targets);
        let mut out: Vec<Vec<f32>> = seqs.iter().map(|s| vec![0.0; s.len()]).collect();
        let mut k = 0;
        for o in out.iter_mut() {
            for v in o.iter_mut().skip(1) {
                *v = stats.logp[k];
                k += 1;
            }
        }
        Ok(out)
    }

    fn gather_rows(&self, x: &[f32], rows: &[usize]) -> Vec<f32> {
        let h = self.config.hidden;
        rows.iter().flat_map(|&r| x[r * h..(r + 1) * h].iter().copied()).collect()
    }

    fn head_fwd(&self, xf: &[f32], rows: &[usize], targets: &[u32]) -> HeadStats {
        let c = &self.config;
        let xs = self.gather_rows(xf, rows);
        let w = &self.params[self.layout.head()];
        cpu_ops::lm_head_fwd(&xs, rows.len(), c.hidden, w, c.vocab, targets, self.head_chunk)
    }

    /// The trunk's forward; `keep` keeps each layer's activations for a backward (inference drops them).
    fn forward(&self, flat: &Flat, keep: bool) -> Acts {
        let c = &self.config;
        let (n, h, kvd, f) = (flat.ids.len(), c.hidden, c.kv_dim(), c.ffn);
        let shape =
            AttnShape { seq_lens: &flat.seq_lens, heads: c.heads, kv_heads: c.kv_heads, head_dim: c.head_dim() };
        let p = &self.params;
        let mut x = vec![0.0f32; n * h];
        cpu_ops::embedding_fwd(&flat.ids, &p[self.layout.embed.clone()], h, &mut x);
        let mut normed = vec![0.0f32; n * h];
        let mut proj = vec![0.0f32; n * h];
        let mut act = vec![0.0f32; n * f];
        let mut layers = Vec::with_capacity(c.layers);
        for s in &self.layout.layers {
            let mut a = LayerActs {
                x: x.clone(),
                rstd1: vec![0.0; n],
                q: vec![0.0; n * h],
                k: vec![0.0; n * kvd],
                v: vec![0.0; n * kvd],
                att: vec![0.0; n * h],
                lse: vec![0.0; n * c.heads],
                x_mid: Vec::new(),
                rstd2: vec![0.0; n],
                gate: vec![0.0; n * f],
                up: vec![0.0; n * f],
            };
            cpu_ops::rmsnorm_fwd(&x, &p[s.attn_norm.clone()], c.eps, h, &mut normed, &mut a.rstd1);
            cpu_ops::linear_fwd(&normed, n, &p[s.wq.clone()], h, h, &mut a.q);
            cpu_ops::linear_fwd(&normed, n, &p[s.wk.clone()], h, kvd, &mut a.k);
            cpu_ops::linear_fwd(&normed, n, &p[s.wv.clone()], h, kvd, &mut a.v);
            self.rope.fwd(&mut a.q, &flat.positions);
            self.rope.fwd(&mut a.k, &flat.positions);
            cpu_ops::attention_fwd(shape, &a.q, &a.k, &a.v, &mut a.att, &mut a.lse);
            cpu_ops::linear_fwd(&a.att, n, &p[s.wo.clone()], h, h, &mut proj);
            cpu_ops::add_inplace(&mut x, &proj);
            a.x_mid = x.clone();
            cpu_ops::rmsnorm_fwd(&x, &p[s.ffn_norm.clone()], c.eps, h, &mut normed, &mut a.rstd2);
            cpu_ops::linear_fwd(&normed, n, &p[s.w_gate.clone()], h, f, &mut a.gate);
            cpu_ops::linear_fwd(&normed, n, &p[s.w_up.clone()], h, f, &mut a.up);
            cpu_ops::swiglu_fwd(&a.gate, &a.up, &mut act);
            cpu_ops::linear_fwd(&act, n, &p[s.w_down.clone()], f, h, &mut proj);
            cpu_ops::add_inplace(&mut x, &proj);
            if keep {
                layers.push(a);
            }
        }
        let mut rstd_f = vec![0.0; n];
        let mut xf = vec![0.0; n * h];
        cpu_ops::rmsnorm_fwd(&x, &p[self.layout.norm.clone()], c.eps, h, &mut xf, &mut rstd_f);
        Acts { layers, x_last: x, rstd_f, xf }
    }

    /// Backward from `dxf` (the gradient on the final normed hidden states) into `self.grads` (accumulating).
    fn backward(&mut self, flat: &Flat, acts: Acts, dxf: &[f32]) {
        let c = self.config.clone();
        let (n, h, kvd, f) = (flat.ids.len(), c.hidden, c.kv_dim(), c.ffn);
        let shape =
            AttnShape { seq_lens: &flat.seq_lens, heads: c.heads, kv_heads: c.kv_heads, head_dim: c.head_dim() };
        let (p, g, layout) = (&self.params, &mut self.grads, &self.layout);
        let mut dx = vec![0.0f32; n * h];
        cpu_ops::rmsnorm_bwd(
            dxf,
            &acts.x_last,
            &p[layout.norm.clone()],
            &acts.rstd_f,
            h,
            &mut dx,
            &mut g[layout.norm.clone()],
        );
        let mut normed = vec![0.0f32; n * h];
        let mut scratch_rstd = vec![0.0f32; n];
        let mut dnormed = vec![0.0f32; n * h];
        let mut act = vec![0.0f32; n * f];
        let mut dact = vec![0.0f32; n * f];
        let mut dgate = vec![0.0f32; n * f];
        let mut dup = vec![0.0f32; n * f];
        let mut datt = vec![0.0f32; n * h];
        let mut dq = vec![0.0f32; n * h];
        let mut dk = vec![0.0f32; n * kvd];
        let mut dv = vec![0.0f32; n * kvd];
        for (s, a) in layout.layers.iter().zip(acts.layers).rev() {
            // FFN block: x = x_mid + down(swiglu(gate(n2), up(n2))), n2 = rmsnorm(x_mid).
            cpu_ops::rmsnorm_fwd(&a.x_mid, &p[s.ffn_norm.clone()], c.eps, h, &mut normed, &mut scratch_rstd);
            cpu_ops::swiglu_fwd(&a.gate, &a.up, &mut act);
            dact.fill(0.0);
            cpu_ops::linear_bwd(&dx, &act, n, &p[s.w_down.clone()], f, h, &mut dact, &mut g[s.w_down.clone()]);
            cpu_ops::swiglu_bwd(&dact, &a.gate, &a.up, &mut dgate, &mut dup);
            dnormed.fill(0.0);
            cpu_ops::linear_bwd(&dgate, &normed, n, &p[s.w_gate.clone()], h, f, &mut dnormed, &mut g[s.w_gate.clone()]);
            cpu_ops::linear_bwd(&dup, &normed, n, &p[s.w_up.clone()], h, f, &mut dnormed, &mut g[s.w_up.clone()]);
            cpu_ops::rmsnorm_bwd(
                &dnormed,
                &a.x_mid,
                &p[s.ffn_norm.clone()],
                &a.rstd2,
                h,
                &mut dx,
                &mut g[s.ffn_norm.clone()],
            );
            // Attention block: x_mid = x + wo(attn(rope(q(n1)), rope(k(n1)), v(n1))), n1 = rmsnorm(x).
            datt.fill(0.0);
            cpu_ops::linear_bwd(&dx, &a.att, n, &p[s.wo.clone()], h, h, &mut datt, &mut g[s.wo.clone()]);
            cpu_ops::attention_bwd(shape, &a.q, &a.k, &a.v, &a.att, &a.lse, &datt, &mut dq, &mut dk, &mut dv);
            self.rope.bwd(&mut dq, &flat.positions);
            self.rope.bwd(&mut dk, &flat.positions);
            cpu_ops::rmsnorm_fwd(&a.x, &p[s.attn_norm.clone()], c.eps, h, &mut normed, &mut scratch_rstd);
            dnormed.fill(0.0);
            cpu_ops::linear_bwd(&dq, &normed, n, &p[s.wq.clone()], h, h, &mut dnormed, &mut g[s.wq.clone()]);
            cpu_ops::linear_bwd(&dk, &normed, n, &p[s.wk.clone()], h, kvd, &mut dnormed, &mut g[s.wk.clone()]);
            cpu_ops::linear_bwd(&dv, &normed, n, &p[s.wv.clone()], h, kvd, &mut dnormed, &mut g[s.wv.clone()]);
            cpu_ops::rmsnorm_bwd(
                &dnormed,
                &a.x,
                &p[s.attn_norm.clone()],
                &a.rstd1,
                h,
                &mut dx,
                &mut g[s.attn_norm.clone()],
            );
        }
        // With tied weights this adds to the LM head's contribution already in the same rows.
        cpu_ops::embedding_bwd(&flat.ids, &dx, h, &mut g[layout.embed.clone()]);
    }

    /// Forward and backward of one micro-batch, adding its gradient (already divided by the whole batch's
    /// `denom` masked tokens) to `self.grads`. Returns its share of the stats (loss summed, entropy summed).
    fn accumulate(&mut self, seqs: &[TrainSequence], objective: &Objective, denom: f32) -> StepStats {
        let c = self.config.clone();
        let h = c.hidden;
        let flat = Flat::new(seqs.iter().map(|s| s.tokens.as_slice()));
        let acts = self.forward(&flat, true);
        // The rows the loss reads: position i-1 predicts token i where mask[i].
        let (mut rows, mut targets, mut adv, mut old) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        for s in seqs {
            for i in 1..s.tokens.len() {
                if s.mask[i] {
                    rows.push(start + i - 1);
                    targets.push(s.tokens[i]);
                    adv.push(s.advantages.as_ref().map_or(0.0, |a| a[i]));
                    old.push(s.old_logp.as_ref().map_or(0.0, |o| o[i]));
                }
            }
            start += s.tokens.len();
        }
        let mut stats = StepStats { tokens_processed: flat.ids.len(), ..StepStats::default() };
        let mut dxf = vec![0.0f32; flat.ids.len() * h];
        if !rows.is_empty() {
            let head = self.head_fwd(&acts.xf, &rows, &targets);
            let m = rows.len();
            let mut dlogp = vec![0.0f32; m];
            let loss_sum: f64 = match objective {
                Objective::Sft => {
                    dlogp.fill(-1.0 / denom);
                    -head.logp.iter().map(|&l| l as f64).sum::<f64>()
                }
                Objective::PolicyGradient => {
                    dlogp.iter_mut().zip(&adv).for_each(|(d, a)| *d = -a / denom);
                    -head.logp.iter().zip(&adv).map(|(&l, &a)| (l * a) as f64).sum::<f64>()
                }
                Objective::Grpo(clip) => {
                    let g = cpu_ops::grpo_loss(&head.logp, &old, &adv, &vec![true; m], clip, denom, &mut dlogp);
                    stats.clipped = g.clipped;
                    g.loss as f64 * denom as f64
                }
            };
            stats.loss = (loss_sum / denom as f64) as f32;
            stats.tokens = m;
            stats.entropy = head.entropy.iter().map(|&e| e as f64).sum::<f64>() as f32;
            let xs = self.gather_rows(&acts.xf, &rows);
            let mut dxs = vec![0.0f32; m * h];
            let hr = self.layout.head();
            let (p, g) = (&self.params, &mut self.grads);
            cpu_ops::lm_head_bwd(
                &xs,
                m,
                h,
                &p[hr.clone()],
                c.vocab,
                &targets,
                self.head_chunk,
                &head,
                &dlogp,
                None,
                &mut dxs,
                &mut g[hr],
            );
            for (&r, d) in rows.iter().zip(dxs.chunks_exact(h)) {
                dxf[r * h..(r + 1) * h].copy_from_slice(d);
            }
        }
        self.backward(&flat, acts, &dxf);
        stats
    }

    /// Zeroes the gradients, then runs forward and backward over every micro-batch, leaving the gradient of the
    /// batch's masked token-mean loss in `self.grads`. No update.
    pub fn loss_and_grad(
        &mut self,
        micro_batches: &[&[TrainSequence]],
        objective: &Objective,
    ) -> Result<StepStats, TrainError> {
        if micro_batches.is_empty() {
            return Err(TrainError::EmptyBatch);
        }
        let mut denom = 0;
        for mb in micro_batches {
            denom += validate(mb, objective, &self.config)?;
        }
        if denom == 0 {
            return Err(TrainError::NothingMasked);
        }
        self.grads.fill(0.0);
        let mut total = StepStats::default();
        let mut entropy = 0.0f64;
        for mb in micro_batches {
            let s = self.accumulate(mb, objective, denom as f32);
            total.loss += s.loss;
            total.tokens += s.tokens;
            total.tokens_processed += s.tokens_processed;
            total.clipped += s.clipped;
            entropy += s.entropy as f64;
        }
        total.entropy = (entropy / denom as f64) as f32;
        total.grad_norm = cpu_ops::grad_norm(&self.grads);
        Ok(total)
    }

    /// One optimiser step: gradients of all micro-batches, global-norm clipping, AdamW (weight decay on the
    /// matrices only, not on the norms).
    pub fn train_step(&mut self, step: &TrainStep) -> Result<StepStats, TrainError> {
        let stats = self.loss_and_grad(&step.micro_batches, &step.objective)?;
        if let Some(max) = step.max_grad_norm {
            cpu_ops::clip_grad_norm(&mut self.grads, max);
        }
        self.step += 1;
        for (_, r, decay) in self.layout.tensors() {
            let wd = if decay { step.adamw.weight_decay } else { 0.0 };
            cpu_ops::adamw_step(
                &mut self.params[r.clone()],
                &self.grads[r.clone()],
                &mut self.adam_m[r.clone()],
                &mut self.adam_v[r],
                self.step,
                &step.adamw,
                wd,
            );
        }
        Ok(stats)
    }
}

/// Rows (positions i-1) and targets (token i) for every token after the first, or for the masked ones.
fn row_targets<'a>(seqs: impl Iterator<Item = (&'a [u32], Option<&'a [bool]>)>) -> (Vec<usize>, Vec<u32>) {
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    let mut start = 0;
    for (toks, mask) in seqs {
        for i in 1..toks.len() {
            if mask.is_none_or(|m| m[i]) {
                rows.push(start + i - 1);
                targets.push(toks[i]);
            }
        }
        start += toks.len();
    }
    (rows, targets)
}

// ---------------------------------------------------------------------------------------------------------------
// Random models for tests

/// A small config for tests: 2 layers, hidden 32, 4 heads sharing 2 kv heads, vocab 64.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab: 64,
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        ffn: 48,
        rope_theta: 10_000.0,
        eps: 1e-5,
        context: 64,
    }
}

/// A seeded random `Llama`: matrices uniform with variance `1/fan_in`, embeddings uniform in ±0.5, norm weights
/// near 1.
pub fn random_llama(config: &LlamaConfig, seed: u64, tied: bool) -> Result<Llama, TrainError> {
    config.validate()?;
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let mut uniform =
        |n: usize, scale: f64, offset: f64| -> Vec<f32> { (0..n).map(|_| (offset + next() * scale) as f32).collect() };
    let (h, kv, f, v) = (config.hidden, config.kv_dim(), config.ffn, config.vocab);
    let w = |fan_in: usize| (3.0 / fan_in as f64).sqrt();
    let embed = uniform(v * h, 0.5, 0.0);
    let lm_head = if tied { None } else { Some(uniform(v * h, w(h), 0.0)) };
    let layers = (0..config.layers)
        .map(|_| Layer {
            attn_norm: uniform(h, 0.1, 1.0),
            wq: uniform(h * h, w(h), 0.0),
            wk: uniform(kv * h, w(h), 0.0),
            wv: uniform(kv * h, w(h), 0.0),
            wo: uniform(h * h, w(h), 0.0),
            ffn_norm: uniform(h, 0.1, 1.0),
            w_gate: uniform(f * h, w(h), 0.0),
            w_up: uniform(f * h, w(h), 0.0),
            w_down: uniform(h * f, w(f), 0.0),
        })
        .collect();
    let norm = uniform(h, 0.1, 1.0);
    Ok(Llama { config: config.clone(), embed, layers, norm, lm_head, half: None })
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
