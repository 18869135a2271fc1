//! The training ops of the native CPU backend: forward and backward of every op a LLaMA training step needs, as
//! plain functions over row-major f32 slices. They are what `train.rs` is built from and the oracle a wgpu
//! backend's kernels will be checked against, so each takes its shapes explicitly and allocates only scratch.
//!
//! Conventions: a matrix `[r, c]` is `r` rows of `c`; weights are `[out, in]` as in GGUF; "accumulate" in a doc
//! comment means the output is added to (gradients of shared tensors), otherwise it is overwritten.

use rayon::prelude::*;

/// Rows per rayon task in the row-wise ops: big enough that scheduling costs nothing next to the work.
const ROWS_PER_TASK: usize = 16;

// ---------------------------------------------------------------------------------------------------------------
// exp

/// `exp(x)` for the softmaxes, branch-free so that loops over it vectorise (libm's `expf` does not, and the
/// attention and LM-head softmaxes call it ~10⁸ times per SmolLM2 step). Range reduction `x = k·ln2 + r`,
/// `|r| ≤ ln2/2`, then a degree-6 Taylor polynomial: relative error below 3e-7. Inputs below -87 (including
/// -inf) give ~1e-38 instead of 0, which no softmax sum can tell apart.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to the nearest integer
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

// ---------------------------------------------------------------------------------------------------------------
// Matmul

/// `c[m, n] = op(a)[m, k] · op(b)[k, n] + beta · c`, where `op(a)` is `a` (`[m, k]`) or, with `a_t`, the
/// transpose of `a` stored as `[k, m]`; likewise `b` is `[k, n]` or, with `b_t`, `[n, k]`. With `beta == 0` the
/// old contents of `c` are ignored. Runs on `matrixmultiply`'s threaded sgemm.
#[allow(clippy::too_many_arguments)]
pub fn matmul(m: usize, k: usize, n: usize, a: &[f32], a_t: bool, b: &[f32], b_t: bool, beta: f32, c: &mut [f32]) {
    let (rsa, csa) = if a_t { (1, m) } else { (k, 1) };
    let (rsb, csb) = if b_t { (1, k) } else { (n, 1) };
    matmul_strided(m, k, n, a, rsa, csa, b, rsb, csb, beta, c, n, 1);
}

/// The general strided sgemm (`c = a · b + beta · c` with explicit row and column strides), bounds-checked so
/// that callers can address one head's columns inside a wider activation without copying.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |r: usize, c: usize, rs: usize, cs: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(last(m, n, rsc, csc) < c.len(), "matmul: c is too small for [{m}, {n}]");
    if k == 0 {
        c.iter_mut().for_each(|v| *v *= beta);
        return;
    }
    assert!(last(m, k, rsa, csa) < a.len(), "matmul: a is too small for [{m}, {k}]");
    assert!(last(k, n, rsb, csb) < b.len(), "matmul: b is too small for [{k}, {n}]");
    // SAFETY: the asserts above show that every element the strides address lies inside its slice, and `c` is
    // borrowed mutably so it aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
}

/// Forward of a linear layer: `y[t, out] = x[t, in] · w[out, in]ᵀ`.
pub fn linear_fwd(x: &[f32], t: usize, w: &[f32], in_dim: usize, out_dim: usize, y: &mut [f32]) {
    matmul(t, in_dim, out_dim, x, false, w, true, 0.0, y);
}

/// Backward of `linear_fwd`: `dx += dy · w` and `dw += dyᵀ · x` (both accumulate).
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd(
    dy: &[f32],
    x: &[f32],
    t: usize,
    w: &[f32],
    in_dim: usize,
    out_dim: usize,
    dx: &mut [f32],
    dw: &mut [f32],
) {
    matmul(t, out_dim, in_dim, dy, false, w, false, 1.0, dx);
    matmul(out_dim, t, in_dim, dy, true, x, false, 1.0, dw);
}

