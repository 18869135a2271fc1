//! Every op's forward against a naive f64 reference and its backward against central finite differences of that
//! reference (in f64, so the check measures our f32 gradient and not the round-off of the differences).

use super::*;

/// Deterministic values in [-1, 1).
pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Central differences of `f` at `x`.
fn fd(f: &dyn Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let eps = 1e-6;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let old = x[i];
            x[i] = old + eps;
            let up = f(&x);
            x[i] = old - eps;
            let down = f(&x);
            x[i] = old;
            (up - down) / (2.0 * eps)
        })
        .collect()
}

/// `‖a - b‖ / ‖b‖`, asserted to be at most `tol`.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let diff: f64 = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt().max(1e-12);
    assert!(diff / norm <= tol, "{what}: relative error {} > {tol}\n got {got:?}\nwant {want:?}", diff / norm);
}

fn dot64(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(a, &b)| a * b as f64).sum()
}

// ---- references in f64 --------------------------------------------------------------------------------------

fn ref_linear(x: &[f64], t: usize, w: &[f64], i: usize, o: usize) -> Vec<f64> {
    let mut y = vec![0.0; t * o];
    for r in 0..t {
        for c in 0..o {
            y[r * o + c] = (0..i).map(|k| x[r * i + k] * w[c * i + k]).sum();
        }
    }
    y
}

fn ref_rmsnorm(x: &[f64], w: &[f64], eps: f64, dim: usize) -> Vec<f64> {
    x.chunks(dim)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / dim as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, w)| v * r * w)
        })
        .collect()
}

fn ref_rope(x: &[f64], positions: &[usize], hd: usize, theta: f64) -> Vec<f64> {
    let width = x.len() / positions.len();
    let mut out = x.to_vec();
    for (row, &pos) in out.chunks_mut(width).zip(positions) {
        for head in row.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let a = pos as f64 * theta.powf(-((2 * i) as f64) / hd as f64);
                let (s, c) = a.sin_cos();
                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = x0 * c - x1 * s;
                head[2 * i + 1] = x0 * s + x1 * c;
            }
        }
    }
    out
}

fn ref_attention(shape: AttnShape, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let AttnShape { heads, kv_heads, head_dim: hd, seq_lens } = shape;
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let mut out = vec![0.0; q.len()];
    let mut st = 0;
    for &t in seq_lens {
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd).map(|d| q[(st + i) * qw + h * hd + d] * k[(st + j) * kw + g * hd + d]).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hd {
                    out[(st + i) * qw + h * hd + d] =
                        (0..=i).map(|j| (s[j] - m).exp() / z * v[(st + j) * kw + g * hd + d]).sum();
                }
            }
        }
        st += t;
    }
    out
}

/// Full-vocabulary log-softmax: per row (target log-prob, entropy, log-sum-exp).
fn ref_head(x: &[f64], n: usize, hidden: usize, w: &[f64], vocab: usize, targets: &[u32]) -> Vec<(f64, f64, f64)> {
    let logits = ref_linear(x, n, w, hidden, vocab);
    (0..n)
        .map(|i| {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
            let ent = -row.iter().map(|l| (l - lse).exp() * (l - lse)).sum::<f64>();
            (row[targets[i] as usize] - lse, ent, lse)
        })
        .collect()
}

// ---- tests -----------------------------------------------------------------------------------------------------

