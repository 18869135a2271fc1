//! Conformance of the wgpu training ops against `cpu_ops` (the oracle): every forward op a training step saves
//! state from, every backward, the chunked LM head, AdamW, the gradient norm and clipping, and the GRPO loss, on
//! random inputs of small shapes (lavapipe is slow). Errors are measured as max |got − want| / max |want| over
//! the whole output: ≤ 1e-4 for forward values, ≤ 1e-3 for gradients and anything downstream of them.

use userrl_nn::cpu_ops::{self, AdamW, AttnShape, GrpoClip, RopeTable};
use userrl_nn::wgpu::{Device, MatView, MatmulTiles, Tensor, WgpuError};

mod common;
use common::{device, random, rel_err};

const FWD_TOL: f32 = 1e-4;
const BWD_TOL: f32 = 1e-3;

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let e = rel_err(got, want);
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e} > {tol}");
}

struct Gpu {
    dev: Device,
}

impl Gpu {
    fn up(&self, v: &[f32]) -> Tensor {
        self.dev.upload(v).unwrap()
    }
    fn up_u32(&self, v: &[u32]) -> Tensor {
        self.dev.upload_u32(v).unwrap()
    }
    fn zeros(&self, n: usize) -> Tensor {
        self.dev.zeros(n).unwrap()
    }
    fn get(&self, t: &Tensor) -> Vec<f32> {
        self.dev.download(t).unwrap()
    }
}

fn gpu() -> Gpu {
    Gpu { dev: device() }
}

#[test]
fn matmul_in_every_transpose_matches_cpu() {
    // The shared tiles also split along k (as GPUs run products with few tiles), 2-4 parts on the longer k.
    let shared = device().with_matmul_tiles(MatmulTiles::Shared);
    for dev in [
        device().with_matmul_tiles(MatmulTiles::Registers),
        shared.with_split_k_target(0),
        shared.with_split_k_target(1 << 20),
    ] {
        matmul_in_every_transpose_matches_cpu_on(&Gpu { dev });
    }
}

fn matmul_in_every_transpose_matches_cpu_on(g: &Gpu) {
    // Odd sizes take the general strided kernel; multiples of 4 the vec4 ones (A·B, Aᵀ·B, and A·Bᵀ through the
    // inference forward's tiled and few-row kernels), whose edges the 5-, 36- and 130-row cases hit.
    let shapes =
        [(5, 7, 9), (70, 33, 65), (1, 16, 130), (64, 64, 64), (5, 12, 20), (36, 8, 132), (130, 68, 96), (72, 200, 36)];
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        for a_t in [false, true] {
            for b_t in [false, true] {
                for beta in [0.0, 1.0] {
                    let seed = (i * 8) as u64 + u64::from(a_t) * 2 + u64::from(b_t) * 4;
                    let a = random(m * k, seed + 1, 1.0);
                    let b = random(k * n, seed + 2, 1.0);
                    let c0 = random(m * n, seed + 3, 1.0);
                    let mut want = c0.clone();
                    cpu_ops::matmul(m, k, n, &a, a_t, &b, b_t, beta, &mut want);
                    let c = g.up(&c0);
                    let mut batch = g.dev.batch();
                    batch.matmul(m, k, n, &g.up(&a), a_t, &g.up(&b), b_t, beta, &c).unwrap();
                    batch.submit().unwrap();
                    let what = format!(
                        "matmul {m}x{k}x{n} a_t={a_t} b_t={b_t} beta={beta} {:?} split-k {}",
                        g.dev.matmul_tiles(),
                        g.dev.split_k_target()
                    );
                    assert_close(&what, &g.get(&c), &want, FWD_TOL);
                }
            }
        }
    }
}

