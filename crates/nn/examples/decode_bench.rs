//! Quick decode measurement for kernel work (the few-row kernels at each row count, decode tokens/s at batch 1
//! and N in f32 and f16, the f16 sampler-vs-trainer log-prob gap) without building the whole `userrl` binary;
//! `userrl bench nn` reports the same numbers with the rest.
//!
//! `cargo run --release -p userrl-nn --example decode_bench -- [runs=5] [batch=16] [all|kernel|b1|bn|gap|rows][:f32|:f16] [model]`

use std::path::PathBuf;

use userrl_nn::bench;
use userrl_nn::gguf::Gguf;
use userrl_nn::model::{Llama, Precision};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (runs, batch) = (arg(1, 5), arg(2, 16));
    // `b1:f16` / `bn:f32` / `gap:f16` run one precision only (profiling one path).
    let (what, only) = match args.get(3).map_or("all", String::as_str).split_once(':') {
        Some((what, p)) => (what, Some(p.parse::<Precision>()?)),
        None => (args.get(3).map_or("all", String::as_str), None),
    };
    let path = args.get(4).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let mut model = Llama::from_gguf(&Gguf::open(&path)?)?;
    let (h, vocab, ffn) = (model.config.hidden, model.config.vocab, model.config.ffn);
    let kernels = if what == "all" || what == "kernel" { vec![(h, vocab), (h, ffn), (ffn, h)] } else { vec![] };
    for (i, o) in kernels {
        for k in bench::skinny(&[1, 2, 4, 8, 12, 16], i, o, runs) {
            println!(
                "kernel {:>2} x {:>4} -> {:>5}: f32 {:6.1} GFLOP/s  f16 {:6.1} GFLOP/s  bf16 {:6.1} GFLOP/s",
                k.rows, k.in_dim, k.out_dim, k.f32_gflops, k.f16_gflops, k.bf16_gflops
            );
        }
    }
    for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
        if only.is_some_and(|p| p != precision) {
            continue;
        }
        model.set_precision(precision);
        if what == "all" || what == "b1" {
            println!("{precision}: decode b1 {:.1} tok/s", bench::decode(&model, 64, 32, runs)?);
        }
        if what == "all" || what == "bn" {
            let cpu0 = cpu_seconds();
            let rate = bench::decode_batch(&model, batch, 64, 32, runs)?;
            let cpu = cpu_seconds() - cpu0;
            println!(
                "{precision}: decode b{batch} {rate:.1} tok/s, cpu {:.2} ms per token",
                cpu * 1e3 / ((runs + 1) * 32 * batch) as f64
            );
        }
        if what == "all" || what == "gap" {
            let prompt = bench::synthetic_prompt(&model.config, 64);
            let gap = bench::logprob_gap(&model, &prompt, 128, 7)?;
            println!("{precision}: log-prob gap mean {:.2e} max {:.2e}", gap.mean_abs, gap.max_abs);
        }
    }
    if what == "rows" {
        // Where the few-row kernel stops beating the sgemm (the cut-over `skinny::MAX_ROWS`).
        for (i, o) in [(h, vocab), (h, ffn), (ffn, h)] {
            for t in [32, 64, 96, 128, 192] {
                let x: Vec<f32> = (0..t * i).map(|v| ((v % 97) as f32 - 48.0) / 97.0).collect();
                let w: Vec<f32> = (0..i * o).map(|v| ((v % 89) as f32 - 44.0) / 89.0).collect();
                let mut y = vec![0.0f32; t * o];
                let flops = 2.0 * (t * i * o) as f64;
                let few = bench::median_seconds::<()>(runs, || {
                    userrl_nn::skinny::linear_few_rows(&x, t, &w, i, o, &mut y);
                    Ok(())
                })
                .unwrap_or(f64::NAN);
                let sgemm = bench::median_seconds::<()>(runs, || {
                    userrl_nn::cpu_ops::linear_fwd(&x, t, &w, i, o, &mut y);
                    Ok(())
                })
                .unwrap_or(f64::NAN);
                println!(
                    "{t:>2} x {i:>4} -> {o:>5}: few-row {:6.1} GFLOP/s, sgemm {:6.1} GFLOP/s",
                    flops / few / 1e9,
                    flops / sgemm / 1e9
                );
            }
        }
    }
    println!("load: {}", std::fs::read_to_string("/proc/loadavg")?.trim());
    Ok(())
}

/// This process's user + system CPU seconds (from `/proc/self/stat`, 10 ms ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}