#[test]
fn matmul_transposes_match_naive() {
    let (m, k, n) = (5, 7, 3);
    let a = rand_vec(m * k, 1);
    let b = rand_vec(k * n, 2);
    let want: Vec<f64> =
        (0..m * n).map(|idx| (0..k).map(|p| a[idx / n * k + p] as f64 * b[p * n + idx % n] as f64).sum()).collect();
    let transpose =
        |x: &[f32], r: usize, c: usize| -> Vec<f32> { (0..r * c).map(|i| x[(i % r) * c + i / r]).collect() };
    let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
    for (aa, ta) in [(&a, false), (&at, true)] {
        for (bb, tb) in [(&b, false), (&bt, true)] {
            let mut c = vec![1.0; m * n];
            matmul(m, k, n, aa, ta, bb, tb, 0.0, &mut c);
            assert_close(&format!("matmul a_t={ta} b_t={tb}"), &c, &want, 1e-6);
        }
    }
    // beta = 1 accumulates.
    let mut c = vec![1.0; m * n];
    matmul(m, k, n, &a, false, &b, false, 1.0, &mut c);
    let plus_one: Vec<f64> = want.iter().map(|v| v + 1.0).collect();
    assert_close("matmul beta=1", &c, &plus_one, 1e-6);
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (t, i, o) = (3, 4, 5);
    let (x, w, r) = (rand_vec(t * i, 3), rand_vec(o * i, 4), rand_vec(t * o, 5));
    let mut y = vec![0.0; t * o];
    linear_fwd(&x, t, &w, i, o, &mut y);
    assert_close("linear fwd", &y, &ref_linear(&f64s(&x), t, &f64s(&w), i, o), 1e-6);
    let (mut dx, mut dw) = (vec![0.0; t * i], vec![0.0; o * i]);
    linear_bwd(&r, &x, t, &w, i, o, &mut dx, &mut dw);
    let (x64, w64) = (f64s(&x), f64s(&w));
    assert_close("linear dx", &dx, &fd(&|x| dot64(&ref_linear(x, t, &w64, i, o), &r), &x64), 1e-3);
    assert_close("linear dw", &dw, &fd(&|w| dot64(&ref_linear(&x64, t, w, i, o), &r), &w64), 1e-3);
}