#[test]
fn batched_strided_matmul_addresses_heads_inside_a_wide_activation() {
    // Per head h of [t, heads·hd] activations: s_h = q_h · k_hᵀ, written as the batch of `heads` entries.
    let g = gpu();
    let (t, heads, hd) = (37, 3, 16);
    let q = random(t * heads * hd, 11, 1.0);
    let k = random(t * heads * hd, 12, 1.0);
    let mut want = vec![0.0; heads * t * t];
    for h in 0..heads {
        let w = heads * hd;
        cpu_ops::matmul_strided(t, hd, t, &q[h * hd..], w, 1, &k[h * hd..], 1, w, 0.0, &mut want[h * t * t..], t, 1);
    }
    let (gq, gk, gs) = (g.up(&q), g.up(&k), g.zeros(heads * t * t));
    let a = MatView::rows(&gq, 0, heads * hd).batched(hd);
    let b = MatView::transposed(&gk, 0, heads * hd).batched(hd);
    let mut batch = g.dev.batch();
    batch.matmul_strided(t, hd, t, heads, a, b, 0.0, MatView::rows(&gs, 0, t).batched(t * t)).unwrap();
    batch.submit().unwrap();
    assert_close("batched scores", &g.get(&gs), &want, FWD_TOL);
    // A view past the end of its tensor is refused, not read out of bounds.
    let mut batch = g.dev.batch();
    let err = batch.matmul_strided(t, hd, t, heads + 1, a, b, 0.0, MatView::rows(&gs, 0, t).batched(t * t));
    assert!(matches!(err, Err(WgpuError::Shape(_))), "{err:?}");
}

#[test]
fn linear_forward_and_backward_match_cpu() {
    linear_forward_and_backward_match_cpu_on(&gpu());
    // Split along k, the three products of the last shape share (and grow) one batch's scratch buffer.
    let split = device().with_matmul_tiles(MatmulTiles::Shared).with_split_k_target(1 << 20);
    linear_forward_and_backward_match_cpu_on(&Gpu { dev: split });
}

fn linear_forward_and_backward_match_cpu_on(g: &Gpu) {
    for (i, &(t, din, dout)) in [(9, 32, 48), (65, 20, 7), (3, 64, 130), (130, 256, 132)].iter().enumerate() {
        let s = 100 + i as u64 * 10;
        let (x, w, dy) = (random(t * din, s, 1.0), random(dout * din, s + 1, 0.5), random(t * dout, s + 2, 1.0));
        let (dx0, dw0) = (random(t * din, s + 3, 0.1), random(dout * din, s + 4, 0.1));
        let mut y = vec![0.0; t * dout];
        cpu_ops::linear_fwd(&x, t, &w, din, dout, &mut y);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        cpu_ops::linear_bwd(&dy, &x, t, &w, din, dout, &mut dx, &mut dw);
        let (gx, gw, gdy) = (g.up(&x), g.up(&w), g.up(&dy));
        let (gy, gdx, gdw) = (g.zeros(t * dout), g.up(&dx0), g.up(&dw0));
        let mut b = g.dev.batch();
        b.linear_fwd(&gx, t, &gw, din, dout, &gy).unwrap();
        b.linear_bwd(&gdy, &gx, t, &gw, din, dout, &gdx, &gdw).unwrap();
        b.submit().unwrap();
        assert_close(&format!("linear_fwd {t}x{din}x{dout}"), &g.get(&gy), &y, FWD_TOL);
        assert_close(&format!("linear dx {t}x{din}x{dout}"), &g.get(&gdx), &dx, BWD_TOL);
        assert_close(&format!("linear dw {t}x{din}x{dout}"), &g.get(&gdw), &dw, BWD_TOL);
    }
}

