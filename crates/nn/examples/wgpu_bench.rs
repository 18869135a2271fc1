//! The wgpu numbers of `userrl bench nn --device wgpu` without building the whole `userrl` binary (a small file
//! to carry to a GPU machine): many-row matmul GFLOP/s with both tilings, prefill and batch-1 and batch-16 decode
//! tokens/s, and the training step (forward + backward + AdamW) and its log-prob forward, on a random model of the
//! given shape — the work only
//! depends on the shapes. Prints one JSON line; with `USERRL_WGPU_PROFILE=1` (an adapter with timestamp queries)
//! it adds the GPU time per kernel of the prefill runs (warm-up included), of the decode runs (their prompts
//! included) and of the training steps (each dispatch then runs in a pass of its own, so the timings of that run
//! are slower).
//!
//! `WGPU_BACKEND=vulkan cargo run --release -p userrl-nn --example wgpu_bench -- [smollm2|tiny] [seq=512] [batch=1] [runs=3]`

use userrl_nn::checkpoint::random_model;
use userrl_nn::model::LlamaConfig;
use userrl_nn::train::{TrainableLlama, tiny_config};
use userrl_nn::wgpu::{Device, WgpuLlama, bench};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let config = match args.get(1).map(String::as_str) {
        Some("tiny") => LlamaConfig { context: 4096, ..tiny_config() },
        _ => LlamaConfig::smollm2_135m(),
    };
    let (seq, batch, runs) = (arg(2, 512), arg(3, 1), arg(4, 3));
    let device = Device::wgpu()?;
    eprintln!(
        "device {device:?}, many-row matmuls with {:?} tiles (split-k target {}), blocked attention {} (key split {})",
        device.matmul_tiles(),
        device.split_k_target(),
        device.blocked_attention(),
        device.attention_key_split()
    );
    let matmul = bench::matmul(&device, 2048, runs)?;
    device.take_profile();
    let model = WgpuLlama::new(&device, &random_model(config.clone(), true, 1))?;
    let prefill = userrl_nn::bench::prefill(&model, seq, runs)?;
    let profile_prefill = device.take_profile();
    let decode = userrl_nn::bench::decode(&model, 64, 32, runs)?;
    let decode16 = userrl_nn::bench::decode_batch(&model, 16, 64, 32, runs)?;
    drop(model);
    let profile_decode = device.take_profile();
    let trainable = TrainableLlama::random(&config, 1, true)?;
    let train = bench::train_step(&device, &trainable, seq, batch, runs)?;
    let profile_train = device.take_profile();
    let report = serde_json::json!({
        "adapter": format!("{device:?}"),
        "matmul_tiles": format!("{:?}", device.matmul_tiles()),
        "blocked_attention": device.blocked_attention(),
        "split_k_target": device.split_k_target(),
        "attention_key_split": device.attention_key_split(),
        "matmul": matmul,
        "prefill_tokens": seq,
        "prefill_tokens_per_s": prefill,
        "decode_batch1_tokens_per_s": decode,
        "decode_batch16_tokens_per_s": decode16,
        "train_step": train,
        "profile_prefill": profile_prefill,
        "profile_decode": profile_decode,
        "profile_train": profile_train,
    });
    println!("{report}");
    Ok(())
}
