//! The LLaMA inference forward on the wgpu backend: the weights of a CPU [`Llama`] uploaded once, a GPU KV cache
//! that grows on demand, `forward_last` with the semantics of `Llama::forward_last` (one queue submission per
//! prompt chunk, only the logits read back), and `forward_last_batch` with those of `batch::forward_last_batch`
//! (decode steps of many sequences sharing one forward), which serves the continuous-batching engine.

use super::{Batch, Device, FLASH_ROWS, Matrix, Tensor, WgpuError};
use crate::model::{Llama, LlamaConfig, ModelError};

/// Prompts run at most this many tokens at a time (fewer where a `[t, 2·ffn]` activation would not fit one storage
/// binding). Long chunks keep a GPU busy: a 512-token prompt's `[512, 576]` products are 72 output tiles, half the
/// SMs of an H100, and 256-token chunks gave half that.
const PREFILL_CHUNK: usize = 1024;
/// First KV cache allocation, in positions; it doubles when full (up to the context).
const INITIAL_CACHE: usize = 256;
/// Layers per queue submission: the GPU starts on the first layers while the host records the rest (recording a
/// layer's dispatches costs the host tens of microseconds, and one submission for the whole model kept the GPU idle
/// for all of that).
const LAYERS_PER_SUBMIT: usize = 8;

/// [`PREFILL_CHUNK`], or fewer tokens where a `[t, 2·ffn]` activation would not fit one storage binding.
fn prefill_chunk(device: &Device, c: &LlamaConfig) -> usize {
    let row_bytes = 4 * (2 * c.ffn).max(c.hidden + 2 * c.kv_dim()).max(1) as u64;
    (device.max_binding / row_bytes).clamp(1, PREFILL_CHUNK as u64) as usize
}

/// One layer's weights, the projections that read the same input fused into one matrix each (one product and
/// one dispatch instead of three, and of two): `wqkv` is wq | wk | wv by rows `[hidden + 2·kv_dim, hidden]`,
/// `w_gate_up` is w_gate | w_up `[2·ffn, hidden]`.
pub(super) struct GpuLayer {
    pub(super) attn_norm: Tensor,
    pub(super) wqkv: Matrix,
    pub(super) wo: Matrix,
    pub(super) ffn_norm: Tensor,
    pub(super) w_gate_up: Matrix,
    pub(super) w_down: Matrix,
}

/// A [`Llama`] whose weights live on a wgpu device.
pub struct WgpuLlama {
    pub config: LlamaConfig,
    device: Device,
    pub(super) embed: Matrix,
    /// `None` when tied to the embedding.
    pub(super) lm_head: Option<Matrix>,
    pub(super) layers: Vec<GpuLayer>,
    pub(super) norm: Tensor,
    rope: Tensor,
    /// Prompt tokens per forward submission ([`PREFILL_CHUNK`] or fewer).
    prefill_chunk: usize,
}

/// Keys and values of every layer on the GPU, `[capacity, kv_dim]` per layer (none allocated while empty).
#[derive(Default)]
pub struct WgpuKvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    capacity: usize,
    pub len: usize,
}

impl WgpuKvCache {
    /// Positions the cache has room for before it must grow.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl WgpuLlama {
    /// Uploads the weights of `model` (f32) to `device`.
    pub fn new(device: &Device, model: &Llama) -> Result<WgpuLlama, WgpuError> {
        let c = &model.config;
        c.validate()?;
        let (h, kvd, f, hd) = (c.hidden, c.kv_dim(), c.ffn, c.head_dim());
        if !h.is_multiple_of(4) || !f.is_multiple_of(4) || hd > 256 {
            return Err(WgpuError::Shape(format!(
                "the wgpu kernels need hidden and ffn to be multiples of 4 and head_dim <= 256 (got {h}, {f}, {hd})"
            )));
        }
        let d = device;
        let layers = model
            .layers
            .iter()
            .map(|l| {
                Ok(GpuLayer {
                    attn_norm: d.upload(&l.attn_norm)?,
                    wqkv: d.upload_matrix(&[&l.wq[..], &l.wk, &l.wv].concat(), h + 2 * kvd, h)?,
                    wo: d.upload_matrix(&l.wo, h, h)?,
                    ffn_norm: d.upload(&l.ffn_norm)?,
                    w_gate_up: d.upload_matrix(&[&l.w_gate[..], &l.w_up].concat(), 2 * f, h)?,
                    w_down: d.upload_matrix(&l.w_down, h, f)?,
                })
            })
            .collect::<Result<Vec<_>, WgpuError>>()?;
        Ok(WgpuLlama {
            embed: d.upload_matrix(&model.embed, c.vocab, h)?,
            lm_head: model.lm_head.as_deref().map(|w| d.upload_matrix(w, c.vocab, h)).transpose()?,
            norm: d.upload(&model.norm)?,
            rope: d.rope_table(c.rope_theta, hd, c.context)?,
            layers,
            prefill_chunk: prefill_chunk(device, c),
            config: c.clone(),
            device: device.clone(),
        })
    }