#[test]
fn rmsnorm_forward_and_backward_match_cpu() {
    let g = gpu();
    for (i, &(rows, dim)) in [(1, 64), (17, 96), (40, 200)].iter().enumerate() {
        let s = 200 + i as u64 * 10;
        let x = random(rows * dim, s, 3.0);
        let w: Vec<f32> = random(dim, s + 1, 0.3).iter().map(|v| 1.0 + v).collect();
        let dy = random(rows * dim, s + 2, 1.0);
        let (dx0, dw0) = (random(rows * dim, s + 3, 0.1), random(dim, s + 4, 0.1));
        let (mut out, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
        cpu_ops::rmsnorm_fwd(&x, &w, 1e-5, dim, &mut out, &mut rstd);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        cpu_ops::rmsnorm_bwd(&dy, &x, &w, &rstd, dim, &mut dx, &mut dw);
        let (gx, gw, gdy) = (g.up(&x), g.up(&w), g.up(&dy));
        let (go, gr, gdx, gdw) = (g.zeros(rows * dim), g.zeros(rows), g.up(&dx0), g.up(&dw0));
        let mut b = g.dev.batch();
        b.rms_norm_fwd(&gx, &gw, 1e-5, dim, rows, &go, &gr).unwrap();
        b.rms_norm_bwd(&gdy, &gx, &gw, &gr, dim, rows, &gdx, &gdw).unwrap();
        b.submit().unwrap();
        assert_close(&format!("rmsnorm out {rows}x{dim}"), &g.get(&go), &out, FWD_TOL);
        assert_close(&format!("rmsnorm rstd {rows}x{dim}"), &g.get(&gr), &rstd, FWD_TOL);
        assert_close(&format!("rmsnorm dx {rows}x{dim}"), &g.get(&gdx), &dx, BWD_TOL);
        assert_close(&format!("rmsnorm dw {rows}x{dim}"), &g.get(&gdw), &dw, BWD_TOL);
    }
}

#[test]
fn rope_and_its_inverse_match_cpu_per_sequence_positions() {
    let g = gpu();
    let seq_lens = [5, 9, 3, 40];
    let n: usize = seq_lens.iter().sum();
    let positions: Vec<usize> = seq_lens.iter().flat_map(|&l| 0..l).collect();
    for (i, &(heads, hd)) in [(4, 16), (2, 64)].iter().enumerate() {
        let width = heads * hd;
        let table = RopeTable::new(hd, 10_000.0, 64);
        let x = random(n * width, 300 + i as u64, 1.0);
        let (mut fwd, mut inv) = (x.clone(), x.clone());
        table.fwd(&mut fwd, &positions);
        table.bwd(&mut inv, &positions);
        let gt = g.dev.rope_table(10_000.0, hd, 64).unwrap();
        let gp = g.dev.seq_positions(&seq_lens).unwrap();
        let (gf, gi) = (g.up(&x), g.up(&x));
        let mut b = g.dev.batch();
        b.rope_rows(&gf, n, width, hd, &gp, &gt, false).unwrap();
        b.rope_rows(&gi, n, width, hd, &gp, &gt, true).unwrap();
        b.submit().unwrap();
        assert_close(&format!("rope {heads}x{hd}"), &g.get(&gf), &fwd, FWD_TOL);
        assert_close(&format!("rope inverse {heads}x{hd}"), &g.get(&gi), &inv, BWD_TOL);
    }
}

#[test]
fn attention_forward_and_backward_match_cpu() {
    // Several sequences end to end (one past a 64-key block, some across 16-row blocks), GQA groups of 2 and 3,
    // head dims 16..128; the per-row kernels and the blocked ones (head dims up to 64, a multiple of 4: the
    // 128-wide case falls back to the per-row kernels there too).
    let cases: [(&[usize], usize, usize, usize); 7] = [
        (&[7, 70], 4, 2, 16),
        (&[3, 1, 20], 2, 1, 64),
        (&[12], 6, 3, 32),
        (&[5, 9], 2, 2, 128),
        (&[40, 90, 3], 6, 2, 64),
        (&[33], 2, 1, 20),
        (&[200], 2, 1, 64),
    ];
    for blocked in [false, true] {
        let dev = device().with_blocked_attention(blocked).with_attention_key_split(0);
        attention_matches_cpu_on(&Gpu { dev }, &cases);
    }
    // The backward's keys (dq) and rows (dk/dv) in parts of 64, as GPUs split short batches (128 there).
    attention_matches_cpu_on(&Gpu { dev: device().with_blocked_attention(true).with_attention_key_split(64) }, &cases);
}

fn attention_matches_cpu_on(g: &Gpu, cases: &[(&[usize], usize, usize, usize)]) {
    for (i, &(seq_lens, heads, kv_heads, hd)) in cases.iter().enumerate() {
        let n: usize = seq_lens.iter().sum();
        let (qw, kw) = (heads * hd, kv_heads * hd);
        let s = 400 + i as u64 * 10;
        let (q, k, v) = (random(n * qw, s, 1.5), random(n * kw, s + 1, 1.5), random(n * kw, s + 2, 1.0));
        let dout = random(n * qw, s + 3, 1.0);
        let shape = AttnShape { seq_lens, heads, kv_heads, head_dim: hd };
        let (mut out, mut lse) = (vec![0.0; n * qw], vec![0.0; n * heads]);
        cpu_ops::attention_fwd(shape, &q, &k, &v, &mut out, &mut lse);
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * qw], vec![0.0; n * kw], vec![0.0; n * kw]);
        cpu_ops::attention_bwd(shape, &q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv);
        let (gq, gk, gv, gdo) = (g.up(&q), g.up(&k), g.up(&v), g.up(&dout));
        let bounds = g.dev.seq_bounds(seq_lens).unwrap();
        let (go, gl) = (g.zeros(n * qw), g.zeros(n * heads));
        // Gradients are overwritten, so start them dirty.
        let (gdq, gdk, gdv) =
            (g.up(&random(n * qw, 1, 9.0)), g.up(&random(n * kw, 2, 9.0)), g.up(&random(n * kw, 3, 9.0)));
        let mut b = g.dev.batch();
        b.attention_fwd(&gq, &gk, &gv, &go, &gl, &bounds, n, heads, kv_heads, hd).unwrap();
        b.attention_bwd(&gq, &gk, &gv, &go, &gl, &gdo, &bounds, &gdq, &gdk, &gdv, n, heads, kv_heads, hd).unwrap();
        b.submit().unwrap();
        let what = format!("attention {seq_lens:?} {heads}/{kv_heads}x{hd} blocked {}", g.dev.blocked_attention());
        assert_close(&format!("{what} out"), &g.get(&go), &out, FWD_TOL);
        assert_close(&format!("{what} lse"), &g.get(&gl), &lse, FWD_TOL);
        assert_close(&format!("{what} dq"), &g.get(&gdq), &dq, BWD_TOL);
        assert_close(&format!("{what} dk"), &g.get(&gdk), &dk, BWD_TOL);
        assert_close(&format!("{what} dv"), &g.get(&gdv), &dv, BWD_TOL);
    }
}