#[test]
fn embedding_scatter_add_matches_finite_differences() {
    let (vocab, dim) = (6, 3);
    let table = rand_vec(vocab * dim, 6);
    let ids = [2u32, 5, 2, 0];
    let r = rand_vec(ids.len() * dim, 7);
    let mut out = vec![0.0; ids.len() * dim];
    embedding_fwd(&ids, &table, dim, &mut out);
    assert_eq!(&out[..dim], &table[2 * dim..3 * dim]);
    let mut dt = vec![0.0; vocab * dim];
    embedding_bwd(&ids, &r, dim, &mut dt);
    let gather = |t: &[f64]| -> f64 {
        ids.iter()
            .enumerate()
            .map(|(i, &id)| (0..dim).map(|d| t[id as usize * dim + d] * r[i * dim + d] as f64).sum::<f64>())
            .sum()
    };
    assert_close("embedding dtable", &dt, &fd(&gather, &f64s(&table)), 1e-3);
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (rows, dim, eps) = (4, 6, 1e-5);
    let (x, w, r) = (rand_vec(rows * dim, 8), rand_vec(dim, 9), rand_vec(rows * dim, 10));
    let (mut y, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
    rmsnorm_fwd(&x, &w, eps, dim, &mut y, &mut rstd);
    let (x64, w64) = (f64s(&x), f64s(&w));
    assert_close("rmsnorm fwd", &y, &ref_rmsnorm(&x64, &w64, eps as f64, dim), 1e-5);
    // The CPU op equals the inference path's rms_norm.
    let mut y2 = vec![0.0; rows * dim];
    crate::model::rms_norm(&x, &w, eps, dim, &mut y2);
    assert_close("rmsnorm vs model", &y, &f64s(&y2), 1e-6);
    let (mut dx, mut dw) = (vec![0.0; rows * dim], vec![0.0; dim]);
    rmsnorm_bwd(&r, &x, &w, &rstd, dim, &mut dx, &mut dw);
    let e = eps as f64;
    assert_close("rmsnorm dx", &dx, &fd(&|x| dot64(&ref_rmsnorm(x, &w64, e, dim), &r), &x64), 1e-3);
    assert_close("rmsnorm dw", &dw, &fd(&|w| dot64(&ref_rmsnorm(&x64, w, e, dim), &r), &w64), 1e-3);
}

#[test]
fn rope_matches_model_and_its_backward_is_the_inverse() {
    let (hd, heads, theta) = (8, 2, 10_000.0f32);
    let positions = [0usize, 3, 7];
    let x = rand_vec(positions.len() * heads * hd, 11);
    let table = RopeTable::new(hd, theta, 16);
    let mut y = x.clone();
    table.fwd(&mut y, &positions);
    let mut want = x.clone();
    for (row, &pos) in want.chunks_mut(heads * hd).zip(&positions) {
        crate::model::rope(row, hd, pos, theta);
    }
    assert_eq!(y, want, "rope differs from model::rope");
    let r = rand_vec(x.len(), 12);
    let mut g = r.clone();
    table.bwd(&mut g, &positions);
    let grad = fd(&|x| dot64(&ref_rope(x, &positions, hd, theta as f64), &r), &f64s(&x));
    assert_close("rope backward", &g, &grad, 1e-3);
    // Inverse: bwd(fwd(x)) = x.
    table.bwd(&mut y, &positions);
    assert_close("rope inverse", &y, &f64s(&x), 1e-6);
}

#[test]
fn attention_forward_and_backward_match_references() {
    let seq_lens = [3usize, 5, 1];
    let shape = AttnShape { seq_lens: &seq_lens, heads: 4, kv_heads: 2, head_dim: 4 };
    let n: usize = seq_lens.iter().sum();
    let (qw, kw) = (16, 8);
    let q: Vec<f32> = rand_vec(n * qw, 13).iter().map(|v| v * 2.0).collect();
    let k: Vec<f32> = rand_vec(n * kw, 14).iter().map(|v| v * 2.0).collect();
    let v = rand_vec(n * kw, 15);
    let r = rand_vec(n * qw, 16);
    let (mut out, mut lse) = (vec![0.0; n * qw], vec![0.0; n * 4]);
    attention_fwd(shape, &q, &k, &v, &mut out, &mut lse);
    let (q64, k64, v64) = (f64s(&q), f64s(&k), f64s(&v));
    assert_close("attention fwd", &out, &ref_attention(shape, &q64, &k64, &v64), 1e-5);
    let (mut dq, mut dk, mut dv) = (vec![9.0; n * qw], vec![9.0; n * kw], vec![9.0; n * kw]);
    attention_bwd(shape, &q, &k, &v, &out, &lse, &r, &mut dq, &mut dk, &mut dv);
    assert_close("attention dq", &dq, &fd(&|q| dot64(&ref_attention(shape, q, &k64, &v64), &r), &q64), 1e-3);
    assert_close("attention dk", &dk, &fd(&|k| dot64(&ref_attention(shape, &q64, k, &v64), &r), &k64), 1e-3);
    assert_close("attention dv", &dv, &fd(&|v| dot64(&ref_attention(shape, &q64, &k64, v), &r), &v64), 1e-3);
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let n = 12;
    let g: Vec<f32> = rand_vec(n, 17).iter().map(|v| v * 4.0).collect();
    let u = rand_vec(n, 18);
    let r = rand_vec(n, 19);
    let f = |g: &[f64], u: &[f64]| -> Vec<f64> { g.iter().zip(u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect() };
    let mut y = vec![0.0; n];
    swiglu_fwd(&g, &u, &mut y);
    let (g64, u64) = (f64s(&g), f64s(&u));
    assert_close("swiglu fwd", &y, &f(&g64, &u64), 1e-6);
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    swiglu_bwd(&r, &g, &u, &mut dg, &mut du);
    assert_close("swiglu dgate", &dg, &fd(&|g| dot64(&f(g, &u64), &r), &g64), 1e-3);
    assert_close("swiglu dup", &du, &fd(&|u| dot64(&f(&g64, u), &r), &u64), 1e-3);
}

#[test]
fn residual_add_adds() {
    let mut x = vec![1.0, 2.0, 3.0];
    add_inplace(&mut x, &[0.5, -2.0, 1.0]);
    assert_eq!(x, vec![1.5, 0.0, 4.0]);
}

#[test]
fn chunked_lm_head_equals_unchunked_and_its_backward_matches_finite_differences() {
    let (n, hidden, vocab) = (4, 5, 11);
    let x: Vec<f32> = rand_vec(n * hidden, 20).iter().map(|v| v * 2.0).collect();
    let w = rand_vec(vocab * hidden, 21);
    let targets = [3u32, 0, 10, 7];
    let (a, b) = (rand_vec(n, 22), rand_vec(n, 23));
    let (x64, w64) = (f64s(&x), f64s(&w));
    let want = ref_head(&x64, n, hidden, &w64, vocab, &targets);
    let whole = lm_head_fwd(&x, n, hidden, &w, vocab, &targets, vocab);
    for chunk in [1, 3, 4, 11, 64] {
        let s = lm_head_fwd(&x, n, hidden, &w, vocab, &targets, chunk);
        assert_close(&format!("logp chunk {chunk}"), &s.logp, &want.iter().map(|r| r.0).collect::<Vec<_>>(), 1e-5);
        assert_close(
            &format!("entropy chunk {chunk}"),
            &s.entropy,
            &want.iter().map(|r| r.1).collect::<Vec<_>>(),
            1e-5,
        );
        assert_close(&format!("lse chunk {chunk}"), &s.lse, &want.iter().map(|r| r.2).collect::<Vec<_>>(), 1e-5);
        assert_close(&format!("chunk {chunk} vs whole"), &s.logp, &f64s(&whole.logp), 1e-5);
    }
    // L = Σ a·logp + Σ b·entropy
    let loss = |x: &[f64], w: &[f64]| -> f64 {
        ref_head(x, n, hidden, w, vocab, &targets)
            .iter()
            .enumerate()
            .map(|(i, r)| a[i] as f64 * r.0 + b[i] as f64 * r.1)
            .sum()
    };
    let gx = fd(&|x| loss(x, &w64), &x64);
    let gw = fd(&|w| loss(&x64, w), &w64);
    for chunk in [3, 11] {
        let s = lm_head_fwd(&x, n, hidden, &w, vocab, &targets, chunk);
        let (mut dx, mut dw) = (vec![0.0; n * hidden], vec![0.0; vocab * hidden]);
        lm_head_bwd(&x, n, hidden, &w, vocab, &targets, chunk, &s, &a, Some(&b), &mut dx, &mut dw);
        assert_close(&format!("head dx chunk {chunk}"), &dx, &gx, 1e-3);
        assert_close(&format!("head dw chunk {chunk}"), &dw, &gw, 1e-3);
    }
}

#[test]
fn adamw_matches_a_hand_computed_step() {
    let cfg = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.5 };
    let (mut p, g) = (vec![1.0f32, -2.0], vec![0.5f32, 0.0]);
    let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
    adamw_step(&mut p, &g, &mut m, &mut v, 1, &cfg, cfg.weight_decay);
    // Step 1: m̂ = g, v̂ = g², so the Adam step is lr·sign(g); decay multiplies by 1 - lr·wd = 0.95 first.
    assert!((p[0] - (0.95 - 0.1)).abs() < 1e-6, "{p:?}");
    assert!((p[1] - (-2.0 * 0.95)).abs() < 1e-6, "{p:?}");
    assert!((m[0] - 0.05).abs() < 1e-6 && (v[0] / 0.00025 - 1.0).abs() < 1e-4, "{m:?} {v:?}");
    // Step 2 with the same gradient: m̂ = g again, so the same update size (before decay).
    let before = p[0];
    adamw_step(&mut p, &g, &mut m, &mut v, 2, &cfg, 0.0);
    assert!((p[0] - (before - 0.1)).abs() < 1e-5, "{p:?}");
}

#[test]
fn grad_clipping_caps_the_norm() {
    let mut g = vec![3.0f32, 4.0, 0.0];
    assert_eq!(grad_norm(&g), 5.0);
    let norm = clip_grad_norm(&mut g, 1.0);
    assert_eq!(norm, 5.0);
    assert!((grad_norm(&g) - 1.0).abs() < 1e-6);
    assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
    // Below the cap nothing changes.
    let mut small = vec![0.1f32, 0.2];
    clip_grad_norm(&mut small, 1.0);
    assert_eq!(small, vec![0.1, 0.2]);
}

#[test]
fn grpo_pieces_match_a_worked_example() {
    let clip = GrpoClip { clip_eps: 0.2, dual_clip: Some(3.0) };
    let ln = |r: f32| r.ln();
    // A > 0, r = 1.1 inside the trust region: objective r·A, gradient r·A.
    let (o, g, c) = grpo_token(ln(1.1), 0.0, 2.0, &clip);
    assert!((o - 2.2).abs() < 1e-5 && (g - 2.2).abs() < 1e-5 && !c);
    // A > 0, r = 1.5 > 1.2: clipped to 1.2·A, no gradient.
    let (o, g, c) = grpo_token(ln(1.5), 0.0, 2.0, &clip);
    assert!((o - 2.4).abs() < 1e-5 && g == 0.0 && c);
    // A > 0, r = 0.5 < 0.8: min picks the unclipped r·A (gradient flows).
    let (o, g, c) = grpo_token(ln(0.5), 0.0, 2.0, &clip);
    assert!((o - 1.0).abs() < 1e-5 && (g - 1.0).abs() < 1e-5 && !c);
    // A < 0, r = 0.5 < 0.8: clipped to 0.8·A.
    let (o, g, c) = grpo_token(ln(0.5), 0.0, -1.0, &clip);
    assert!((o + 0.8).abs() < 1e-5 && g == 0.0 && c);
    // A < 0, r = 2 (between 1.2 and the dual bound 3): unclipped r·A.
    let (o, g, c) = grpo_token(ln(2.0), 0.0, -1.0, &clip);
    assert!((o + 2.0).abs() < 1e-5 && (g + 2.0).abs() < 1e-5 && !c);
    // A < 0, r = 5 > 3: the dual clip floors the objective at 3·A, no gradient.
    let (o, g, c) = grpo_token(ln(5.0), 0.0, -1.0, &clip);
    assert!((o + 3.0).abs() < 1e-5 && g == 0.0 && c);
    // Without the dual clip the same token keeps r·A.
    let (o, _, _) = grpo_token(ln(5.0), 0.0, -1.0, &GrpoClip { dual_clip: None, ..clip });
    assert!((o + 5.0).abs() < 1e-4);

    // Masked token mean over 3 masked tokens of 4: loss = -(2.2 + 2.4 - 3.0) / 3.
    let logp = [ln(1.1), ln(1.5), ln(5.0), 0.3];
    let old = [0.0; 4];
    let adv = [2.0, 2.0, -1.0, 7.0];
    let mask = [true, true, true, false];
    let mut d = [9.0; 4];
    let s = grpo_loss(&logp, &old, &adv, &mask, &clip, 3.0, &mut d);
    assert!((s.loss + (2.2 + 2.4 - 3.0) / 3.0).abs() < 1e-5, "{s:?}");
    assert_eq!((s.tokens, s.clipped), (3, 2));
    assert!((d[0] + 2.2 / 3.0).abs() < 1e-5 && d[1] == 0.0 && d[2] == 0.0 && d[3] == 0.0, "{d:?}");

    // Away from the kinks the gradient matches finite differences of the loss.
    let logp = [0.05f32, -0.1, 0.02, 0.4];
    let old = [0.0f32, 0.0, 0.1, -0.2];
    let adv = [1.0f32, -0.5, 0.7, -1.2];
    let mask = [true; 4];
    let mut d = [0.0; 4];
    grpo_loss(&logp, &old, &adv, &mask, &clip, 4.0, &mut d);
    let f = |lp: &[f64]| -> f64 {
        -(0..4)
            .map(|i| {
                let r = (lp[i] - old[i] as f64).exp();
                let a = adv[i] as f64;
                let o = (r * a).min(r.clamp(0.8, 1.2) * a);
                if a < 0.0 { o.max(3.0 * a) } else { o }
            })
            .sum::<f64>()
            / 4.0
    };
    assert_close("grpo dlogp", &d, &fd(&f, &f64s(&logp)), 1e-3);
}

#[test]
fn fast_exp_is_accurate() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 + i as f32 * (175.0 / 200_000.0);
        let want = (x as f64).exp();
        worst = worst.max(((exp_f32(x) as f64) - want).abs() / want);
    }
    assert!(worst < 1e-6, "{worst}");
    assert!(exp_f32(f32::NEG_INFINITY) < 1e-37 && exp_f32(0.0) == 1.0);
}

