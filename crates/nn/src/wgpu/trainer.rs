//! A whole training step on the wgpu backend: the `TrainableLlama` step (forward keeping the same activations,
//! chunked LM head over the loss rows, backward, global-norm clipping, AdamW) recorded as kernels, submitted a few
//! layers at a time, the update recorded before any statistic is read back. Parameters, gradients and AdamW moments live on the device,
//! one buffer per tensor of the `ParamLayout`; the embedding and the LM head are split by vocabulary rows into
//! buffers of at most one storage binding (128 MiB), as the inference forward splits them. Only the per-row loss
//! statistics and the gradient norm are read back.
//!
//! It follows `train.rs` op for op, so its losses and weights track the CPU trainer's to float rounding, which
//! `tests/wgpu_trainer.rs` checks over 20 steps.

use std::ops::Range;

use super::train_ops::HeadPart;
use super::{Batch, Device, Matrix, Tensor, WgpuError, WgpuLlama};
use crate::model::LlamaConfig;
use crate::train::{Objective, ParamLayout, StepStats, TrainSequence, TrainStep, TrainableLlama, validate};

/// Layers recorded between submissions: the GPU starts on them while the host records the rest (as the inference
/// forward does).
const LAYERS_PER_SUBMIT: usize = 4;

/// One parameter tensor: its place in the flat layout, and its rows on the device in one or more parts.
struct Param {
    range: Range<usize>,
    decay: bool,
    cols: usize,
    parts: Vec<Part>,
}

/// Rows `row0..row0 + rows` of a parameter with their gradient and AdamW moments.
struct Part {
    row0: usize,
    rows: usize,
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
}

/// What the forward keeps for the backward, per layer (as `train.rs`).
struct LayerActs {
    x: Tensor,
    rstd1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    att: Tensor,
    lse: Tensor,
    x_mid: Tensor,
    rstd2: Tensor,
    gate: Tensor,
    up: Tensor,
}

/// What the trunk's forward leaves for the LM head and the backward.
struct Trunk {
    /// The last layer's output, before the final norm.
    x: Tensor,
    /// The final norm's output and its per-row rstd.
    xf: Tensor,
    rstd_f: Tensor,
    /// Scratch the backward reuses.
    normed: Tensor,
    act: Tensor,
    bounds: Tensor,
    positions: Tensor,
    /// Each layer's activations (empty unless kept).
    acts: Vec<LayerActs>,
}

/// Tokens per forward of [`WgpuTrainer::token_logprobs`]: a `[tokens, ffn]` activation of SmolLM2 stays near 50 MB.
const LOGPROB_TOKENS: usize = 8192;

/// A `TrainableLlama` whose parameters, gradients and moments live on a wgpu device.
pub struct WgpuTrainer {
    pub config: LlamaConfig,
    layout: ParamLayout,
    /// AdamW steps taken.
    pub step: u64,
    /// LM-head classes per chunk.
    pub head_chunk: usize,
    device: Device,
    params: Vec<Param>,
    rope: Tensor,
}

/// The batch laid end to end, with the loss rows.
struct MicroBatch {
    ids: Vec<u32>,
    seq_lens: Vec<usize>,
    rows: Vec<u32>,
    targets: Vec<u32>,
    adv: Vec<f32>,
    old: Vec<f32>,
}

impl MicroBatch {
    fn new(seqs: &[TrainSequence]) -> MicroBatch {
        let mut b = MicroBatch {
            ids: Vec::new(),
            seq_lens: Vec::new(),
            rows: Vec::new(),
            targets: Vec::new(),
            adv: Vec::new(),
            old: Vec::new(),
        };
        for s in seqs {
            let start = b.ids.len();
            for i in 1..s.tokens.len() {
                if s.mask[i] {
                    b.rows.push((start + i - 1) as u32);
                    b.targets.push(s.tokens[i]);
                    b.adv.push(s.advantages.as_ref().map_or(0.0, |a| a[i]));
                    b.old.push(s.old_logp.as_ref().map_or(0.0, |o| o[i]));
                }
            }
            b.ids.extend_from_slice(&s.tokens);
            b.seq_lens.push(s.tokens.len());
        }
        b
    }
}