#[test]
fn attention_refuses_shapes_it_cannot_run() {
    let g = gpu();
    let t = g.zeros(4096);
    let bounds = g.dev.seq_bounds(&[4]).unwrap();
    let mut b = g.dev.batch();
    assert!(matches!(b.attention_fwd(&t, &t, &t, &t, &t, &bounds, 4, 3, 2, 16), Err(WgpuError::Shape(_))));
    assert!(matches!(b.attention_fwd(&t, &t, &t, &t, &t, &bounds, 4, 1, 1, 512), Err(WgpuError::Shape(_))));
    // Bounds for fewer rows than the call names.
    assert!(matches!(b.attention_fwd(&t, &t, &t, &t, &t, &bounds, 8, 2, 1, 16), Err(WgpuError::Shape(_))));
    // A row offset with a block's worth of rows (the blocked kernels have no offset).
    let blocked = g.dev.with_blocked_attention(true);
    let mut b = blocked.batch();
    assert!(matches!(b.attention(&t, &t, &t, &t, 2, 16, 0, 2, 1, 16), Err(WgpuError::Shape(_))));
    assert!(b.attention(&t, &t, &t, &t, 2, 15, 0, 2, 1, 16).is_ok());
}

#[test]
fn swiglu_forward_and_backward_match_cpu() {
    let g = gpu();
    let n = 1000;
    let (gate, up, dy) = (random(n, 500, 6.0), random(n, 501, 2.0), random(n, 502, 1.0));
    let mut out = vec![0.0; n];
    cpu_ops::swiglu_fwd(&gate, &up, &mut out);
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    cpu_ops::swiglu_bwd(&dy, &gate, &up, &mut dg, &mut du);
    let (gg, gu, gdy, go, gdg, gdu) = (g.up(&gate), g.up(&up), g.up(&dy), g.zeros(n), g.zeros(n), g.zeros(n));
    let mut b = g.dev.batch();
    b.swiglu_fwd(&gg, &gu, &go, n).unwrap();
    b.swiglu_bwd(&gdy, &gg, &gu, &gdg, &gdu, n).unwrap();
    b.submit().unwrap();
    assert_close("swiglu out", &g.get(&go), &out, FWD_TOL);
    assert_close("swiglu dgate", &g.get(&gdg), &dg, BWD_TOL);
    assert_close("swiglu dup", &g.get(&gdu), &du, BWD_TOL);
    assert_eq!(g.get(&gg), gate, "the forward keeps its inputs");
}