// ---------------------------------------------------------------------------------------------------------------
// Embedding, residual

/// Gathers the rows of `table` (`[vocab, dim]`) named by `ids` into `out` (`[ids.len(), dim]`). Ids must be in
/// range (the model checks them first).
pub fn embedding_fwd(ids: &[u32], table: &[f32], dim: usize, out: &mut [f32]) {
    for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
        let id = id as usize;
        row.copy_from_slice(&table[id * dim..(id + 1) * dim]);
    }
}

/// Scatter-add backward of `embedding_fwd`: `dtable[ids[i]] += dout[i]` (accumulates; repeated ids add up).
pub fn embedding_bwd(ids: &[u32], dout: &[f32], dim: usize, dtable: &mut [f32]) {
    for (row, &id) in dout.chunks_exact(dim).zip(ids) {
        let id = id as usize;
        dtable[id * dim..(id + 1) * dim].iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
}

/// `x += y` (the residual connection; its backward passes the gradient to both branches unchanged).
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm

/// `out = x · rstd · w` per row of `dim`, with `rstd = 1/sqrt(mean(x²) + eps)` saved for the backward.
pub fn rmsnorm_fwd(x: &[f32], w: &[f32], eps: f32, dim: usize, out: &mut [f32], rstd: &mut [f32]) {
    out.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|((out, x), rstd)| {
            for ((o, row), r) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(rstd.iter_mut()) {
                let ms = row.iter().map(|v| (v * v) as f64).sum::<f64>() / dim as f64;
                let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
                *r = inv;
                for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
                    *o = v * inv * w;
                }
            }
        });
}