impl WgpuTrainer {
    /// Uploads `model`'s parameters, moments and step count to `device`.
    pub fn new(device: &Device, model: &TrainableLlama) -> Result<WgpuTrainer, WgpuError> {
        let c = &model.config;
        if c.head_dim() > 256 {
            return Err(WgpuError::Shape(format!("the wgpu kernels need head_dim <= 256 (got {})", c.head_dim())));
        }
        let total = model.layout.total;
        for (what, len) in
            [("params", model.params.len()), ("adam_m", model.adam_m.len()), ("adam_v", model.adam_v.len())]
        {
            if len != total {
                return Err(WgpuError::Shape(format!("the model's {what} has {len} floats, its layout {total}")));
            }
        }
        let vocab_tables = [Some(&model.layout.embed), model.layout.lm_head.as_ref()];
        let params = model
            .layout
            .tensors()
            .into_iter()
            .map(|(_, range, decay)| {
                // Vocabulary tables are split by rows to fit the bindings; anything else is one part (and a clear
                // TooLarge error past a binding).
                let (rows, cols) =
                    if vocab_tables.contains(&Some(&range)) { (c.vocab, c.hidden) } else { (1, range.len()) };
                let per_part = ((device.max_binding / 4) as usize / cols.max(1)).max(1).min(rows);
                let parts = (0..rows)
                    .step_by(per_part)
                    .map(|row0| {
                        let n = per_part.min(rows - row0);
                        let r = range.start + row0 * cols..range.start + (row0 + n) * cols;
                        Ok(Part {
                            row0,
                            rows: n,
                            p: device.upload(&model.params[r.clone()])?,
                            g: device.zeros(r.len())?,
                            m: device.upload(&model.adam_m[r.clone()])?,
                            v: device.upload(&model.adam_v[r])?,
                        })
                    })
                    .collect::<Result<Vec<_>, WgpuError>>()?;
                Ok(Param { range, decay, cols, parts })
            })
            .collect::<Result<Vec<_>, WgpuError>>()?;
        Ok(WgpuTrainer {
            config: c.clone(),
            layout: model.layout.clone(),
            step: model.step,
            head_chunk: model.head_chunk,
            rope: device.rope_table(c.rope_theta, c.head_dim(), c.context)?,
            device: device.clone(),
            params,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The parts of the tensor at `r`. Every range asked for comes from `self.layout` (private, never changed),
    /// whose tensors are exactly `self.params`, each with at least one part.
    fn parts(&self, r: &Range<usize>) -> &[Part] {
        &self.params.iter().find(|p| p.range == *r).expect("every layout range has a device tensor").parts
    }

    /// A tensor that is never split (everything but the vocabulary tables).
    fn param(&self, r: &Range<usize>) -> &Part {
        &self.parts(r)[0]
    }

    fn all_parts(&self) -> impl Iterator<Item = (&Param, &Part)> {
        self.params.iter().flat_map(|p| p.parts.iter().map(move |part| (p, part)))
    }

    /// Copies the device's parameters, gradients, moments and step count back into `model` (same layout).
    pub fn write_into(&self, model: &mut TrainableLlama) -> Result<(), WgpuError> {
        if model.layout != self.layout {
            return Err(WgpuError::Shape("the model's parameter layout differs from the trainer's".into()));
        }
        for (param, p) in self.all_parts() {
            let start = param.range.start + p.row0 * param.cols;
            let r = start..start + p.rows * param.cols;
            model.params[r.clone()].copy_from_slice(&self.device.download(&p.p)?);
            model.grads[r.clone()].copy_from_slice(&self.device.download(&p.g)?);
            model.adam_m[r.clone()].copy_from_slice(&self.device.download(&p.m)?);
            model.adam_v[r].copy_from_slice(&self.device.download(&p.v)?);
        }
        model.step = self.step;
        Ok(())
    }

    /// A [`WgpuLlama`] (generation, rollouts) holding the trainer's current weights, copied on the device.
    pub fn inference_model(&self) -> Result<WgpuLlama, WgpuError> {
        let mut model = WgpuLlama::zeros(&self.device, &self.config, self.layout.lm_head.is_none())?;
        self.write_weights_into(&mut model)?;
        Ok(model)
    }

    /// Copies the trainer's current weights into `model` on the device (no round trip through the host), so that
    /// rollouts sample from the policy just trained. `model` must have the trainer's config and tying.
    pub fn write_weights_into(&self, model: &mut WgpuLlama) -> Result<(), WgpuError> {
        if model.config != self.config || model.lm_head.is_some() != self.layout.lm_head.is_some() {
            return Err(WgpuError::Shape(format!(
                "the inference model ({:?}, tied: {}) differs from the trainer's ({:?}, tied: {})",
                model.config,
                model.lm_head.is_none(),
                self.config,
                self.layout.lm_head.is_none()
            )));
        }
        let mut b = self.device.batch();
        let mut pairs: Vec<(&Range<usize>, Pieces)> = vec![(&self.layout.embed, chunks(&model.embed))];
        if let (Some(r), Some(m)) = (&self.layout.lm_head, &model.lm_head) {
            pairs.push((r, chunks(m)));
        }
        pairs.push((&self.layout.norm, whole(&model.norm)));
        let (h, kvd, f) = (self.config.hidden, self.config.kv_dim(), self.config.ffn);
        for (s, l) in self.layout.layers.iter().zip(&model.layers) {
            pairs.extend([
                (&s.attn_norm, whole(&l.attn_norm)),
                (&s.wq, window(&l.wqkv, 0, h)),
                (&s.wk, window(&l.wqkv, h, kvd)),
                (&s.wv, window(&l.wqkv, h + kvd, kvd)),
                (&s.wo, chunks(&l.wo)),
                (&s.ffn_norm, whole(&l.ffn_norm)),
                (&s.w_gate, window(&l.w_gate_up, 0, f)),
                (&s.w_up, window(&l.w_gate_up, f, f)),
                (&s.w_down, chunks(&l.w_down)),
            ]);
        }
        for (range, dst) in pairs {
            let param = self.params.iter().find(|p| p.range == *range).expect("every layout range has a device tensor");
            // Source parts and destination chunks split the same floats differently: copy every overlap.
            for part in &param.parts {
                let (s0, s1) = (part.row0 * param.cols, (part.row0 + part.rows) * param.cols);
                for &(d0, t, t0, len) in &dst {
                    let (lo, hi) = (s0.max(d0), s1.min(d0 + len));
                    if lo < hi {
                        b.copy(&part.p, lo - s0, t, t0 + lo - d0, hi - lo)?;
                    }
                }
            }
        }
        b.submit()
    }

    /// The flat gradient buffer (layout order), as `TrainableLlama::grads`.
    pub fn grads(&self) -> Result<Vec<f32>, WgpuError> {
        let mut out = vec![0.0; self.layout.total];
        for (param, p) in self.all_parts() {
            let start = param.range.start + p.row0 * param.cols;
            out[start..start + p.rows * param.cols].copy_from_slice(&self.device.download(&p.g)?);
        }
        Ok(out)
    }

    /// `TrainableLlama::loss_and_grad` on the device: zeroes the gradients, runs every micro-batch forward and
    /// backward, and leaves the gradient of the batch's masked token-mean loss in the device's gradient buffers.
    pub fn loss_and_grad(
        &mut self,
        micro_batches: &[&[TrainSequence]],
        objective: &Objective,
    ) -> Result<StepStats, WgpuError> {
        let mut b = self.device.batch();
        let grads = self.record_grads(&mut b, micro_batches, objective)?;
        b.submit()?;
        self.read_stats(grads, objective)
    }

    /// `TrainableLlama::train_step` on the device: gradients of all micro-batches, global-norm clipping, AdamW
    /// (weight decay on the matrices only; the clipping inside the AdamW kernel). Everything is recorded before anything is read back, so the GPU never
    /// waits for the host between the backward and the update.
    pub fn train_step(&mut self, step: &TrainStep) -> Result<StepStats, WgpuError> {
        let t = self.step + 1;
        let mut b = self.device.batch();
        let grads = self.record_grads(&mut b, &step.micro_batches, &step.objective)?;
        let clip = step.max_grad_norm.map(|max| (&grads.norm, max));
        for (param, p) in self.all_parts() {
            let wd = if param.decay { step.adamw.weight_decay } else { 0.0 };
            b.adamw(&p.p, &p.g, &p.m, &p.v, 0, p.p.len(), t, &step.adamw, wd, clip)?;
        }
        b.submit()?;
        self.step = t;
        self.read_stats(grads, &step.objective)
    }

    /// Records zeroing the gradients, every micro-batch's forward and backward (submitted as it goes) and the
    /// gradient norm; nothing is read back yet.
    fn record_grads(
        &self,
        b: &mut Batch,
        micro_batches: &[&[TrainSequence]],
        objective: &Objective,
    ) -> Result<PendingGrads, WgpuError> {
        if micro_batches.is_empty() {
            return Err(crate::train::TrainError::EmptyBatch.into());
        }
        let mut denom = 0;
        for mb in micro_batches {
            denom += validate(mb, objective, &self.config)?;
        }
        if denom == 0 {
            return Err(crate::train::TrainError::NothingMasked.into());
        }
        for (_, p) in self.all_parts() {
            b.clear(&p.g, 0, p.g.len())?;
        }
        let mut micro = Vec::with_capacity(micro_batches.len());
        for mb in micro_batches {
            micro.push(self.accumulate(b, mb, objective, denom as f32)?);
        }
        let tensors: Vec<&Tensor> = self.all_parts().map(|(_, p)| &p.g).collect();
        let norm = b.grad_norm(&tensors)?;
        Ok(PendingGrads { micro, denom, norm })
    }

    /// The step's statistics, read back once its last submission has run.
    fn read_stats(&self, grads: PendingGrads, objective: &Objective) -> Result<StepStats, WgpuError> {
        let d = &self.device;
        let denom = grads.denom as f32;
        let mut total = StepStats::default();
        let mut entropy = 0.0f64;
        for mb in grads.micro {
            total.tokens_processed += mb.tokens_processed;
            if mb.rows == 0 {
                continue;
            }
            let head = d.head_stats(&mb.state, mb.rows)?;
            let loss_sum: f64 = match objective {
                Objective::Sft => -head.logp.iter().map(|&l| l as f64).sum::<f64>(),
                Objective::PolicyGradient => -head.logp.iter().zip(&mb.adv).map(|(&l, &a)| (l * a) as f64).sum::<f64>(),
                Objective::Grpo(_) => match &mb.grpo_out {
                    Some(out) => {
                        let g = d.grpo_stats(out)?;
                        total.clipped += g.clipped;
                        g.loss as f64 * denom as f64
                    }
                    None => 0.0,
                },
            };
            total.loss += (loss_sum / denom as f64) as f32;
            total.tokens += mb.rows;
            entropy += head.entropy.iter().map(|&e| e as f64).sum::<f64>() as f32 as f64;
        }
        total.entropy = (entropy / denom as f64) as f32;
        total.grad_norm = d.download(&grads.norm)?[0];
        Ok(total)
    }

    /// The trunk's forward of a micro-batch (train.rs `forward`): embedding, every layer, the final norm. With
    /// `keep`, each layer's activations are kept for a backward; without, one set is reused by every layer.
    fn record_trunk(&self, b: &mut Batch, mb: &MicroBatch, keep: bool) -> Result<Trunk, WgpuError> {
        let c = &self.config;
        let d = &self.device;
        let (n, h, kvd, f, hd) = (mb.ids.len(), c.hidden, c.kv_dim(), c.ffn, c.head_dim());
        let ids = d.upload_u32(&mb.ids)?;
        let bounds = d.seq_bounds(&mb.seq_lens)?;
        let positions = d.seq_positions(&mb.seq_lens)?;
        let embed = self.parts(&self.layout.embed);
        let x = d.zeros(n * h)?;
        let normed = d.zeros(n * h)?;
        let proj = d.zeros(n * h)?;
        let act = d.zeros(n * f)?;
        let table = Matrix { chunks: embed.iter().map(|p| (p.row0, p.p.clone())).collect(), rows: c.vocab, cols: h };
        b.embed(&ids, n, &table, &x)?;
        let mut acts = Vec::with_capacity(if keep { c.layers } else { 0 });
        let mut reused: Option<LayerActs> = None;
        for (li, s) in self.layout.layers.iter().enumerate() {
            let a = match reused.take() {
                Some(a) => a,
                None => LayerActs {
                    x: d.zeros(n * h)?,
                    rstd1: d.zeros(n)?,
                    q: d.zeros(n * h)?,
                    k: d.zeros(n * kvd)?,
                    v: d.zeros(n * kvd)?,
                    att: d.zeros(n * h)?,
                    lse: d.zeros(n * c.heads)?,
                    x_mid: d.zeros(n * h)?,
                    rstd2: d.zeros(n)?,
                    gate: d.zeros(n * f)?,
                    up: d.zeros(n * f)?,
                },
            };
            let w = |r: &Range<usize>| &self.param(r).p;
            b.copy(&x, 0, &a.x, 0, n * h)?;
            b.rms_norm_fwd(&x, w(&s.attn_norm), c.eps, h, n, &normed, &a.rstd1)?;
            b.linear_fwd(&normed, n, w(&s.wq), h, h, &a.q)?;
            b.linear_fwd(&normed, n, w(&s.wk), h, kvd, &a.k)?;
            b.linear_fwd(&normed, n, w(&s.wv), h, kvd, &a.v)?;
            b.rope_rows(&a.q, n, h, hd, &positions, &self.rope, false)?;
            b.rope_rows(&a.k, n, kvd, hd, &positions, &self.rope, false)?;
            b.attention_fwd(&a.q, &a.k, &a.v, &a.att, &a.lse, &bounds, n, c.heads, c.kv_heads, hd)?;
            b.linear_fwd(&a.att, n, w(&s.wo), h, h, &proj)?;
            b.add(&x, &proj, n * h)?;
            b.copy(&x, 0, &a.x_mid, 0, n * h)?;
            b.rms_norm_fwd(&x, w(&s.ffn_norm), c.eps, h, n, &normed, &a.rstd2)?;
            b.linear_fwd(&normed, n, w(&s.w_gate), h, f, &a.gate)?;
            b.linear_fwd(&normed, n, w(&s.w_up), h, f, &a.up)?;
            b.swiglu_fwd(&a.gate, &a.up, &act, n * f)?;
            b.linear_fwd(&act, n, w(&s.w_down), f, h, &proj)?;
            b.add(&x, &proj, n * h)?;
            if keep {
                acts.push(a);
            } else {
                reused = Some(a);
            }
            if (li + 1) % LAYERS_PER_SUBMIT == 0 {
                b.flush()?;
            }
        }
        let norm = self.param(&self.layout.norm);
        let (xf, rstd_f) = (d.zeros(n * h)?, d.zeros(n)?);
        b.rms_norm_fwd(&x, &norm.p, c.eps, h, n, &xf, &rstd_f)?;
        Ok(Trunk { x, xf, rstd_f, normed, act, bounds, positions, acts })
    }

    /// `TrainableLlama::token_logprobs` on the device: per-token log-probs of each sequence under the trainer's
    /// current weights (entry `i` is `log p(token i | tokens < i)`, entry 0 is 0), by the training forward's
    /// kernels, so GRPO's old log-probs come from the device its update runs on. Sequences run together in groups
    /// of up to [`LOGPROB_TOKENS`] tokens (fewer where a `[tokens, ffn]` activation would pass one binding; a
    /// longer sequence alone).
    pub fn token_logprobs(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, WgpuError> {
        let all: Vec<TrainSequence> = seqs.iter().map(|s| TrainSequence::sft(s.to_vec(), 1)).collect();
        validate(&all, &Objective::Sft, &self.config)?;
        let widest = 4 * self.config.ffn.max(self.config.hidden).max(1) as u64;
        let cap = (self.device.max_binding / widest).clamp(1, LOGPROB_TOKENS as u64) as usize;
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        while start < all.len() {
            let mut end = start + 1;
            let mut tokens = all[start].tokens.len();
            while end < all.len() && tokens + all[end].tokens.len() <= cap {
                tokens += all[end].tokens.len();
                end += 1;
            }
            out.extend(self.group_logprobs(&all[start..end])?);
            start = end;
        }
        Ok(out)
    }

    fn group_logprobs(&self, seqs: &[TrainSequence]) -> Result<Vec<Vec<f32>>, WgpuError> {
        let (d, h) = (&self.device, self.config.hidden);
        let mb = MicroBatch::new(seqs);
        let (n, m) = (mb.ids.len(), mb.rows.len());
        let mut b = d.batch();
        let trunk = self.record_trunk(&mut b, &mb, false)?;
        let state = d.head_state(m.max(1))?;
        if m > 0 {
            let head: Vec<HeadPart> = self
                .parts(self.layout.lm_head.as_ref().unwrap_or(&self.layout.embed))
                .iter()
                .map(|p| HeadPart { row0: p.row0, rows: p.rows, w: &p.p, dw: None })
                .collect();
            let (rows, targets) = (d.upload_u32(&mb.rows)?, d.upload_u32(&mb.targets)?);
            let xs = d.zeros(m * h)?;
            b.embed(&rows, m, &Matrix::whole(&trunk.xf, n, h)?, &xs)?;
            b.lm_head_fwd_parts(&xs, m, h, &head, &targets, self.head_chunk, &state)?;
        }
        b.submit()?;
        let logp = if m > 0 { d.head_stats(&state, m)?.logp } else { Vec::new() };
        let mut k = 0;
        Ok(seqs
            .iter()
            .map(|s| {
                let mut o = vec![0.0; s.tokens.len()];
                for v in o.iter_mut().skip(1) {
                    *v = logp[k];
                    k += 1;
                }
                o
            })
            .collect())
    }

    /// Forward and backward of one micro-batch, adding its gradient (divided by the whole batch's `denom`).
    fn accumulate(
        &self,
        b: &mut Batch,
        seqs: &[TrainSequence],
        objective: &Objective,
        denom: f32,
    ) -> Result<PendingMicroBatch, WgpuError> {
        let c = &self.config;
        let d = &self.device;
        let mb = MicroBatch::new(seqs);
        let (n, h, kvd, f, hd) = (mb.ids.len(), c.hidden, c.kv_dim(), c.ffn, c.head_dim());
        let m = mb.rows.len();
        let embed = self.parts(&self.layout.embed);
        let Trunk { x, xf, rstd_f, normed, act, bounds, positions, acts } = self.record_trunk(b, &mb, true)?;
        let norm = self.param(&self.layout.norm);

        // The loss rows through the chunked LM head, and the gradient on the final normed states.
        let dxf = d.zeros(n * h)?;
        let state = d.head_state(m)?;
        let grpo_out = d.zeros(3)?;
        if m > 0 {
            let head: Vec<HeadPart> = self
                .parts(self.layout.lm_head.as_ref().unwrap_or(&self.layout.embed))
                .iter()
                .map(|p| HeadPart { row0: p.row0, rows: p.rows, w: &p.p, dw: Some(&p.g) })
                .collect();
            let rows = d.upload_u32(&mb.rows)?;
            let targets = d.upload_u32(&mb.targets)?;
            let xs = d.zeros(m * h)?;
            b.embed(&rows, m, &Matrix::whole(&xf, n, h)?, &xs)?;
            b.lm_head_fwd_parts(&xs, m, h, &head, &targets, self.head_chunk, &state)?;
            let dlogp = match objective {
                Objective::Sft => d.upload(&vec![-1.0 / denom; m])?,
                Objective::PolicyGradient => d.upload(&mb.adv.iter().map(|a| -a / denom).collect::<Vec<_>>())?,
                Objective::Grpo(clip) => {
                    let dlogp = d.zeros(m)?;
                    let (old, adv, mask) = (d.upload(&mb.old)?, d.upload(&mb.adv)?, d.upload_u32(&vec![1; m])?);
                    b.grpo_loss_from_head(&state, &old, &adv, &mask, m, clip, denom, &dlogp, &grpo_out)?;
                    dlogp
                }
            };
            let dxs = d.zeros(m * h)?;
            b.lm_head_bwd_parts(&xs, m, h, &head, &targets, self.head_chunk, &state, &dlogp, None, &dxs)?;
            // Rows are distinct, so the scatter-add into the zeroed dxf places each row's gradient.
            b.embedding_bwd(&mb.rows, &dxs, h, n, &dxf, 0)?;
        }

        // Backward (train.rs `backward`).
        let dx = d.zeros(n * h)?;
        b.rms_norm_bwd(&dxf, &x, &norm.p, &rstd_f, h, n, &dx, &norm.g)?;
        let scratch_rstd = d.zeros(n)?;
        let dnormed = d.zeros(n * h)?;
        let (dact, dgate, dup) = (d.zeros(n * f)?, d.zeros(n * f)?, d.zeros(n * f)?);
        let (datt, dq, dk, dv) = (d.zeros(n * h)?, d.zeros(n * h)?, d.zeros(n * kvd)?, d.zeros(n * kvd)?);
        for (li, (s, a)) in self.layout.layers.iter().zip(&acts).enumerate().rev() {
            let w = |r: &Range<usize>| self.param(r);
            b.rms_norm_fwd(&a.x_mid, &w(&s.ffn_norm).p, c.eps, h, n, &normed, &scratch_rstd)?;
            b.swiglu_fwd(&a.gate, &a.up, &act, n * f)?;
            b.clear(&dact, 0, n * f)?;
            b.linear_bwd(&dx, &act, n, &w(&s.w_down).p, f, h, &dact, &w(&s.w_down).g)?;
            b.swiglu_bwd(&dact, &a.gate, &a.up, &dgate, &dup, n * f)?;
            b.clear(&dnormed, 0, n * h)?;
            b.linear_bwd(&dgate, &normed, n, &w(&s.w_gate).p, h, f, &dnormed, &w(&s.w_gate).g)?;
            b.linear_bwd(&dup, &normed, n, &w(&s.w_up).p, h, f, &dnormed, &w(&s.w_up).g)?;
            let ffn_norm = w(&s.ffn_norm);
            b.rms_norm_bwd(&dnormed, &a.x_mid, &ffn_norm.p, &a.rstd2, h, n, &dx, &ffn_norm.g)?;
            b.clear(&datt, 0, n * h)?;
            b.linear_bwd(&dx, &a.att, n, &w(&s.wo).p, h, h, &datt, &w(&s.wo).g)?;
            b.attention_bwd(
                &a.q, &a.k, &a.v, &a.att, &a.lse, &datt, &bounds, &dq, &dk, &dv, n, c.heads, c.kv_heads, hd,
            )?;
            b.rope_rows(&dq, n, h, hd, &positions, &self.rope, true)?;
            b.rope_rows(&dk, n, kvd, hd, &positions, &self.rope, true)?;
            b.rms_norm_fwd(&a.x, &w(&s.attn_norm).p, c.eps, h, n, &normed, &scratch_rstd)?;
            b.clear(&dnormed, 0, n * h)?;
            b.linear_bwd(&dq, &normed, n, &w(&s.wq).p, h, h, &dnormed, &w(&s.wq).g)?;
            b.linear_bwd(&dk, &normed, n, &w(&s.wk).p, h, kvd, &dnormed, &w(&s.wk).g)?;
            b.linear_bwd(&dv, &normed, n, &w(&s.wv).p, h, kvd, &dnormed, &w(&s.wv).g)?;
            let attn_norm = w(&s.attn_norm);
            b.rms_norm_bwd(&dnormed, &a.x, &attn_norm.p, &a.rstd1, h, n, &dx, &attn_norm.g)?;
            if li % LAYERS_PER_SUBMIT == 0 {
                b.flush()?;
            }
        }
        // With tied weights this adds to the LM head's contribution already in the same tensor.
        for p in embed {
            b.embedding_bwd_rows(&mb.ids, &dx, h, p.row0..p.row0 + p.rows, &p.g, 0)?;
        }
        // Submitted here so that this micro-batch's activations are freed once the GPU is done with them.
        b.flush()?;
        let grpo_out = matches!(objective, Objective::Grpo(_)).then_some(grpo_out);
        Ok(PendingMicroBatch { tokens_processed: n, rows: m, state, grpo_out, adv: mb.adv })
    }
}

/// The gradients being computed: each micro-batch's loss statistics and the norm, on the device until read.
struct PendingGrads {
    micro: Vec<PendingMicroBatch>,
    denom: usize,
    norm: Tensor,
}

/// One micro-batch's per-row LM-head state (log-prob, entropy) and GRPO sums, still on the device.
struct PendingMicroBatch {
    tokens_processed: usize,
    rows: usize,
    state: Tensor,
    grpo_out: Option<Tensor>,
    adv: Vec<f32>,
}

/// Where a weight lives in an inference model, piece by piece: `(first float of the weight, tensor, offset in the
/// tensor, floats)`.
type Pieces<'a> = Vec<(usize, &'a Tensor, usize, usize)>;

/// A whole tensor.
fn whole(t: &Tensor) -> Pieces<'_> {
    vec![(0, t, 0, t.len())]
}

/// The pieces of a row-chunked matrix.
fn chunks(m: &Matrix) -> Pieces<'_> {
    window(m, 0, m.rows)
}

/// Rows `row0..row0 + rows` of a row-chunked matrix (one weight of a fused one), wherever its chunks put them.
fn window(m: &Matrix, row0: usize, rows: usize) -> Pieces<'_> {
    m.chunks
        .iter()
        .filter_map(|(c0, t)| {
            let c1 = c0 + t.len() / m.cols;
            let (lo, hi) = (row0.max(*c0), (row0 + rows).min(c1));
            (lo < hi).then(|| ((lo - row0) * m.cols, t, (lo - c0) * m.cols, (hi - lo) * m.cols))
        })
        .collect()
}