    /// A model of `config` with every weight zero, to be filled on the device (`WgpuTrainer::inference_model`).
    pub(super) fn zeros(device: &Device, c: &LlamaConfig, tied: bool) -> Result<WgpuLlama, WgpuError> {
        c.validate()?;
        let (h, kvd, f, hd) = (c.hidden, c.kv_dim(), c.ffn, c.head_dim());
        if !h.is_multiple_of(4) || !f.is_multiple_of(4) || hd > 256 {
            return Err(WgpuError::Shape(format!(
                "the wgpu kernels need hidden and ffn to be multiples of 4 and head_dim <= 256 (got {h}, {f}, {hd})"
            )));
        }
        let d = device;
        let layers = (0..c.layers)
            .map(|_| {
                Ok(GpuLayer {
                    attn_norm: d.zeros(h)?,
                    wqkv: d.zeros_matrix(h + 2 * kvd, h)?,
                    wo: d.zeros_matrix(h, h)?,
                    ffn_norm: d.zeros(h)?,
                    w_gate_up: d.zeros_matrix(2 * f, h)?,
                    w_down: d.zeros_matrix(h, f)?,
                })
            })
            .collect::<Result<Vec<_>, WgpuError>>()?;
        Ok(WgpuLlama {
            embed: d.zeros_matrix(c.vocab, h)?,
            lm_head: if tied { None } else { Some(d.zeros_matrix(c.vocab, h)?) },
            norm: d.zeros(h)?,
            rope: d.rope_table(c.rope_theta, hd, c.context)?,
            layers,
            prefill_chunk: prefill_chunk(device, c),
            config: c.clone(),
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The same model running prompts at most `tokens` at a time (tests exercise the chunking on small models).
    pub fn with_prefill_chunk(mut self, tokens: usize) -> WgpuLlama {
        self.prefill_chunk = tokens.clamp(1, self.prefill_chunk);
        self
    }

    pub fn new_cache(&self) -> WgpuKvCache {
        WgpuKvCache::default()
    }

    /// A new cache holding the first `len` positions of `cache` (copied on the device), for a prompt that starts
    /// with the same tokens.
    pub fn prefix_cache(&self, cache: &WgpuKvCache, len: usize) -> Result<WgpuKvCache, WgpuError> {
        let len = len.min(cache.len);
        let mut out = self.new_cache();
        if len == 0 {
            return Ok(out);
        }
        // Exactly `len` positions: the prefix store charges a copy by its length, and a sequence that resumes
        // from it grows the cache as any other.
        self.grow(&mut out, len)?;
        let kvd = self.config.kv_dim();
        let mut b = self.device.batch();
        for (src, dst) in cache.k.iter().zip(&out.k).chain(cache.v.iter().zip(&out.v)) {
            b.copy(src, 0, dst, 0, len * kvd)?;
        }
        b.submit()?;
        out.len = len;
        Ok(out)
    }

    /// Makes room for `needed` positions, keeping what the cache holds.
    fn reserve(&self, cache: &mut WgpuKvCache, needed: usize) -> Result<(), WgpuError> {
        if needed <= cache.capacity {
            return Ok(());
        }
        self.grow(cache, needed.max(cache.capacity * 2).max(INITIAL_CACHE).min(self.config.context))
    }

    /// Moves the cache into buffers of `capacity` positions (at least its length), keeping what it holds.
    fn grow(&self, cache: &mut WgpuKvCache, capacity: usize) -> Result<(), WgpuError> {
        let kvd = self.config.kv_dim();
        let mut batch = self.device.batch();
        let mut moved = |old: &[Tensor]| -> Result<Vec<Tensor>, WgpuError> {
            (0..self.config.layers)
                .map(|li| {
                    let t = self.device.zeros(capacity * kvd)?;
                    if let Some(old) = old.get(li) {
                        batch.copy(old, 0, &t, 0, cache.len * kvd)?;
                    }
                    Ok(t)
                })
                .collect()
        };
        let k = moved(&cache.k)?;
        let v = moved(&cache.v)?;
        batch.submit()?;
        cache.k = k;
        cache.v = v;
        cache.capacity = capacity;
        Ok(())
    }

    /// Runs `tokens` after what the cache holds and returns the last position's logits, like
    /// `Llama::forward_last`.
    pub fn forward_last(&self, tokens: &[u32], cache: &mut WgpuKvCache) -> Result<Vec<f32>, WgpuError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(ModelError::Empty.into());
        }
        if cache.len + tokens.len() > c.context {
            return Err(ModelError::ContextOverflow { len: cache.len + tokens.len(), context: c.context }.into());
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(ModelError::BadToken { id, vocab: c.vocab }.into());
        }
        self.reserve(cache, cache.len + tokens.len())?;
        let chunks: Vec<&[u32]> = tokens.chunks(self.prefill_chunk).collect();
        let mut logits = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let out = self.run(&[(chunk, &*cache)], last)?;
            cache.len += chunk.len();
            if let Some(out) = out {
                logits = self.device.download(&out)?;
            }
        }
        Ok(logits)
    }