/// Backward of `rmsnorm_fwd`: `dx += ∂L/∂x` and `dw += ∂L/∂w` (both accumulate), from the saved `rstd`.
pub fn rmsnorm_bwd(dout: &[f32], x: &[f32], w: &[f32], rstd: &[f32], dim: usize, dx: &mut [f32], dw: &mut [f32]) {
    dx.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(dout.par_chunks(dim * ROWS_PER_TASK))
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dx, dout), x), rstd)| {
            for (((dx, dy), x), &r) in
                dx.chunks_exact_mut(dim).zip(dout.chunks_exact(dim)).zip(x.chunks_exact(dim)).zip(rstd)
            {
                // dx = r·(w·dy) - r³·x·mean(w·dy·x)
                let dot = dy.iter().zip(w).zip(x).map(|((g, w), x)| (g * w * x) as f64).sum::<f64>() / dim as f64;
                let c = (dot as f32) * r * r;
                for (((d, g), w), x) in dx.iter_mut().zip(dy).zip(w).zip(x) {
                    *d += r * (g * w - c * x);
                }
            }
        });
    for ((dy, x), &r) in dout.chunks_exact(dim).zip(x.chunks_exact(dim)).zip(rstd) {
        for ((d, g), x) in dw.iter_mut().zip(dy).zip(x) {
            *d += g * x * r;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// RoPE

/// cos/sin of `pos · θ^(-2i/d)` for every position below `max_pos` and pair `i`, computed exactly as
/// `model::rope` does so that training and inference see bit-identical rotations.
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub head_dim: usize,
    pub max_pos: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f32, max_pos: usize) -> RopeTable {
        let half = head_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(max_pos * half), Vec::with_capacity(max_pos * half));
        for pos in 0..max_pos {
            for i in 0..half {
                let freq = theta.powf(-((2 * i) as f32) / head_dim as f32);
                let (s, c) = (pos as f32 * freq).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        RopeTable { head_dim, max_pos, cos, sin }
    }

    fn rotate(&self, x: &mut [f32], positions: &[usize], sign: f32) {
        let (hd, half) = (self.head_dim, self.head_dim / 2);
        let width = x.len() / positions.len().max(1);
        x.par_chunks_mut(width).zip(positions.par_iter()).for_each(|(row, &pos)| {
            assert!(pos < self.max_pos, "rope: position {pos} is past the table's {}", self.max_pos);
            let (cos, sin) = (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (c, s) = (cos[i], sign * sin[i]);
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * c - b * s;
                    head[2 * i + 1] = a * s + b * c;
                }
            }
        });
    }

    /// Rotates the adjacent pairs of every head of every row (`x` is `[positions.len(), heads · head_dim]`).
    pub fn fwd(&self, x: &mut [f32], positions: &[usize]) {
        self.rotate(x, positions, 1.0);
    }

    /// Backward of `fwd`: the rotation is orthogonal, so the gradient rotates by the opposite angle.
    pub fn bwd(&self, dx: &mut [f32], positions: &[usize]) {
        self.rotate(dx, positions, -1.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Causal grouped-query attention

/// Shapes of one attention call: a batch of sequences laid end to end (`seq_lens`), `heads` query heads sharing
/// `kv_heads` key/value heads of `head_dim`.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape<'a> {
    pub seq_lens: &'a [usize],
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape<'_> {
    fn starts(&self) -> Vec<usize> {
        let mut acc = 0;
        self.seq_lens
            .iter()
            .map(|l| {
                let s = acc;
                acc += l;
                s
            })
            .collect()
    }
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Query rows per block: a block of rows `[r0, r1)` only sees keys `[0, r1)`, so blocking skips most of the
/// masked upper triangle (at 512 tokens the matmuls do 56% of the full square instead of 100%).
const ATTN_BLOCK: usize = 64;

/// Column tiles of attention's matmuls. `matrixmultiply` splits a gemm across its own threads once `m·k + k·n`
/// reaches 2·2¹⁴; attention already runs one rayon task per head, where a second level of threads only contends
/// (and wakes a pool per call), so each gemm is cut into key-column tiles below that size.
fn attn_col_tile(rows: usize, hd: usize) -> usize {
    const LIMIT: usize = 2 << 14;
    let c = (LIMIT / hd).saturating_sub(rows).min(LIMIT / (rows + hd)).min((LIMIT / rows.max(1)).saturating_sub(hd));
    (c.saturating_sub(1) / 16 * 16).max(16)
}

/// `(c0, c1)` column ranges of width `tile` covering `0..cols`.
fn col_tiles(cols: usize, tile: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..cols).step_by(tile).map(move |c0| (c0, (c0 + tile).min(cols)))
}

/// `s[rows, cols] = q_rows · k_colsᵀ` (unscaled) for one head, into `s` with row stride `cols`; `q` and `k`
/// point at the first row's head columns.
#[allow(clippy::too_many_arguments)]
fn scores(q: &[f32], q_stride: usize, k: &[f32], k_stride: usize, rows: usize, cols: usize, hd: usize, s: &mut [f32]) {
    for (c0, c1) in col_tiles(cols, attn_col_tile(ATTN_BLOCK, hd)) {
        matmul_strided(rows, hd, c1 - c0, q, q_stride, 1, &k[c0 * k_stride..], 1, k_stride, 0.0, &mut s[c0..], cols, 1);
    }
}

/// Turns a block of raw scores into causal probabilities in place: row `i` (absolute `r0 + i`) keeps columns
/// `0..=r0+i`, `exp(scale·s - lse)`, zero past them. With `lse` given it recomputes; otherwise it computes the
/// log-sum-exp and writes it to `lse_out`.
fn causal_softmax(
    s: &mut [f32],
    cols: usize,
    r0: usize,
    scale: f32,
    lse_in: Option<&dyn Fn(usize) -> f32>,
    lse_out: &mut [f32],
) {
    for (i, row) in s.chunks_exact_mut(cols).enumerate() {
        let visible = r0 + i + 1;
        let (vis, masked) = row.split_at_mut(visible);
        masked.fill(0.0);
        match lse_in {
            Some(lse) => {
                let l = lse(i);
                vis.iter_mut().for_each(|x| *x = exp_f32(*x * scale - l));
            }
            None => {
                let max = vis.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
                vis.iter_mut().for_each(|x| *x = exp_f32(*x * scale - max));
                let sum: f32 = vis.iter().sum();
                let inv = 1.0 / sum;
                vis.iter_mut().for_each(|x| *x *= inv);
                lse_out[i] = max + sum.ln();
            }
        }
    }
}

/// Forward: `out = softmax(q·kᵀ/√d + causal mask) · v` per sequence and head. `q`/`out` are `[tokens, heads·d]`,
/// `k`/`v` are `[tokens, kv_heads·d]`; `lse` (`[tokens, heads]`) keeps each row's log-sum-exp of the scaled scores
/// so that the backward recomputes the probabilities instead of storing `t²` of them.
pub fn attention_fwd(shape: AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], lse: &mut [f32]) {
    let AttnShape { heads, kv_heads, head_dim: hd, .. } = shape;
    let (qw, kw, group, scale) = (heads * hd, kv_heads * hd, heads / kv_heads, shape.scale());
    let n: usize = shape.seq_lens.iter().sum();
    assert!(q.len() == n * qw && k.len() == n * kw && v.len() == n * kw && lse.len() == n * heads, "attention: shapes");
    let starts = shape.starts();
    let tasks: Vec<(usize, usize)> = (0..shape.seq_lens.len())
        .flat_map(|s| (0..heads).map(move |h| (s, h)))
        .filter(|&(s, _)| shape.seq_lens[s] > 0)
        .collect();
    let results: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(s, h)| {
            let (t, st, g) = (shape.seq_lens[s], starts[s], h / group);
            let (qh, kg, vg) = (&q[st * qw + h * hd..], &k[st * kw + g * hd..], &v[st * kw + g * hd..]);
            let mut p = vec![0.0f32; ATTN_BLOCK.min(t) * t];
            let mut o = vec![0.0f32; t * hd];
            let mut row_lse = vec![0.0f32; t];
            let tile = attn_col_tile(ATTN_BLOCK, hd);
            for r0 in (0..t).step_by(ATTN_BLOCK) {
                let (r1, cols) = ((r0 + ATTN_BLOCK).min(t), (r0 + ATTN_BLOCK).min(t));
                let pb = &mut p[..(r1 - r0) * cols];
                scores(&qh[r0 * qw..], qw, kg, kw, r1 - r0, cols, hd, pb);
                causal_softmax(pb, cols, r0, scale, None, &mut row_lse[r0..r1]);
                for (c0, c1) in col_tiles(cols, tile) {
                    let beta = if c0 == 0 { 0.0 } else { 1.0 };
                    let (pt, vt) = (&pb[c0..], &vg[c0 * kw..]);
                    matmul_strided(r1 - r0, c1 - c0, hd, pt, cols, 1, vt, kw, 1, beta, &mut o[r0 * hd..], hd, 1);
                }
            }
            (o, row_lse)
        })
        .collect();
    for (&(s, h), (o, row_lse)) in tasks.iter().zip(results) {
        let st = starts[s];
        for (i, orow) in o.chunks_exact(hd).enumerate() {
            out[(st + i) * qw + h * hd..(st + i) * qw + (h + 1) * hd].copy_from_slice(orow);
            lse[(st + i) * heads + h] = row_lse[i];
        }
    }
}