#[test]
fn embedding_backward_adds_repeated_ids_like_cpu() {
    let g = gpu();
    let (vocab, dim) = (50, 24);
    let ids = [3u32, 49, 3, 0, 17, 3, 49, 8];
    let dout = random(ids.len() * dim, 600, 1.0);
    // The table gradient sits after 10 other floats of a flat buffer and already holds something.
    let flat0 = random(10 + vocab * dim, 601, 0.5);
    let mut want = flat0.clone();
    cpu_ops::embedding_bwd(&ids, &dout, dim, &mut want[10..]);
    let flat = g.up(&flat0);
    let mut b = g.dev.batch();
    b.embedding_bwd(&ids, &g.up(&dout), dim, vocab, &flat, 10).unwrap();
    b.submit().unwrap();
    // Same additions in the same order: exact.
    assert_eq!(g.get(&flat), want);
    let mut b = g.dev.batch();
    let err = b.embedding_bwd(&[50], &g.up(&dout), dim, vocab, &flat, 10);
    assert!(matches!(err, Err(WgpuError::Shape(_))), "{err:?}");
}

/// Runs the chunked LM head forward and backward on both backends and compares.
fn check_head(dev: &Device, n: usize, hidden: usize, vocab: usize, chunk: usize, with_entropy: bool, seed: u64) {
    let g = Gpu { dev: dev.clone() };
    let x = random(n * hidden, seed, 1.0);
    let w = random(vocab * hidden, seed + 1, 0.5);
    let targets: Vec<u32> = (0..n).map(|i| ((i * 97 + seed as usize) % vocab) as u32).collect();
    let dlogp = random(n, seed + 2, 1.0);
    let dent = random(n, seed + 3, 0.5);
    let stats = cpu_ops::lm_head_fwd(&x, n, hidden, &w, vocab, &targets, chunk);
    let (dx0, dw0) = (random(n * hidden, seed + 4, 0.1), random(vocab * hidden, seed + 5, 0.1));
    let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
    let dentropy = with_entropy.then_some(dent.as_slice());
    cpu_ops::lm_head_bwd(&x, n, hidden, &w, vocab, &targets, chunk, &stats, &dlogp, dentropy, &mut dx, &mut dw);
    let (gx, gw, gt) = (g.up(&x), g.up(&w), g.up_u32(&targets));
    let state = dev.head_state(n).unwrap();
    let (gdl, gde, gdx, gdw) = (g.up(&dlogp), g.up(&dent), g.up(&dx0), g.up(&dw0));
    let mut b = dev.batch();
    b.lm_head_fwd(&gx, n, hidden, &gw, vocab, &gt, chunk, &state).unwrap();
    let gdent = with_entropy.then_some(&gde);
    b.lm_head_bwd(&gx, n, hidden, &gw, vocab, &gt, chunk, &state, &gdl, gdent, &gdx, &gdw).unwrap();
    b.submit().unwrap();
    let got = dev.head_stats(&state, n).unwrap();
    let what = format!("lm head n={n} vocab={vocab} chunk={chunk} entropy={with_entropy}");
    assert_close(&format!("{what} logp"), &got.logp, &stats.logp, FWD_TOL);
    assert_close(&format!("{what} entropy"), &got.entropy, &stats.entropy, FWD_TOL);
    assert_close(&format!("{what} lse"), &got.lse, &stats.lse, FWD_TOL);
    // Cross-entropy is −logp of the target: its mean over rows agrees too.
    let ce = |l: &[f32]| -l.iter().sum::<f32>() / n as f32;
    assert!((ce(&got.logp) - ce(&stats.logp)).abs() <= FWD_TOL * ce(&stats.logp).abs().max(1.0));
    assert_close(&format!("{what} dx"), &g.get(&gdx), &dx, BWD_TOL);
    assert_close(&format!("{what} dw"), &g.get(&gdw), &dw, BWD_TOL);
}

