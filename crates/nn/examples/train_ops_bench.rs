//! Per-op timings of the CPU training ops at SmolLM2-135M shapes (seq 512, batch 1), to see where a training
//! step's time goes: matmul GFLOP/s for each projection (forward and both backward products), attention forward
//! and backward, the chunked LM head, AdamW. Quick measurement, not a criterion bench.
//!
//! `cargo run --release -p userrl-nn --example train_ops_bench -- [tokens=512]`

use std::time::Instant;

use userrl_nn::cpu_ops::{self, AdamW, AttnShape};

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    let (h, kv, f, vocab, heads, kv_heads, hd, layers) = (576, 192, 1536, 49152, 9, 3, 64, 30);
    let fill = |len: usize, s: f32| (0..len).map(|i| ((i as f32 * 0.618).fract() - 0.5) * s).collect::<Vec<f32>>();
    let mut total = 0.0;
    for (name, i, o, count) in [("q/o", h, h, 2), ("k/v", h, kv, 2), ("gate/up", h, f, 2), ("down", f, h, 1)] {
        let (x, w, dy) = (fill(n * i, 1.0), fill(o * i, 0.1), fill(n * o, 1.0));
        let (mut y, mut dx, mut dw) = (vec![0.0; n * o], vec![0.0; n * i], vec![0.0; o * i]);
        let tf = time(5, || cpu_ops::linear_fwd(&x, n, &w, i, o, &mut y));
        let tb = time(5, || cpu_ops::linear_bwd(&dy, &x, n, &w, i, o, &mut dx, &mut dw));
        let gf = 2.0 * (n * i * o) as f64 / 1e9;
        println!("linear {name:8} [{n}x{i}]x[{i}x{o}]: fwd {:6.1} GFLOP/s, bwd {:6.1} GFLOP/s", gf / tf, 2.0 * gf / tb);
        total += (tf + tb) * (count * layers) as f64;
    }
    let seq_lens = [n];
    let shape = AttnShape { seq_lens: &seq_lens, heads, kv_heads, head_dim: hd };
    let (q, k, v) = (fill(n * h, 1.0), fill(n * kv, 1.0), fill(n * kv, 1.0));
    let (mut out, mut lse) = (vec![0.0; n * h], vec![0.0; n * heads]);
    let ta = time(5, || cpu_ops::attention_fwd(shape, &q, &k, &v, &mut out, &mut lse));
    let (mut dq, mut dk, mut dv) = (vec![0.0; n * h], vec![0.0; n * kv], vec![0.0; n * kv]);
    let tab = time(5, || cpu_ops::attention_bwd(shape, &q, &k, &v, &out, &lse, &q, &mut dq, &mut dk, &mut dv));
    println!("attention fwd {:.1} ms, bwd {:.1} ms (per layer)", ta * 1e3, tab * 1e3);
    total += (ta + tab) * layers as f64;
    let (x, w) = (fill(n * h, 1.0), fill(vocab * h, 0.1));
    let targets: Vec<u32> = (0..n as u32).map(|i| i * 97 % vocab as u32).collect();
    let mut stats = None;
    let th = time(2, || stats = Some(cpu_ops::lm_head_fwd(&x, n, h, &w, vocab, &targets, 4096)));
    let stats = stats.unwrap_or_default();
    let (mut dx, mut dw) = (vec![0.0; n * h], vec![0.0; vocab * h]);
    let dlogp = vec![-1.0 / n as f32; n];
    let thb =
        time(2, || cpu_ops::lm_head_bwd(&x, n, h, &w, vocab, &targets, 4096, &stats, &dlogp, None, &mut dx, &mut dw));
    let gf = 2.0 * (n * h * vocab) as f64 / 1e9;
    println!(
        "lm head fwd {:.0} ms ({:.1} GFLOP/s), bwd {:.0} ms ({:.1} GFLOP/s incl. recompute)",
        th * 1e3,
        gf / th,
        thb * 1e3,
        3.0 * gf / thb
    );
    total += th + thb;
    let params = 134_515_008;
    let (mut p, g, mut m, mut v2) = (fill(params, 0.1), fill(params, 0.01), vec![0.0; params], vec![0.0; params]);
    let tadam = time(2, || cpu_ops::adamw_step(&mut p, &g, &mut m, &mut v2, 1, &AdamW::default(), 0.01));
    println!("adamw over {params} params: {:.0} ms", tadam * 1e3);
    total += tadam;
    println!("sum of the above for a {layers}-layer step: {total:.2} s ({:.1} tokens/s)", n as f64 / total);
}