/// Backward of `attention_fwd`: writes (overwrites) `dq`, `dk`, `dv` from `dout`, the inputs, the forward's `out`
/// and `lse`. Work is split by (sequence, kv head) so that each task owns its `dk`/`dv` columns.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    shape: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let AttnShape { heads, kv_heads, head_dim: hd, .. } = shape;
    let (qw, kw, group, scale) = (heads * hd, kv_heads * hd, heads / kv_heads, shape.scale());
    let starts = shape.starts();
    let tasks: Vec<(usize, usize)> = (0..shape.seq_lens.len())
        .flat_map(|s| (0..kv_heads).map(move |g| (s, g)))
        .filter(|&(s, _)| shape.seq_lens[s] > 0)
        .collect();
    type Grads = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);
    let results: Vec<Grads> = tasks
        .par_iter()
        .map(|&(s, g)| {
            let (t, st) = (shape.seq_lens[s], starts[s]);
            let (kg, vg) = (&k[st * kw + g * hd..], &v[st * kw + g * hd..]);
            let mut p = vec![0.0f32; ATTN_BLOCK.min(t) * t];
            let mut dp = vec![0.0f32; ATTN_BLOCK.min(t) * t];
            let mut dk_g = vec![0.0f32; t * hd];
            let mut dv_g = vec![0.0f32; t * hd];
            let mut dqs = Vec::with_capacity(group);
            let tile = attn_col_tile(ATTN_BLOCK, hd);
            for h in g * group..(g + 1) * group {
                let (qh, oh, doh) = (&q[st * qw + h * hd..], &out[st * qw + h * hd..], &dout[st * qw + h * hd..]);
                let mut dq_h = vec![0.0f32; t * hd];
                for r0 in (0..t).step_by(ATTN_BLOCK) {
                    let (r1, cols) = ((r0 + ATTN_BLOCK).min(t), (r0 + ATTN_BLOCK).min(t));
                    let rb = r1 - r0;
                    let (pb, dpb) = (&mut p[..rb * cols], &mut dp[..rb * cols]);
                    scores(&qh[r0 * qw..], qw, kg, kw, rb, cols, hd, pb);
                    let row_lse = |i: usize| lse[(st + r0 + i) * heads + h];
                    causal_softmax(pb, cols, r0, scale, Some(&row_lse), &mut []);
                    let (q_b, o_b, do_b) = (&qh[r0 * qw..], &oh[r0 * qw..], &doh[r0 * qw..]);
                    // dv[..cols] += pᵀ · do; dp = do · v[..cols]ᵀ
                    for (c0, c1) in col_tiles(cols, tile) {
                        let (pt, vt, cw) = (&pb[c0..], &vg[c0 * kw..], c1 - c0);
                        matmul_strided(cw, rb, hd, pt, 1, cols, do_b, qw, 1, 1.0, &mut dv_g[c0 * hd..], hd, 1);
                        matmul_strided(rb, hd, cw, do_b, qw, 1, vt, 1, kw, 0.0, &mut dpb[c0..], cols, 1);
                    }
                    // ds = p ⊙ (dp - rowsum(do ⊙ o)), scaled here once for both dq and dk.
                    for (i, (prow, dprow)) in pb.chunks_exact(cols).zip(dpb.chunks_exact_mut(cols)).enumerate() {
                        let (o_i, do_i) = (&o_b[i * qw..i * qw + hd], &do_b[i * qw..i * qw + hd]);
                        let d: f32 = o_i.iter().zip(do_i).map(|(a, b)| a * b).sum();
                        for (x, &pv) in dprow.iter_mut().zip(prow) {
                            *x = pv * (*x - d) * scale;
                        }
                    }
                    for (c0, c1) in col_tiles(cols, tile) {
                        let (dst, kt, cw) = (&dpb[c0..], &kg[c0 * kw..], c1 - c0);
                        let beta = if c0 == 0 { 0.0 } else { 1.0 };
                        matmul_strided(rb, cw, hd, dst, cols, 1, kt, kw, 1, beta, &mut dq_h[r0 * hd..], hd, 1);
                        matmul_strided(cw, rb, hd, dst, 1, cols, q_b, qw, 1, 1.0, &mut dk_g[c0 * hd..], hd, 1);
                    }
                }
                dqs.push(dq_h);
            }
            (dqs, dk_g, dv_g)
        })
        .collect();
    for (&(s, g), (dqs, dk_g, dv_g)) in tasks.iter().zip(results) {
        let st = starts[s];
        for (j, dq_h) in dqs.iter().enumerate() {
            let h = g * group + j;
            for (i, r) in dq_h.chunks_exact(hd).enumerate() {
                dq[(st + i) * qw + h * hd..(st + i) * qw + (h + 1) * hd].copy_from_slice(r);
            }
        }
        for (i, (rk, rv)) in dk_g.chunks_exact(hd).zip(dv_g.chunks_exact(hd)).enumerate() {
            dk[(st + i) * kw + g * hd..(st + i) * kw + (g + 1) * hd].copy_from_slice(rk);
            dv[(st + i) * kw + g * hd..(st + i) * kw + (g + 1) * hd].copy_from_slice(rv);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// SwiGLU

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `out = silu(gate) · up`, elementwise.
pub fn swiglu_fwd(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(1 << 14).zip(gate.par_chunks(1 << 14)).zip(up.par_chunks(1 << 14)).for_each(|((o, g), u)| {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
        }
    });
}

/// Backward of `swiglu_fwd`: writes (overwrites) `dgate` and `dup`.
pub fn swiglu_bwd(dout: &[f32], gate: &[f32], up: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    const C: usize = 1 << 14;
    dgate
        .par_chunks_mut(C)
        .zip(dup.par_chunks_mut(C))
        .zip(dout.par_chunks(C))
        .zip(gate.par_chunks(C).zip(up.par_chunks(C)))
        .for_each(|(((dg, du), dy), (g, u))| {
            for ((((dg, du), &dy), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(dy).zip(g).zip(u) {
                let s = sigmoid(g);
                *du = dy * g * s;
                *dg = dy * u * s * (1.0 + g * (1.0 - s));
            }
        });
}

// ---------------------------------------------------------------------------------------------------------------
// LM head, log-softmax, target log-prob, entropy — in vocab chunks

/// Per-row results of the chunked LM head.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadStats {
    /// `log softmax(logits)[target]`.
    pub logp: Vec<f32>,
    /// `-Σ p log p` of the whole distribution.
    pub entropy: Vec<f32>,
    /// `log Σ exp(logits)`, kept for the backward.
    pub lse: Vec<f32>,
}

/// The LM head `logits = x · wᵀ` (`x` `[n, hidden]`, `w` `[vocab, hidden]`) reduced on the fly to each row's
/// target log-prob, entropy and log-sum-exp, `chunk` classes at a time with an online log-sum-exp, so that no
/// `[n, vocab]` buffer exists (only `[n, chunk]`).
pub fn lm_head_fwd(
    x: &[f32],
    n: usize,
    hidden: usize,
    w: &[f32],
    vocab: usize,
    targets: &[u32],
    chunk: usize,
) -> HeadStats {
    let chunk = chunk.clamp(1, vocab.max(1));
    // Per row: running max, Σ exp(l - max), Σ exp(l - max)·l, and the target's logit.
    let mut acc = vec![(f32::NEG_INFINITY, 0.0f64, 0.0f64, 0.0f32); n];
    let mut logits = vec![0.0f32; n * chunk];
    for c0 in (0..vocab).step_by(chunk) {
        let cw = chunk.min(vocab - c0);
        let lg = &mut logits[..n * cw];
        matmul(n, hidden, cw, x, false, &w[c0 * hidden..(c0 + cw) * hidden], true, 0.0, lg);
        acc.par_iter_mut().zip(lg.par_chunks(cw)).zip(targets.par_iter()).for_each(|((a, row), &tgt)| {
            // The chunk's sums in f32 relative to its own max (vectorised), merged into the row's f64 totals.
            let cmax = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let (mut s, mut t) = (0.0f32, 0.0f32);
            for &l in row {
                let e = exp_f32(l - cmax);
                s += e;
                t += e * (l - cmax);
            }
            // Σ e^(l-m)·l = Σ e^(l-m)·(l - cmax) + cmax·Σ e^(l-m)
            let (s, t) = (s as f64, t as f64 + cmax as f64 * s as f64);
            let m = a.0.max(cmax);
            let (old, new) = (((a.0 - m) as f64).exp(), ((cmax - m) as f64).exp());
            let tgt = tgt as usize;
            if (c0..c0 + cw).contains(&tgt) {
                a.3 = row[tgt - c0];
            }
            *a = (m, a.1 * old + s * new, a.2 * old + t * new, a.3);
        });
    }
    let mut out = HeadStats { logp: vec![0.0; n], entropy: vec![0.0; n], lse: vec![0.0; n] };
    for (i, &(m, s, t, tl)) in acc.iter().enumerate() {
        let lse = m as f64 + s.ln();
        out.lse[i] = lse as f32;
        out.logp[i] = (tl as f64 - lse) as f32;
        out.entropy[i] = (lse - t / s) as f32;
    }
    out
}

/// Backward of `lm_head_fwd` for upstream gradients on the target log-prob (`dlogp`) and, optionally, on the
/// entropy (`dentropy`): recomputes each logits chunk, forms `∂L/∂logits` there, and accumulates `dx` and `dw`.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_bwd(
    x: &[f32],
    n: usize,
    hidden: usize,
    w: &[f32],
    vocab: usize,
    targets: &[u32],
    chunk: usize,
    stats: &HeadStats,
    dlogp: &[f32],
    dentropy: Option<&[f32]>,
    dx: &mut [f32],
    dw: &mut [f32],
) {
    assert!(dlogp.len() == n && stats.lse.len() == n && dx.len() == n * hidden, "lm_head_bwd: shapes");
    let chunk = chunk.clamp(1, vocab.max(1));
    let mut logits = vec![0.0f32; n * chunk];
    for c0 in (0..vocab).step_by(chunk) {
        let cw = chunk.min(vocab - c0);
        let wc = &w[c0 * hidden..(c0 + cw) * hidden];
        let lg = &mut logits[..n * cw];
        matmul(n, hidden, cw, x, false, wc, true, 0.0, lg);
        lg.par_chunks_mut(cw).enumerate().for_each(|(i, row)| {
            let (lse, h, gl) = (stats.lse[i], stats.entropy[i], dlogp[i]);
            let ge = dentropy.map_or(0.0, |d| d[i]);
            for (j, l) in row.iter_mut().enumerate() {
                let logp = *l - lse;
                let p = exp_f32(logp);
                // ∂logp_target/∂l_j = δ - p_j;  ∂H/∂l_j = -p_j (log p_j + H)
                let mut g = -gl * p - ge * p * (logp + h);
                if c0 + j == targets[i] as usize {
                    g += gl;
                }
                *l = g;
            }
        });
        matmul(n, cw, hidden, lg, false, wc, false, 1.0, dx);
        matmul(cw, n, hidden, lg, true, x, false, 1.0, &mut dw[c0 * hidden..(c0 + cw) * hidden]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Optimiser, gradient norm

/// AdamW hyper-parameters (PyTorch's defaults except the learning rate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> AdamW {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// One AdamW update (step `t`, counted from 1) of a flat parameter buffer: the moments `m`, `v` are updated from
/// `g`, and the decay is decoupled (`p ← p·(1 - lr·wd)` before the Adam step, as `torch.optim.AdamW` does).
/// `weight_decay` overrides `cfg.weight_decay` so a caller can exempt norms and biases.
pub fn adamw_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], t: u64, cfg: &AdamW, weight_decay: f32) {
    let t = t.max(1) as i32;
    let bc1 = 1.0 - cfg.beta1.powi(t);
    let bc2 = 1.0 - cfg.beta2.powi(t);
    let decay = 1.0 - cfg.lr * weight_decay;
    const C: usize = 1 << 14;
    p.par_chunks_mut(C).zip(g.par_chunks(C)).zip(m.par_chunks_mut(C).zip(v.par_chunks_mut(C))).for_each(
        |((p, g), (m, v))| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
                *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
                let mhat = *m / bc1;
                let vhat = *v / bc2;
                *p = *p * decay - cfg.lr * mhat / (vhat.sqrt() + cfg.eps);
            }
        },
    );
}