    /// `batch::forward_last_batch` on the device: runs `tokens[i]` after what `caches[i]` holds for every `i` and
    /// returns each sequence's last-position logits, `[sequences, vocab]`. Sequences of fewer new tokens than an
    /// attention block (decode steps, short appended turns) go through one forward together: one set of products
    /// and norms for all their rows, each attending over its own cache. A longer one (a prompt) runs alone, as
    /// [`WgpuLlama::forward_last`] runs it.
    pub fn forward_last_batch(&self, tokens: &[&[u32]], caches: &mut [WgpuKvCache]) -> Result<Vec<f32>, WgpuError> {
        let c = &self.config;
        if tokens.is_empty() || tokens.len() != caches.len() || tokens.iter().any(|t| t.is_empty()) {
            return Err(ModelError::Empty.into());
        }
        for (t, cache) in tokens.iter().zip(caches.iter()) {
            if cache.len + t.len() > c.context {
                return Err(ModelError::ContextOverflow { len: cache.len + t.len(), context: c.context }.into());
            }
            if let Some(&id) = t.iter().find(|&&id| id as usize >= c.vocab) {
                return Err(ModelError::BadToken { id, vocab: c.vocab }.into());
            }
        }
        let vocab = c.vocab;
        let mut logits = vec![0.0; tokens.len() * vocab];
        // Rows per shared forward: a prompt chunk's, and no more sequences than one `[sequences, vocab]` binding.
        let max_seqs = (self.device.max_binding / (4 * vocab as u64).max(1)).max(1) as usize;
        let mut group: Vec<usize> = Vec::new();
        let mut rows = 0;
        for (i, t) in tokens.iter().enumerate() {
            // Prompts (and anything past one shared forward's rows) run alone, in chunks.
            if t.len() >= FLASH_ROWS || t.len() > self.prefill_chunk {
                let out = self.forward_last(t, &mut caches[i])?;
                logits[i * vocab..(i + 1) * vocab].copy_from_slice(&out);
                continue;
            }
            if !group.is_empty() && (rows + t.len() > self.prefill_chunk || group.len() == max_seqs) {
                self.run_group(&group, tokens, caches, &mut logits)?;
                group.clear();
                rows = 0;
            }
            group.push(i);
            rows += t.len();
        }
        if !group.is_empty() {
            self.run_group(&group, tokens, caches, &mut logits)?;
        }
        Ok(logits)
    }

