//! The training ops of the wgpu backend, recorded into a [`Batch`]: the forward ops that save what the backward
//! needs, and the backward of every op a LLaMA training step runs, the LM head in vocab chunks, AdamW, the global
//! gradient norm with clipping, and the GRPO loss. Each has the semantics of its `cpu_ops` counterpart (same
//! argument order, same accumulate-or-overwrite convention), which `tests/wgpu_backward.rs` holds it to.
//!
//! Nothing here uses atomics, so results do not depend on scheduling: reductions are per-workgroup trees or
//! ordered loops, and scatter-adds are turned into gathers on the host (the embedding backward).

use super::{Batch, Device, FLASH_ROWS, Kernel, Matrix, Op, Tensor, WgpuError, grid, need, u32_of};
use crate::cpu_ops::{AdamW, GrpoClip, GrpoStats, HeadStats};

/// Floats of per-row state the chunked LM head keeps (see `shaders/head.wgsl`).
pub const HEAD_STATE: usize = 8;
/// Floats one `sumsq_partial` workgroup reduces.
const NORM_SEGMENT: usize = 4096;
/// Rows one invocation of the RMSNorm weight gradient sums (see `rmsnorm_bwd.wgsl`).
const NORM_DW_SLICE: usize = 32;
/// The training attention's backward splits its blocks' keys and rows (see `attention_flash_bwd.wgsl`) when it has
/// fewer workgroups than this (a 512-token step of SmolLM2: 288).
const TRAIN_SPLIT_BELOW: usize = 512;

/// A matrix inside a tensor: element `(r, c)` of batch entry `b` is at `off + b·batch_stride + r·rs + c·cs`.
#[derive(Clone, Copy, Debug)]
pub struct MatView<'t> {
    pub t: &'t Tensor,
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
    pub batch_stride: usize,
}

impl<'t> MatView<'t> {
    /// A row-major matrix with `ld` floats per row, starting at `off`.
    pub fn rows(t: &'t Tensor, off: usize, ld: usize) -> MatView<'t> {
        MatView { t, off, rs: ld, cs: 1, batch_stride: 0 }
    }

    /// The transpose of a row-major matrix with `ld` floats per row.
    pub fn transposed(t: &'t Tensor, off: usize, ld: usize) -> MatView<'t> {
        MatView { t, off, rs: 1, cs: ld, batch_stride: 0 }
    }

    pub fn batched(self, stride: usize) -> MatView<'t> {
        MatView { batch_stride: stride, ..self }
    }

    fn check(&self, what: &str, batch: usize, rows: usize, cols: usize) -> Result<(), WgpuError> {
        let last = self.off + (batch - 1) * self.batch_stride + (rows - 1) * self.rs + (cols - 1) * self.cs;
        need(what, self.t.len, last + 1)
    }
}

/// Rows `row0..row0 + rows` of an LM head weight `[vocab, hidden]` in their own tensor, with their gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadPart<'t> {
    pub row0: usize,
    pub rows: usize,
    pub w: &'t Tensor,
    pub dw: Option<&'t Tensor>,
}

/// The vocabulary the parts cover, checking that they tile it in order and hold their rows.
fn check_parts(parts: &[HeadPart], hidden: usize) -> Result<usize, WgpuError> {
    let mut next = 0;
    for p in parts {
        if p.row0 != next {
            return Err(WgpuError::Shape(format!("LM head parts: rows from {} where {next} was expected", p.row0)));
        }
        need("lm_head w", p.w.len, p.rows * hidden)?;
        next += p.rows;
    }
    Ok(next)
}

impl Device {
    /// `[start, end)` of each row's sequence for sequences of `seq_lens` laid end to end (the attention kernels'
    /// causal bounds), as u32 pairs.
    pub fn seq_bounds(&self, seq_lens: &[usize]) -> Result<Tensor, WgpuError> {
        let mut b = Vec::with_capacity(seq_lens.iter().sum::<usize>() * 2);
        let mut start = 0;
        for &l in seq_lens {
            let (s, e) = (u32_of("row", start)?, u32_of("row", start + l)?);
            for _ in 0..l {
                b.extend_from_slice(&[s, e]);
            }
            start += l;
        }
        self.upload_u32(&b)
    }

    /// The position of each row within its sequence (RoPE's positions), as u32.
    pub fn seq_positions(&self, seq_lens: &[usize]) -> Result<Tensor, WgpuError> {
        let mut p = Vec::with_capacity(seq_lens.iter().sum());
        for &l in seq_lens {
            for i in 0..l {
                p.push(u32_of("position", i)?);
            }
        }
        self.upload_u32(&p)
    }

    /// A zeroed per-row state for [`Batch::lm_head_fwd`].
    pub fn head_state(&self, n: usize) -> Result<Tensor, WgpuError> {
        self.zeros(n * HEAD_STATE)
    }