/// The global L2 norm of a gradient buffer (accumulated in f64).
pub fn grad_norm(g: &[f32]) -> f32 {
    g.par_chunks(1 << 14).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).sum::<f64>().sqrt() as f32
}

/// Scales `g` so that its global norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(g: &mut [f32], max_norm: f32) -> f32 {
    let norm = grad_norm(g);
    if norm.is_finite() && norm > max_norm && norm > 0.0 {
        let s = max_norm / norm;
        g.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|x| *x *= s));
    }
    norm
}

// ---------------------------------------------------------------------------------------------------------------
// GRPO per-token loss

/// The clipped surrogate's settings: PPO's `clip_eps` and the dual clip bound for negative advantages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrpoClip {
    pub clip_eps: f32,
    /// `c > 1`: for `A < 0` the objective is floored at `c·A`; `None` disables the dual clip.
    pub dual_clip: Option<f32>,
}

impl Default for GrpoClip {
    fn default() -> GrpoClip {
        GrpoClip { clip_eps: 0.2, dual_clip: Some(3.0) }
    }
}

/// One token of the surrogate: returns the objective (to maximise) `min(r·A, clip(r, 1±ε)·A)`, floored at `c·A`
/// for `A < 0` by the dual clip, its derivative w.r.t. `logp`, and whether a clip was active. `r = exp(logp -
/// old_logp)`; at a tie between the clipped and unclipped terms the unclipped one (non-zero gradient) wins.
pub fn grpo_token(logp: f32, old_logp: f32, adv: f32, clip: &GrpoClip) -> (f32, f32, bool) {
    let r = (logp - old_logp).exp();
    let unclipped = r * adv;
    let clipped = r.clamp(1.0 - clip.clip_eps, 1.0 + clip.clip_eps) * adv;
    let (mut obj, mut grad, mut was_clipped) =
        if unclipped <= clipped { (unclipped, unclipped, false) } else { (clipped, 0.0, true) };
    if let Some(c) = clip.dual_clip
        && adv < 0.0
        && c * adv > obj
    {
        (obj, grad, was_clipped) = (c * adv, 0.0, true);
    }
    (obj, grad, was_clipped)
}