    /// One forward shared by the sequences `group`: their caches grown and advanced, their logits rows filled.
    fn run_group(
        &self,
        group: &[usize],
        tokens: &[&[u32]],
        caches: &mut [WgpuKvCache],
        logits: &mut [f32],
    ) -> Result<(), WgpuError> {
        let vocab = self.config.vocab;
        for &g in group {
            let needed = caches[g].len + tokens[g].len();
            self.reserve(&mut caches[g], needed)?;
        }
        let parts: Vec<(&[u32], &WgpuKvCache)> = group.iter().map(|&g| (tokens[g], &caches[g])).collect();
        let out = self.run(&parts, true)?.ok_or_else(|| WgpuError::Shape("a forward without logits".into()))?;
        let out = self.device.download(&out)?;
        for (k, &g) in group.iter().enumerate() {
            logits[g * vocab..(g + 1) * vocab].copy_from_slice(&out[k * vocab..(k + 1) * vocab]);
            caches[g].len += tokens[g].len();
        }
        Ok(())
    }

    /// Records and submits one forward over the new rows of every `(tokens, cache)` part, at positions
    /// `cache.len..` of each ([`LAYERS_PER_SUBMIT`] layers at a time; the caches reserved; with several parts,
    /// each under [`FLASH_ROWS`] rows). With `logits`, also the final norm and the LM head of each part's last row:
    /// `[parts, vocab]`, returned not yet read back.
    fn run(&self, parts: &[(&[u32], &WgpuKvCache)], logits: bool) -> Result<Option<Tensor>, WgpuError> {
        let c = &self.config;
        let d = &self.device;
        let (h, kvd, hd) = (c.hidden, c.kv_dim(), c.head_dim());
        let ids: Vec<u32> = parts.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let t = ids.len();
        let ids = d.upload_u32(&ids)?;
        let x = d.zeros(t * h)?;
        let normed = d.zeros(t * h)?;
        let qkv = d.zeros(t * (h + 2 * kvd))?;
        let q = d.zeros(t * h)?;
        let attn = d.zeros(t * h)?;
        let gate_up = d.zeros(t * 2 * c.ffn)?;
        let act = d.zeros(t * c.ffn)?;
        let mut b: Batch<'_> = d.batch();
        b.embed(&ids, t, &self.embed, &x)?;
        // Per layer: norm, one q|k|v product, per part the rotations into q and its cache and its attention, the
        // output projection added to x in its own kernel, norm, one gate|up product, SwiGLU, the down projection
        // added to x.
        for (li, l) in self.layers.iter().enumerate() {
            b.rms_norm(&x, &l.attn_norm, c.eps, h, t, &normed)?;
            b.linear(&normed, t, &l.wqkv, &qkv)?;
            let mut row0 = 0;
            for (tokens, cache) in parts {
                let n = tokens.len();
                b.qkv_rope(&qkv, row0, n, h, kvd, hd, cache.len, &self.rope, &q, &cache.k[li], &cache.v[li])?;
                b.attention(&q, &cache.k[li], &cache.v[li], &attn, row0, n, cache.len, c.heads, c.kv_heads, hd)?;
                row0 += n;
            }
            b.linear_add(&attn, t, &l.wo, &x)?;
            b.rms_norm(&x, &l.ffn_norm, c.eps, h, t, &normed)?;
            b.linear(&normed, t, &l.w_gate_up, &gate_up)?;
            b.swiglu(&gate_up, t, c.ffn, &act)?;
            b.linear_add(&act, t, &l.w_down, &x)?;
            if (li + 1) % LAYERS_PER_SUBMIT == 0 {
                b.flush()?;
            }
        }
        let out = if logits {
            b.rms_norm(&x, &self.norm, c.eps, h, t, &normed)?;
            let s = parts.len();
            let out = d.zeros(s * c.vocab)?;
            // The head is split by vocabulary rows into chunks of at most one binding; each writes its columns.
            let head = self.lm_head.as_ref().unwrap_or(&self.embed);
            if s == 1 {
                b.linear_into(&normed, t - 1, 1, head, &out, 0, c.vocab)?;
            } else {
                // Each part's last row, gathered, through the LM head in one product.
                let last: Vec<u32> = parts
                    .iter()
                    .scan(0u32, |end, (tokens, _)| {
                        *end += tokens.len() as u32;
                        Some(*end - 1)
                    })
                    .collect();
                let last = d.upload_u32(&last)?;
                let xs = d.zeros(s * h)?;
                b.embed(&last, s, &Matrix::whole(&normed, t, h)?, &xs)?;
                b.linear(&xs, s, head, &out)?;
            }
            Some(out)
        } else {
            None
        };
        b.submit()?;
        Ok(out)
    }
}