#[test]
fn chunked_lm_head_matches_cpu() {
    let dev = device();
    // Chunks that do not divide the vocabulary, one chunk, and a chunk of one class.
    check_head(&dev, 13, 32, 300, 64, false, 700);
    check_head(&dev, 13, 32, 300, 64, true, 710);
    check_head(&dev, 70, 48, 130, 4096, true, 720);
    check_head(&dev, 3, 16, 20, 1, true, 730);
}

#[test]
fn lm_head_chunk_shrinks_to_fit_one_binding() {
    // A 4 KiB cap holds [40, 25] logits at most: the requested 256 classes per chunk would be refused as one
    // buffer, so the head runs 60 classes as chunks of 25, 25 and 10.
    let dev = device().with_binding_limit(4 << 10);
    check_head(&dev, 40, 16, 60, 256, true, 740);
}

#[test]
fn adamw_steps_match_cpu() {
    let g = gpu();
    let n = 777;
    let cfg = AdamW { lr: 3e-3, weight_decay: 0.1, ..AdamW::default() };
    let p0 = random(n, 800, 1.0);
    let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
    let (gp, gm, gv) = (g.up(&p0), g.zeros(n), g.zeros(n));
    for step in 1..=5u64 {
        let grad = random(n, 810 + step, 1.0);
        // The first 100 floats (a norm, say) without decay, the rest with.
        cpu_ops::adamw_step(&mut p[..100], &grad[..100], &mut m[..100], &mut v[..100], step, &cfg, 0.0);
        cpu_ops::adamw_step(&mut p[100..], &grad[100..], &mut m[100..], &mut v[100..], step, &cfg, cfg.weight_decay);
        let gg = g.up(&grad);
        let mut b = g.dev.batch();
        b.adamw(&gp, &gg, &gm, &gv, 0, 100, step, &cfg, 0.0, None).unwrap();
        b.adamw(&gp, &gg, &gm, &gv, 100, n - 100, step, &cfg, cfg.weight_decay, None).unwrap();
        b.submit().unwrap();
    }
    // Compare the updates (p − p0): the parameters themselves barely move.
    let delta = |p: &[f32]| p.iter().zip(&p0).map(|(a, b)| a - b).collect::<Vec<_>>();
    assert_close("adamw update", &delta(&g.get(&gp)), &delta(&p), BWD_TOL);
    assert_close("adamw m", &g.get(&gm), &m, BWD_TOL);
    assert_close("adamw v", &g.get(&gv), &v, BWD_TOL);
}