/// Summary of a masked GRPO loss.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GrpoStats {
    /// `-Σ mask·objective / denom`.
    pub loss: f32,
    /// Masked tokens whose objective was clipped (PPO or dual).
    pub clipped: usize,
    /// Masked tokens seen.
    pub tokens: usize,
}

/// The masked token-mean GRPO loss `-Σ mask·objective / denom` and its gradient w.r.t. `logp` (written to
/// `dlogp`). `denom` is the masked-token count of the whole (accumulated) batch, so micro-batches add up exactly.
pub fn grpo_loss(
    logp: &[f32],
    old_logp: &[f32],
    adv: &[f32],
    mask: &[bool],
    clip: &GrpoClip,
    denom: f32,
    dlogp: &mut [f32],
) -> GrpoStats {
    let mut sum = 0.0f64;
    let mut stats = GrpoStats::default();
    for i in 0..logp.len() {
        if !mask[i] {
            dlogp[i] = 0.0;
            continue;
        }
        let (obj, grad, clipped) = grpo_token(logp[i], old_logp[i], adv[i], clip);
        sum += obj as f64;
        dlogp[i] = -grad / denom;
        stats.tokens += 1;
        stats.clipped += clipped as usize;
    }
    stats.loss = (-sum / denom as f64) as f32;
    stats
}

#[cfg(test)]
#[path = "cpu_ops_tests.rs"]
mod tests;