    /// Reads the results of [`Batch::lm_head_fwd`] back.
    pub fn head_stats(&self, state: &Tensor, n: usize) -> Result<HeadStats, WgpuError> {
        let s = self.download_range(state, 0, n * HEAD_STATE)?;
        let col = |c: usize| s.chunks_exact(HEAD_STATE).map(|r| r[c]).collect();
        Ok(HeadStats { logp: col(4), entropy: col(5), lse: col(6) })
    }

    /// Reads the `[loss, clipped, tokens]` of [`Batch::grpo_loss`] back.
    pub fn grpo_stats(&self, out: &Tensor) -> Result<GrpoStats, WgpuError> {
        let s = self.download_range(out, 0, 3)?;
        Ok(GrpoStats { loss: s[0], clipped: s[1] as usize, tokens: s[2] as usize })
    }
}

impl Matrix {
    /// One tensor as a `[rows, cols]` matrix (a single chunk), for the vec4 linear kernels.
    pub fn whole(t: &Tensor, rows: usize, cols: usize) -> Result<Matrix, WgpuError> {
        need("matrix", t.len, rows * cols)?;
        Ok(Matrix { chunks: vec![(0, t.clone())], rows, cols })
    }
}

impl Batch<'_> {
    /// Zeroes floats `off..off + len` of `t`.
    pub fn clear(&mut self, t: &Tensor, off: usize, len: usize) -> Result<(), WgpuError> {
        need("clear", t.len, off + len)?;
        if len > 0 {
            self.ops.push(Op::Clear { buf: t.buf.clone(), off: off as u64 * 4, bytes: len as u64 * 4 });
        }
        Ok(())
    }

    /// `c[m, n] = a[m, k] · b[k, n] + beta · c` for each of `batch` entries, through strided views (cpu_ops
    /// `matmul_strided`); `c` must have unit column stride. With `beta == 0` the old `c` is not read.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_strided(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        batch: usize,
        a: MatView,
        b: MatView,
        beta: f32,
        c: MatView,
    ) -> Result<(), WgpuError> {
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        if c.cs != 1 {
            return Err(WgpuError::Shape("matmul output needs unit column stride".into()));
        }
        c.check("matmul c", batch, m, n)?;
        if k > 0 {
            a.check("matmul a", batch, m, k)?;
            b.check("matmul b", batch, k, n)?;
        }
        if batch == 1 && self.matmul_vec4(m, k, n, a, b, beta, c)? {
            return Ok(());
        }
        let per = m.div_ceil(64) * n.div_ceil(64);
        let groups = per * batch;
        let (gx, _) = grid(groups)?;
        let values = [
            u32_of("m", m)?,
            u32_of("n", n)?,
            u32_of("k", k)?,
            u32_of("offset", a.off)?,
            u32_of("stride", a.rs)?,
            u32_of("stride", a.cs)?,
            u32_of("offset", b.off)?,
            u32_of("stride", b.rs)?,
            u32_of("stride", b.cs)?,
            u32_of("offset", c.off)?,
            u32_of("stride", c.rs)?,
            beta.to_bits(),
            gx,
            u32_of("batch", batch)?,
            u32_of("stride", a.batch_stride)?,
            u32_of("stride", b.batch_stride)?,
            u32_of("stride", c.batch_stride)?,
        ];
        self.dispatch(Kernel::MatmulGeneral, &[a.t, b.t, c.t], &values, groups)
    }

    /// The vec4 kernels for the layouts they cover (rows of multiples of 4 floats at 4-aligned offsets); false
    /// when none applies and the general kernel must run.
    #[allow(clippy::too_many_arguments)]
    fn matmul_vec4(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: MatView,
        b: MatView,
        beta: f32,
        c: MatView,
    ) -> Result<bool, WgpuError> {
        let four = |v: &[usize]| v.iter().all(|x| x.is_multiple_of(4));
        if k == 0 || !four(&[n, a.off, b.off]) {
            return Ok(false);
        }
        let tiles = m.div_ceil(64) * n.div_ceil(64);
        let dims = [u32_of("m", m)?, u32_of("n", n)?, u32_of("k", k)?];
        let (a4, b4) = (u32_of("offset", a.off / 4)?, u32_of("offset", b.off / 4)?);
        let (c_off, ldc) = (u32_of("offset", c.off)?, u32_of("stride", c.rs)?);
        if a.cs == 1 && b.rs == 1 && a.rs == k && b.cs == k && four(&[k]) {
            // x · wᵀ with both rows contiguous: the inference forward's kernels.
            self.x_wt(a.t, a.off / 4, m, b.t, b.off / 4, n, k, c.t, c.off, c.rs, beta)?;
            return Ok(true);
        }
        let kernel = if a.cs == 1 && b.cs == 1 && four(&[k, a.rs, b.rs]) {
            Kernel::MatmulNn
        } else if a.rs == 1 && b.cs == 1 && four(&[m, a.cs, b.rs]) {
            Kernel::MatmulTn
        } else {
            return Ok(false);
        };
        let lda = if kernel == Kernel::MatmulNn { a.rs } else { a.cs };
        let split = self.k_split(m, n, k, tiles);
        let groups = tiles * split.splits;
        let (gx, _) = grid(groups)?;
        let operands = [dims[0], dims[1], dims[2], a4, u32_of("stride", lda / 4)?, b4, u32_of("stride", b.rs / 4)?];
        if split.splits == 1 {
            let values = [&operands[..], &[c_off, ldc, beta.to_bits(), gx, dims[2], 0, 1]];
            self.dispatch(kernel, &[a.t, b.t, c.t], &values.concat(), groups)?;
        } else {
            // The parts go to scratch rows of n floats; the sum applies beta to c.
            let part = self.split_scratch(split.splits * m * n)?;
            let (ks, stride) = (split.k_per_split as u32, u32_of("stride", m * n)?);
            let values = [&operands[..], &[0, dims[1], 0f32.to_bits(), gx, ks, stride, split.splits as u32]];
            self.dispatch(kernel, &[a.t, b.t, &part], &values.concat(), groups)?;
            self.split_k_sum(&part, split.splits, m, n, c.t, c.off, c.rs, beta)?;
        }
        Ok(true)
    }

    /// cpu_ops `matmul`: `c[m, n] = op(a) · op(b) + beta · c`, `a` stored `[m, k]` (or `[k, m]` with `a_t`),
    /// `b` stored `[k, n]` (or `[n, k]` with `b_t`).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: &Tensor,
        a_t: bool,
        b: &Tensor,
        b_t: bool,
        beta: f32,
        c: &Tensor,
    ) -> Result<(), WgpuError> {
        let a = if a_t { MatView::transposed(a, 0, m) } else { MatView::rows(a, 0, k) };
        let b = if b_t { MatView::transposed(b, 0, k) } else { MatView::rows(b, 0, n) };
        self.matmul_strided(m, k, n, 1, a, b, beta, MatView::rows(c, 0, n))
    }

    /// cpu_ops `linear_fwd`: `y[t, out] = x[t, in] · w[out, in]ᵀ` with the weight in one tensor.
    pub fn linear_fwd(
        &mut self,
        x: &Tensor,
        t: usize,
        w: &Tensor,
        in_dim: usize,
        out_dim: usize,
        y: &Tensor,
    ) -> Result<(), WgpuError> {
        if in_dim.is_multiple_of(4) {
            // The vec4 kernels of the inference forward are the fast path.
            self.linear(x, t, &Matrix::whole(w, out_dim, in_dim)?, y)
        } else {
            self.matmul(t, in_dim, out_dim, x, false, w, true, 0.0, y)
        }
    }

    /// cpu_ops `linear_bwd`: `dx += dy · w` and `dw += dyᵀ · x` (both accumulate).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_bwd(
        &mut self,
        dy: &Tensor,
        x: &Tensor,
        t: usize,
        w: &Tensor,
        in_dim: usize,
        out_dim: usize,
        dx: &Tensor,
        dw: &Tensor,
    ) -> Result<(), WgpuError> {
        self.matmul(t, out_dim, in_dim, dy, false, w, false, 1.0, dx)?;
        self.matmul(out_dim, t, in_dim, dy, true, x, false, 1.0, dw)
    }

    /// cpu_ops `rmsnorm_fwd` over `rows` rows of `dim`: `out` and the saved `rstd`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_fwd(
        &mut self,
        x: &Tensor,
        weight: &Tensor,
        eps: f32,
        dim: usize,
        rows: usize,
        out: &Tensor,
        rstd: &Tensor,
    ) -> Result<(), WgpuError> {
        need("rms_norm input", x.len, rows * dim)?;
        need("rms_norm weight", weight.len, dim)?;
        need("rms_norm output", out.len, rows * dim)?;
        need("rms_norm rstd", rstd.len, rows)?;
        let (gx, _) = grid(rows)?;
        let values = [u32_of("rows", rows)?, u32_of("dim", dim)?, eps.to_bits(), gx];
        self.dispatch(Kernel::RmsNormRstd, &[x, weight, out, rstd], &values, rows)
    }

    /// cpu_ops `rmsnorm_bwd`: `dx += ∂L/∂x`, `dw += ∂L/∂w` (both accumulate).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_bwd(
        &mut self,
        dout: &Tensor,
        x: &Tensor,
        weight: &Tensor,
        rstd: &Tensor,
        dim: usize,
        rows: usize,
        dx: &Tensor,
        dw: &Tensor,
    ) -> Result<(), WgpuError> {
        need("rms_norm_bwd dout", dout.len, rows * dim)?;
        need("rms_norm_bwd x", x.len, rows * dim)?;
        need("rms_norm_bwd weight", weight.len, dim)?;
        need("rms_norm_bwd rstd", rstd.len, rows)?;
        need("rms_norm_bwd dx", dx.len, rows * dim)?;
        need("rms_norm_bwd dw", dw.len, dim)?;
        let (gx, _) = grid(rows)?;
        let values = [u32_of("rows", rows)?, u32_of("dim", dim)?, gx];
        self.dispatch(Kernel::RmsNormBwdDx, &[dout, x, rstd, dx, weight], &values, rows)?;
        // dw over slices of rows side by side, the slices then added to dw.
        if rows == 0 {
            return Ok(());
        }
        let slices = rows.div_ceil(NORM_DW_SLICE);
        let partial = self.split_scratch(slices * dim)?;
        let groups = (slices * dim).div_ceil(64);
        let values = [values[0], values[1], grid(groups)?.0, NORM_DW_SLICE as u32];
        self.dispatch(Kernel::RmsNormBwdDw, &[dout, x, rstd, &partial], &values, groups)?;
        self.split_k_sum(&partial, slices, 1, dim, dw, 0, dim, 1.0)
    }

    /// cpu_ops `RopeTable::fwd` (or, with `inverse`, `bwd`) in place on `rows` rows of `width`: row `r` at
    /// `positions[r]` (u32, from [`Device::seq_positions`]); `table` from [`Device::rope_table`] must cover them.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_rows(
        &mut self,
        x: &Tensor,
        rows: usize,
        width: usize,
        head_dim: usize,
        positions: &Tensor,
        table: &Tensor,
        inverse: bool,
    ) -> Result<(), WgpuError> {
        if !head_dim.is_multiple_of(2) || !width.is_multiple_of(head_dim) {
            return Err(WgpuError::Shape(format!("rope of width {width} with head_dim {head_dim}")));
        }
        need("rope input", x.len, rows * width)?;
        need("rope positions", positions.len, rows)?;
        let values = [u32_of("rows", rows)?, u32_of("width", width)?, head_dim as u32, u32::from(inverse)];
        self.dispatch(Kernel::RopeRows, &[x, table, positions], &values, (rows * width / 2).div_ceil(64))
    }

    fn attn_values(
        t: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        groups: usize,
    ) -> Result<[u32; 8], WgpuError> {
        if head_dim > 256 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(WgpuError::Shape(format!(
                "attention with {heads} heads, {kv_heads} kv heads, head dim {head_dim}"
            )));
        }
        let (gx, _) = grid(groups)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        Ok([
            u32_of("tokens", t)?,
            heads as u32,
            kv_heads as u32,
            head_dim as u32,
            0,
            (kv_heads * head_dim) as u32,
            scale.to_bits(),
            gx,
        ])
    }

    /// cpu_ops `attention_fwd` over `t` rows of sequences laid end to end (`bounds` from [`Device::seq_bounds`]):
    /// `out [t, heads·hd]` and the saved `lse [t, heads]`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_fwd(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        bounds: &Tensor,
        t: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<(), WgpuError> {
        let values = Self::attn_values(t, heads, kv_heads, head_dim, t * heads)?;
        let (qw, kw) = (heads * head_dim, kv_heads * head_dim);
        need("attention q", q.len, t * qw)?;
        need("attention k", k.len, t * kw)?;
        need("attention v", v.len, t * kw)?;
        need("attention output", out.len, t * qw)?;
        need("attention lse", lse.len, t * heads)?;
        need("attention bounds", bounds.len, 2 * t)?;
        if self.blocked_attention_for(head_dim) {
            let groups = t.div_ceil(FLASH_ROWS) * heads;
            // A short batch's few row blocks take their keys in parts (as the backward does), merged after.
            let (span, parts) = if groups < TRAIN_SPLIT_BELOW { self.key_parts(true, t, t * qw) } else { (0, 1) };
            if parts == 1 {
                let values = Self::attn_values(t, heads, kv_heads, head_dim, groups)?;
                return self.dispatch(Kernel::FlashAttentionTrain, &[q, k, v, out, lse, bounds], &values, groups);
            }
            let split_groups = groups * parts;
            let values = Self::attn_values(t, heads, kv_heads, head_dim, split_groups)?;
            let mut values = [&values[..], &[span as u32, parts as u32]].concat();
            let (o_parts, lse_parts) = (self.scratch(0, parts * t * qw)?, self.scratch(1, parts * t * heads)?);
            let split_in = [q, k, v, &o_parts, &lse_parts, bounds];
            self.dispatch(Kernel::FlashAttentionTrainSplit, &split_in, &values, split_groups)?;
            let merge = (t * qw / 4).div_ceil(64);
            values[7] = grid(merge)?.0;
            return self.dispatch(Kernel::AttentionMergeTrain, &[&o_parts, &lse_parts, out, lse], &values, merge);
        }
        self.dispatch(Kernel::AttentionTrain, &[q, k, v, out, lse, bounds], &values, t * heads)
    }

    /// cpu_ops `attention_bwd`: writes (overwrites) `dq`, `dk`, `dv` from `dout`, the inputs, the forward's `out`
    /// and `lse`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        bounds: &Tensor,
        dq: &Tensor,
        dk: &Tensor,
        dv: &Tensor,
        t: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<(), WgpuError> {
        let values = Self::attn_values(t, heads, kv_heads, head_dim, t * heads)?;
        let (qw, kw) = (heads * head_dim, kv_heads * head_dim);
        for (what, tensor, len) in [
            ("q", q, t * qw),
            ("k", k, t * kw),
            ("v", v, t * kw),
            ("out", out, t * qw),
            ("lse", lse, t * heads),
            ("dout", dout, t * qw),
            ("bounds", bounds, 2 * t),
            ("dq", dq, t * qw),
            ("dk", dk, t * kw),
            ("dv", dv, t * kw),
        ] {
            need(&format!("attention_bwd {what}"), tensor.len, len)?;
        }
        let ld = self.dev.zeros(t * heads * 2)?;
        self.dispatch(Kernel::AttentionBwdPrep, &[out, dout, lse, &ld], &values, (t * heads).div_ceil(64))?;
        if self.blocked_attention_for(head_dim) {
            let buffers = [q, k, v, dout, &ld, bounds];
            let blocks = t.div_ceil(FLASH_ROWS);
            // Few row blocks (a short batch) leave SMs idle while the long rows walk every key: each block's keys
            // (dq) and rows (dk/dv) then go in parts of the device's key split, summed after.
            let (span, parts) =
                if blocks * heads < TRAIN_SPLIT_BELOW { self.key_parts(true, t, t * qw) } else { (0, 1) };
            let groups = blocks * heads * parts;
            let values = [&Self::attn_values(t, heads, kv_heads, head_dim, groups)?[..], &[span as u32, parts as u32]];
            let values = values.concat();
            if parts == 1 {
                self.dispatch(Kernel::FlashAttentionBwdDq, &[&buffers[..], &[dq]].concat(), &values, groups)?;
            } else {
                let dq_parts = self.scratch(0, parts * t * qw)?;
                self.dispatch(Kernel::FlashAttentionBwdDq, &[&buffers[..], &[&dq_parts]].concat(), &values, groups)?;
                self.split_k_sum(&dq_parts, parts, t, qw, dq, 0, qw, 0.0)?;
            }
            // One workgroup per key block and query head (and part), each head's share summed per kv head after.
            let (head_dk, head_dv) = (self.dev.zeros(parts * t * qw)?, self.dev.zeros(parts * t * qw)?);
            let dkv_in = [&buffers[..], &[&head_dk, &head_dv]].concat();
            self.dispatch(Kernel::FlashAttentionBwdDkv, &dkv_in, &values, groups)?;
            let n = u32_of("attention_bwd dk", t * kw)?;
            let stride = u32_of("attention_bwd parts", t * qw)?;
            let group = [n, head_dim as u32, (heads / kv_heads) as u32, kw as u32, parts as u32, stride];
            self.dispatch(Kernel::GroupSum, &[dk, &head_dk], &group, (t * kw).div_ceil(64))?;
            return self.dispatch(Kernel::GroupSum, &[dv, &head_dv], &group, (t * kw).div_ceil(64));
        }
        self.dispatch(Kernel::AttentionBwdDq, &[q, k, v, dout, &ld, bounds, dq], &values, t * heads)?;
        let kv_values = Self::attn_values(t, heads, kv_heads, head_dim, t * kv_heads)?;
        self.dispatch(Kernel::AttentionBwdDkv, &[q, k, v, dout, &ld, bounds, dk, dv], &kv_values, t * kv_heads)
    }

    /// cpu_ops `swiglu_fwd`: `out = silu(gate) · up` for `n` floats (gate and up kept for the backward).
    pub fn swiglu_fwd(&mut self, gate: &Tensor, up: &Tensor, out: &Tensor, n: usize) -> Result<(), WgpuError> {
        need("swiglu gate", gate.len, n)?;
        need("swiglu up", up.len, n)?;
        need("swiglu out", out.len, n)?;
        self.dispatch(Kernel::SwigluOut, &[out, gate, up], &[u32_of("n", n)?], n.div_ceil(64))
    }

    /// cpu_ops `swiglu_bwd`: writes (overwrites) `dgate` and `dup`.
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu_bwd(
        &mut self,
        dout: &Tensor,
        gate: &Tensor,
        up: &Tensor,
        dgate: &Tensor,
        dup: &Tensor,
        n: usize,
    ) -> Result<(), WgpuError> {
        for (what, tensor) in [("dout", dout), ("gate", gate), ("up", up), ("dgate", dgate), ("dup", dup)] {
            need(&format!("swiglu_bwd {what}"), tensor.len, n)?;
        }
        self.dispatch(Kernel::SwigluBwd, &[dgate, gate, up, dup, dout], &[u32_of("n", n)?], n.div_ceil(64))
    }

    /// cpu_ops `embedding_bwd`: `dtable[ids[i]] += dout[i]` for a table of `vocab` rows of `dim` starting at float
    /// `table_off` of `dtable` (accumulates; repeated ids add up in position order). The ids are known on the host,
    /// which groups the positions of each id so that the kernel gathers instead of scattering.
    pub fn embedding_bwd(
        &mut self,
        ids: &[u32],
        dout: &Tensor,
        dim: usize,
        vocab: usize,
        dtable: &Tensor,
        table_off: usize,
    ) -> Result<(), WgpuError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(WgpuError::Shape(format!("token id {id} is outside the table of {vocab} rows")));
        }
        self.embedding_bwd_rows(ids, dout, dim, 0..vocab, dtable, table_off)
    }

    /// [`Batch::embedding_bwd`] into one row chunk of a table: only the ids in `rows` contribute, into row
    /// `id - rows.start` of `dtable` (from float `table_off`).
    pub(crate) fn embedding_bwd_rows(
        &mut self,
        ids: &[u32],
        dout: &Tensor,
        dim: usize,
        rows: std::ops::Range<usize>,
        dtable: &Tensor,
        table_off: usize,
    ) -> Result<(), WgpuError> {
        need("embedding_bwd dout", dout.len, ids.len() * dim)?;
        need("embedding_bwd dtable", dtable.len, table_off + rows.len() * dim)?;
        let mut order: Vec<u32> =
            (0..u32_of("tokens", ids.len())?).filter(|&i| rows.contains(&(ids[i as usize] as usize))).collect();
        if order.is_empty() {
            return Ok(());
        }
        // Stable: positions of one id stay in order, as the CPU adds them.
        order.sort_by_key(|&i| ids[i as usize]);
        let mut uniq = Vec::new();
        let mut offs = Vec::new();
        for (j, &i) in order.iter().enumerate() {
            let id = ids[i as usize] - rows.start as u32;
            if uniq.last() != Some(&id) {
                uniq.push(id);
                offs.push(j as u32);
            }
        }
        offs.push(order.len() as u32);
        let u = uniq.len();
        let mut meta = uniq;
        meta.extend_from_slice(&offs);
        meta.extend_from_slice(&order);
        let meta = self.dev.upload_u32(&meta)?;
        let values = [u32_of("ids", u)?, u32_of("dim", dim)?, u32_of("offset", table_off)?, 0];
        self.dispatch(Kernel::EmbedBwd, &[&meta, dout, dtable], &values, (u * dim).div_ceil(64))
    }

    /// Classes per chunk so that one `[n, chunk]` logits buffer stays within a storage binding.
    fn head_chunk(&self, n: usize, vocab: usize, chunk: usize) -> Result<usize, WgpuError> {
        let fit = (self.dev.max_binding / 4) as usize / n.max(1);
        let chunk = chunk.min(fit).clamp(1, vocab.max(1));
        if fit == 0 {
            return Err(WgpuError::TooLarge { bytes: n as u64 * 4, max: self.dev.max_binding });
        }
        Ok(chunk)
    }

    #[allow(clippy::too_many_arguments)]
    fn head_logits(
        &mut self,
        x: &Tensor,
        n: usize,
        hidden: usize,
        w: &Tensor,
        c0: usize,
        cw: usize,
        logits: &Tensor,
    ) -> Result<(), WgpuError> {
        let wv = MatView::transposed(w, c0 * hidden, hidden);
        self.matmul_strided(n, hidden, cw, 1, MatView::rows(x, 0, hidden), wv, 0.0, MatView::rows(logits, 0, cw))
    }

    /// cpu_ops `lm_head_fwd`: the LM head `x [n, hidden] · w [vocab, hidden]ᵀ` reduced `chunk` classes at a time
    /// to each row's target log-prob, entropy and log-sum-exp, into `state` (from [`Device::head_state`]; read
    /// with [`Device::head_stats`]). `targets` are u32. The chunk shrinks if `[n, chunk]` would pass a binding.
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_fwd(
        &mut self,
        x: &Tensor,
        n: usize,
        hidden: usize,
        w: &Tensor,
        vocab: usize,
        targets: &Tensor,
        chunk: usize,
        state: &Tensor,
    ) -> Result<(), WgpuError> {
        need("lm_head w", w.len, vocab * hidden)?;
        self.lm_head_fwd_parts(x, n, hidden, &[HeadPart { row0: 0, rows: vocab, w, dw: None }], targets, chunk, state)
    }

    /// [`Batch::lm_head_fwd`] over a weight split into row chunks (`parts`, in order, covering the vocabulary).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lm_head_fwd_parts(
        &mut self,
        x: &Tensor,
        n: usize,
        hidden: usize,
        parts: &[HeadPart],
        targets: &Tensor,
        chunk: usize,
        state: &Tensor,
    ) -> Result<(), WgpuError> {
        let vocab = check_parts(parts, hidden)?;
        need("lm_head x", x.len, n * hidden)?;
        need("lm_head targets", targets.len, n)?;
        need("lm_head state", state.len, n * HEAD_STATE)?;
        if n == 0 {
            return Ok(());
        }
        let chunk = self.head_chunk(n, vocab, chunk)?;
        let logits = self.dev.zeros(n * chunk)?;
        let (gx, _) = grid(n)?;
        for part in parts {
            for r0 in (0..part.rows).step_by(chunk) {
                let cw = chunk.min(part.rows - r0);
                let c0 = part.row0 + r0;
                self.head_logits(x, n, hidden, part.w, r0, cw, &logits)?;
                let last = c0 + cw == vocab;
                let values = [u32_of("rows", n)?, cw as u32, u32_of("class", c0)?, u32::from(last), 0, gx];
                self.dispatch(Kernel::HeadUpdate, &[&logits, targets, state], &values, n)?;
            }
        }
        Ok(())
    }

    /// cpu_ops `lm_head_bwd`: from `dlogp` (and optionally `dentropy`) per row and the forward's `state`,
    /// recomputes each logits chunk and accumulates `dx [n, hidden]` and `dw [vocab, hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_bwd(
        &mut self,
        x: &Tensor,
        n: usize,
        hidden: usize,
        w: &Tensor,
        vocab: usize,
        targets: &Tensor,
        chunk: usize,
        state: &Tensor,
        dlogp: &Tensor,
        dentropy: Option<&Tensor>,
        dx: &Tensor,
        dw: &Tensor,
    ) -> Result<(), WgpuError> {
        need("lm_head w", w.len, vocab * hidden)?;
        let parts = [HeadPart { row0: 0, rows: vocab, w, dw: Some(dw) }];
        self.lm_head_bwd_parts(x, n, hidden, &parts, targets, chunk, state, dlogp, dentropy, dx)
    }

    /// [`Batch::lm_head_bwd`] over a weight (and its gradient) split into row chunks.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lm_head_bwd_parts(
        &mut self,
        x: &Tensor,
        n: usize,
        hidden: usize,
        parts: &[HeadPart],
        targets: &Tensor,
        chunk: usize,
        state: &Tensor,
        dlogp: &Tensor,
        dentropy: Option<&Tensor>,
        dx: &Tensor,
    ) -> Result<(), WgpuError> {
        let vocab = check_parts(parts, hidden)?;
        need("lm_head x", x.len, n * hidden)?;
        need("lm_head targets", targets.len, n)?;
        need("lm_head state", state.len, n * HEAD_STATE)?;
        need("lm_head dlogp", dlogp.len, n)?;
        need("lm_head dx", dx.len, n * hidden)?;
        if let Some(d) = dentropy {
            need("lm_head dentropy", d.len, n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let chunk = self.head_chunk(n, vocab, chunk)?;
        let logits = self.dev.zeros(n * chunk)?;
        let (gx, _) = grid(n)?;
        for part in parts {
            let Some(dw) = part.dw else {
                return Err(WgpuError::Shape("lm_head_bwd needs the weight gradient of every part".into()));
            };
            need("lm_head dw", dw.len, part.rows * hidden)?;
            for r0 in (0..part.rows).step_by(chunk) {
                let cw = chunk.min(part.rows - r0);
                let c0 = part.row0 + r0;
                self.head_logits(x, n, hidden, part.w, r0, cw, &logits)?;
                let has = u32::from(dentropy.is_some());
                let values = [u32_of("rows", n)?, cw as u32, u32_of("class", c0)?, 0, has, gx];
                let de = dentropy.unwrap_or(dlogp);
                let groups = (n * cw).div_ceil(64);
                self.dispatch(Kernel::HeadGrad, &[&logits, targets, state, dlogp, de], &values, groups)?;
                // dx += dlogits · w_c;  dw_c += dlogitsᵀ · x
                let (lg, wc) = (MatView::rows(&logits, 0, cw), MatView::rows(part.w, r0 * hidden, hidden));
                self.matmul_strided(n, cw, hidden, 1, lg, wc, 1.0, MatView::rows(dx, 0, hidden))?;
                let (lgt, xv) = (MatView::transposed(&logits, 0, cw), MatView::rows(x, 0, hidden));
                self.matmul_strided(cw, n, hidden, 1, lgt, xv, 1.0, MatView::rows(dw, r0 * hidden, hidden))?;
            }
        }
        Ok(())
    }

    /// cpu_ops `adamw_step` on floats `off..off + n` of the flat buffers `p`, `g`, `m`, `v` (step `t` from 1). With
    /// `clip = Some((norm, max_norm))` the gradients are first clipped as cpu_ops `clip_grad_norm` does (scaled by
    /// `max_norm / norm` when the norm is finite and past `max_norm`, and written back so), `norm` being the
    /// one-float tensor of [`Batch::grad_norm`] over all the gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &mut self,
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        off: usize,
        n: usize,
        t: u64,
        cfg: &AdamW,
        weight_decay: f32,
        clip: Option<(&Tensor, f32)>,
    ) -> Result<(), WgpuError> {
        for (what, tensor) in [("params", p), ("grads", g), ("m", m), ("v", v)] {
            need(&format!("adamw {what}"), tensor.len, off + n)?;
        }
        let t = t.clamp(1, i32::MAX as u64) as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = 1.0 - cfg.beta2.powi(t);
        let decay = 1.0 - cfg.lr * weight_decay;
        let values = [
            u32_of("n", n)?,
            u32_of("offset", off)?,
            0,
            0,
            cfg.lr.to_bits(),
            cfg.beta1.to_bits(),
            cfg.beta2.to_bits(),
            cfg.eps.to_bits(),
            decay.to_bits(),
            bc1.to_bits(),
            bc2.to_bits(),
            clip.map_or(0.0, |(_, max_norm)| max_norm).to_bits(),
        ];
        match clip {
            None => self.dispatch(Kernel::AdamW, &[p, g, m, v], &values, n.div_ceil(64)),
            Some((norm, _)) => {
                need("clip norm", norm.len, 1)?;
                self.dispatch(Kernel::AdamWClipped, &[p, g, m, v, norm], &values, n.div_ceil(64))
            }
        }
    }

    /// cpu_ops `grad_norm` over several gradient tensors together (two passes: per-workgroup sums of squares,
    /// then one reduction); returns a one-float tensor that holds the norm once the batch has run.
    pub fn grad_norm(&mut self, grads: &[&Tensor]) -> Result<Tensor, WgpuError> {
        let slots: usize = grads.iter().map(|g| g.len.div_ceil(NORM_SEGMENT)).sum();
        let acc = self.dev.zeros(slots + 1)?;
        let mut slot = 0;
        for g in grads {
            let groups = g.len.div_ceil(NORM_SEGMENT);
            if groups == 0 {
                continue;
            }
            let (gx, _) = grid(groups)?;
            let values = [u32_of("n", g.len)?, 0, u32_of("slot", slot)?, gx];
            self.dispatch(Kernel::SumsqPartial, &[&acc, g], &values, groups)?;
            slot += groups;
        }
        let norm = self.dev.zeros(1)?;
        self.dispatch(Kernel::SumsqFinal, &[&acc], &[u32_of("slots", slots)?, 0, u32_of("slot", slots)?], 1)?;
        self.copy(&acc, slots, &norm, 0, 1)?;
        Ok(norm)
    }

    /// cpu_ops `grpo_loss` over `n` tokens (`mask` as u32 0/1): writes `dlogp` and `out = [loss, clipped, tokens]`
    /// (read with [`Device::grpo_stats`]).
    #[allow(clippy::too_many_arguments)]
    pub fn grpo_loss(
        &mut self,
        logp: &Tensor,
        old_logp: &Tensor,
        adv: &Tensor,
        mask: &Tensor,
        n: usize,
        clip: &GrpoClip,
        denom: f32,
        dlogp: &Tensor,
        out: &Tensor,
    ) -> Result<(), WgpuError> {
        need("grpo logp", logp.len, n)?;
        self.grpo_strided(MatView::rows(logp, 0, 1), old_logp, adv, mask, n, clip, denom, dlogp, out)
    }

    /// [`Batch::grpo_loss`] reading the log-probs straight from an LM head state (no copy).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grpo_loss_from_head(
        &mut self,
        state: &Tensor,
        old_logp: &Tensor,
        adv: &Tensor,
        mask: &Tensor,
        n: usize,
        clip: &GrpoClip,
        denom: f32,
        dlogp: &Tensor,
        out: &Tensor,
    ) -> Result<(), WgpuError> {
        need("grpo head state", state.len, n * HEAD_STATE)?;
        self.grpo_strided(MatView::rows(state, 4, HEAD_STATE), old_logp, adv, mask, n, clip, denom, dlogp, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn grpo_strided(
        &mut self,
        logp: MatView,
        old_logp: &Tensor,
        adv: &Tensor,
        mask: &Tensor,
        n: usize,
        clip: &GrpoClip,
        denom: f32,
        dlogp: &Tensor,
        out: &Tensor,
    ) -> Result<(), WgpuError> {
        for (what, tensor) in [("old_logp", old_logp), ("adv", adv), ("mask", mask), ("dlogp", dlogp)] {
            need(&format!("grpo {what}"), tensor.len, n)?;
        }
        need("grpo out", out.len, 3)?;
        let values = [
            u32_of("n", n)?,
            u32::from(clip.dual_clip.is_some()),
            clip.clip_eps.to_bits(),
            clip.dual_clip.unwrap_or(0.0).to_bits(),
            denom.to_bits(),
            u32_of("offset", logp.off)?,
            u32_of("stride", logp.rs)?,
        ];
        self.dispatch(Kernel::GrpoLoss, &[logp.t, old_logp, adv, mask, dlogp, out], &values, 1)
    }
}