#[test]
fn long_attention_blocks_match_the_reference() {
    // Longer than one causal block (64 rows) and than one key-column tile (480 at head_dim 4), so the blocked and
    // tiled paths are checked too.
    assert_eq!(attn_col_tile(ATTN_BLOCK, 4), 480);
    let seq_lens = [600usize, 70];
    let shape = AttnShape { seq_lens: &seq_lens, heads: 2, kv_heads: 1, head_dim: 4 };
    let n: usize = seq_lens.iter().sum();
    let (q, k, v) = (rand_vec(n * 8, 30), rand_vec(n * 4, 31), rand_vec(n * 4, 32));
    let r = rand_vec(n * 8, 33);
    let (mut out, mut lse) = (vec![0.0; n * 8], vec![0.0; n * 2]);
    attention_fwd(shape, &q, &k, &v, &mut out, &mut lse);
    let (q64, k64, v64) = (f64s(&q), f64s(&k), f64s(&v));
    assert_close("long attention fwd", &out, &ref_attention(shape, &q64, &k64, &v64), 1e-5);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n * 8], vec![0.0; n * 4], vec![0.0; n * 4]);
    attention_bwd(shape, &q, &k, &v, &out, &lse, &r, &mut dq, &mut dk, &mut dv);
    // The gradient of Σ r·out w.r.t. v is exact in closed form: dv_j = Σ_i p_ij r_i; check dk by differences of
    // a few entries (the full FD would need n·4 reference attentions).
    let f = |k: &[f64]| dot64(&ref_attention(shape, &q64, k, &v64), &r);
    for idx in [0usize, 5, 63 * 4 + 1, 64 * 4 + 2, 479 * 4 + 3, 480 * 4, 599 * 4 + 2, 600 * 4, 669 * 4 + 1] {
        let eps = 1e-6;
        let (mut up, mut down) = (k64.clone(), k64.clone());
        up[idx] += eps;
        down[idx] -= eps;
        let num = (f(&up) - f(&down)) / (2.0 * eps);
        assert!((dk[idx] as f64 - num).abs() <= 1e-3 * (1.0 + num.abs()), "dk[{idx}] {} vs {num}", dk[idx]);
    }
    let fq = |q: &[f64]| dot64(&ref_attention(shape, q, &k64, &v64), &r);
    let fv = |v: &[f64]| dot64(&ref_attention(shape, &q64, &k64, v), &r);
    for idx in [3usize, 64 * 8 + 5, 100 * 8 + 7, 490 * 8 + 2, 599 * 8 + 6, 610 * 8] {
        let eps = 1e-6;
        let (mut up, mut down) = (q64.clone(), q64.clone());
        up[idx] += eps;
        down[idx] -= eps;
        let num = (fq(&up) - fq(&down)) / (2.0 * eps);
        assert!((dq[idx] as f64 - num).abs() <= 1e-3 * (1.0 + num.abs()), "dq[{idx}] {} vs {num}", dq[idx]);
        let vi = idx / 2;
        let (mut up, mut down) = (v64.clone(), v64.clone());
        up[vi] += eps;
        down[vi] -= eps;
        let num = (fv(&up) - fv(&down)) / (2.0 * eps);
        assert!((dv[vi] as f64 - num).abs() <= 1e-3 * (1.0 + num.abs()), "dv[{vi}] {} vs {num}", dv[vi]);
    }
}