#[test]
fn grad_norm_and_clipping_inside_adamw_match_cpu() {
    let g = gpu();
    // Tensors of one float, of part of a segment, and of several 4,096-float segments.
    let sizes = [1, 300, 9000, 4096];
    let grads: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| random(n, 900 + i as u64, 1.0)).collect();
    let first: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| random(n, 920 + i as u64, 0.1)).collect();
    let p0: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| random(n, 940 + i as u64, 1.0)).collect();
    let flat: Vec<f32> = grads.iter().flatten().copied().collect();
    let want = cpu_ops::grad_norm(&flat);
    let cfg = AdamW { lr: 3e-3, ..AdamW::default() };
    for max_norm in [want * 2.0, want / 3.0] {
        // Step 1 unclipped (so that step 2's update depends on the scale of its gradient), step 2 clipped.
        let params: Vec<Tensor> = p0.iter().map(|v| g.up(v)).collect();
        let moments: Vec<(Tensor, Tensor)> = sizes.iter().map(|&n| (g.zeros(n), g.zeros(n))).collect();
        let mut b = g.dev.batch();
        for (i, &n) in sizes.iter().enumerate() {
            let (m, v) = &moments[i];
            b.adamw(&params[i], &g.up(&first[i]), m, v, 0, n, 1, &cfg, 0.0, None).unwrap();
        }
        let tensors: Vec<Tensor> = grads.iter().map(|v| g.up(v)).collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let norm = b.grad_norm(&refs).unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            let (m, v) = &moments[i];
            b.adamw(&params[i], &tensors[i], m, v, 0, n, 2, &cfg, 0.0, Some((&norm, max_norm))).unwrap();
        }
        b.submit().unwrap();
        let got = g.get(&norm)[0];
        assert!((got - want).abs() <= FWD_TOL * want, "grad norm {got} vs {want}");
        let mut clipped = flat.clone();
        assert_eq!(cpu_ops::clip_grad_norm(&mut clipped, max_norm), want);
        let got_all: Vec<f32> = tensors.iter().flat_map(|t| g.get(t)).collect();
        assert_close(&format!("clipped to {max_norm}"), &got_all, &clipped, BWD_TOL);
        let (mut want_delta, mut got_delta) = (Vec::new(), Vec::new());
        let mut at = 0;
        for (i, &n) in sizes.iter().enumerate() {
            let (mut p, mut m, mut v) = (p0[i].clone(), vec![0.0; n], vec![0.0; n]);
            cpu_ops::adamw_step(&mut p, &first[i], &mut m, &mut v, 1, &cfg, 0.0);
            cpu_ops::adamw_step(&mut p, &clipped[at..at + n], &mut m, &mut v, 2, &cfg, 0.0);
            at += n;
            want_delta.extend(p.iter().zip(&p0[i]).map(|(a, b)| a - b));
            got_delta.extend(g.get(&params[i]).iter().zip(&p0[i]).map(|(a, b)| a - b));
        }
        assert_close(&format!("adamw update clipped to {max_norm}"), &got_delta, &want_delta, BWD_TOL);
    }
}

#[test]
fn grpo_loss_matches_cpu() {
    let g = gpu();
    let n = 600;
    let logp = random(n, 1000, 2.0).iter().map(|v| v - 2.5).collect::<Vec<_>>();
    // Old log-probs within ±0.6 of the new ones, so ratios straddle both clip bounds.
    let old: Vec<f32> = logp.iter().zip(random(n, 1001, 0.6)).map(|(l, d)| l + d).collect();
    let adv = random(n, 1002, 2.0);
    let mask: Vec<bool> = (0..n).map(|i| i % 7 != 3).collect();
    for clip in [
        GrpoClip::default(),
        GrpoClip { clip_eps: 0.1, dual_clip: None },
        GrpoClip { clip_eps: 0.3, dual_clip: Some(1.2) },
    ] {
        let denom = 1000.0;
        let mut want_d = vec![0.0; n];
        let want = cpu_ops::grpo_loss(&logp, &old, &adv, &mask, &clip, denom, &mut want_d);
        assert!(want.clipped > 0 && want.clipped < want.tokens, "the case exercises both branches: {want:?}");
        let gm = g.up_u32(&mask.iter().map(|&m| u32::from(m)).collect::<Vec<_>>());
        let (gd, out) = (g.up(&random(n, 5, 3.0)), g.zeros(3));
        let mut b = g.dev.batch();
        b.grpo_loss(&g.up(&logp), &g.up(&old), &g.up(&adv), &gm, n, &clip, denom, &gd, &out).unwrap();
        b.submit().unwrap();
        let got = g.dev.grpo_stats(&out).unwrap();
        assert_eq!((got.tokens, got.clipped), (want.tokens, want.clipped), "{clip:?}");
        assert!((got.loss - want.loss).abs() <= FWD_TOL * want.loss.abs().max(1e-3), "{got:?} vs {want:?}");
        assert_close(&format!("grpo dlogp {clip:?}"), &g.get(&gd), &want_d, BWD_TOL);
    }
}
