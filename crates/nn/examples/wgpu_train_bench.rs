//! Training-step throughput on the wgpu backend (what `userrl bench nn --device wgpu` reports), on a random model
//! of the given config so that no weights file is needed: the work per step only depends on the shapes.
//!
//! `WGPU_BACKEND=vulkan cargo run -p userrl-nn --example wgpu_train_bench -- [smollm2|tiny] [seq=64] [batch=1] [runs=3]`

use userrl_nn::model::LlamaConfig;
use userrl_nn::train::{TrainableLlama, tiny_config};
use userrl_nn::wgpu::{Device, bench};

/// SmolLM2-135M's shape (the GGUF's metadata).
fn smollm2() -> LlamaConfig {
    LlamaConfig {
        vocab: 49_152,
        hidden: 576,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        ffn: 1536,
        rope_theta: 100_000.0,
        eps: 1e-5,
        context: 2048,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let config = match args.get(1).map(String::as_str) {
        Some("tiny") => LlamaConfig { context: 4096, ..tiny_config() },
        _ => smollm2(),
    };
    let (seq, batch, runs) = (arg(2, 64), arg(3, 1), arg(4, 3));
    let device = Device::wgpu()?;
    let model = TrainableLlama::random(&config, 1, true)?;
    println!("{} parameters, device {:?}", model.layout.total, device);
    let r = bench::train_step(&device, &model, seq, batch, runs)?;
    println!(
        "wgpu training step, seq {seq} batch {batch}: {:.2} s/step, {:.1} tokens/s (median of {runs})",
        r.seconds_per_step, r.tokens_per_s
    );
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
