//! `y[t, out] = x[t, in] · w[out, in]ᵀ` for few rows `t` (decoding): one pass over the weight rows, each row
//! dotted with every input row while it is in L1, output rows split over the rayon pool. The general sgemm
//! packs the whole weight matrix on every call, which at one token a step costs more than the arithmetic
//! (SmolLM2 decoded at ~5 tokens/s through it). AVX2 with FMA is used when the CPU has them (checked at run time).

use rayon::prelude::*;

/// Up to this many rows `model::linear` comes here; measured on 2 cores, at 16 rows this still beats the sgemm
/// on SmolLM2's layers (576 -> 1536: 0.5-0.6 ms against 0.69) and ties on the LM head (~34 ms).
pub const MAX_ROWS: usize = 16;

/// Output rows per rayon task: enough work per task to amortise scheduling, small enough to balance two to
/// sixteen threads on SmolLM2's 576..49,152-wide layers.
const ROWS_PER_TASK: usize = 64;

/// `y = x · wᵀ` with `x` `[t, in_dim]`, `w` `[out_dim, in_dim]`, `y` `[t, out_dim]`, all row-major.
pub fn linear_few_rows(x: &[f32], t: usize, w: &[f32], in_dim: usize, out_dim: usize, y: &mut [f32]) {
    debug_assert_eq!(x.len(), t * in_dim);
    debug_assert_eq!(w.len(), out_dim * in_dim);
    debug_assert_eq!(y.len(), t * out_dim);
    if t == 0 || out_dim == 0 {
        return;
    }
    if in_dim == 0 {
        y.fill(0.0);
        return;
    }
    // Computed as yᵀ `[out, t]` so each task owns a contiguous slice; transposed after (t × out is small).
    let mut yt = vec![0.0f32; out_dim * t];
    yt.par_chunks_mut(ROWS_PER_TASK * t).zip(w.par_chunks(ROWS_PER_TASK * in_dim)).for_each(|(out, rows)| {
        block(x, t, rows, in_dim, out);
    });
    if t == 1 {
        y.copy_from_slice(&yt);
        return;
    }
    for (o, col) in yt.chunks_exact(t).enumerate() {
        for (r, v) in col.iter().enumerate() {
            y[r * out_dim + o] = *v;
        }
    }
}

fn block(x: &[f32], t: usize, rows: &[f32], in_dim: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above); the function is otherwise safe Rust.
            unsafe { block_avx2_fma(x, t, rows, in_dim, out) };
            return;
        }
    }
    block_generic::<false>(x, t, rows, in_dim, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_avx2_fma(x: &[f32], t: usize, rows: &[f32], in_dim: usize, out: &mut [f32]) {
    block_generic::<true>(x, t, rows, in_dim, out);
}

/// `acc + x·y`, fused where the caller is compiled with FMA (elsewhere `mul_add` would be a slow libm call).
#[inline(always)]
fn madd<const FMA: bool>(acc: f32, x: f32, y: f32) -> f32 {
    if FMA { x.mul_add(y, acc) } else { acc + x * y }
}

#[inline(always)]
fn block_generic<const FMA: bool>(x: &[f32], t: usize, rows: &[f32], in_dim: usize, out: &mut [f32]) {
    for (row, o) in rows.chunks_exact(in_dim).zip(out.chunks_exact_mut(t)) {
        // Four input rows share each load of the weight row (register blocking), then the rest one by one.
        let mut r = 0;
        while r + 4 <= t {
            let xs = |k: usize| &x[(r + k) * in_dim..(r + k + 1) * in_dim];
            o[r..r + 4].copy_from_slice(&dot4::<FMA>([xs(0), xs(1), xs(2), xs(3)], row));
            r += 4;
        }
        for (xr, v) in x[r * in_dim..].chunks_exact(in_dim).zip(o[r..].iter_mut()) {
            *v = dot_with::<FMA>(xr, row);
        }
    }
}

/// Four dot products against the same `w`, 16 lanes each.
#[inline(always)]
fn dot4<const FMA: bool>(xs: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    let mut acc = [[0.0f32; 16]; 4];
    let (wc, w_tail) = w.as_chunks::<16>();
    let chunks = |k: usize| xs[k].as_chunks::<16>().0;
    for ((((w, x0), x1), x2), x3) in wc.iter().zip(chunks(0)).zip(chunks(1)).zip(chunks(2)).zip(chunks(3)) {
        for i in 0..16 {
            acc[0][i] = madd::<FMA>(acc[0][i], x0[i], w[i]);
            acc[1][i] = madd::<FMA>(acc[1][i], x1[i], w[i]);
            acc[2][i] = madd::<FMA>(acc[2][i], x2[i], w[i]);
            acc[3][i] = madd::<FMA>(acc[3][i], x3[i], w[i]);
        }
    }
    let n = w.len() - w_tail.len();
    let mut out = [0.0f32; 4];
    for k in 0..4 {
        let tail: f32 = xs[k][n..].iter().zip(w_tail).map(|(p, q)| p * q).sum();
        out[k] = acc[k].iter().sum::<f32>() + tail;
    }
    out
}

/// A dot product with 16 independent accumulators, so it vectorises (a plain iterator sum is sequential).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with::<false>(a, b)
}

#[inline(always)]
fn dot_with<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = madd::<FMA>(acc[i], x[i], y[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_for_odd_shapes() {
        for (t, i, o) in [(1, 5, 3), (3, 37, 130), (4, 64, 64), (6, 37, 20), (16, 50, 9), (2, 16, 1), (1, 577, 200)] {
            let x: Vec<f32> = (0..t * i).map(|v| ((v * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let w: Vec<f32> = (0..o * i).map(|v| (v as f32 * 0.37).sin()).collect();
            let mut y = vec![f32::NAN; t * o];
            linear_few_rows(&x, t, &w, i, o, &mut y);
            for r in 0..t {
                for c in 0..o {
                    let want: f64 = (0..i).map(|k| x[r * i + k] as f64 * w[c * i + k] as f64).sum();
                    assert!((y[r * o + c] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{t}x{i}x{o} at {r},{c}");
                }
            }
        }
    }
}
