//! wgpu backend throughput, printed (never asserted): the f32 matmul at 256³ and 1024³ against the CPU sgemm, and
//! SmolLM2-135M prefill / decode on wgpu against the CPU backend.
//! `WGPU_BACKEND=vulkan cargo bench -p userrl-nn --bench wgpu` (the model part needs `scripts/setup`).

use std::path::PathBuf;
use std::time::Instant;

use userrl_nn::gguf::Gguf;
use userrl_nn::model::{Llama, linear};
use userrl_nn::tokenizer::{ChatMessage, Tokenizer};
use userrl_nn::wgpu::{Device, WgpuError, WgpuLlama};

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn matmul(device: &Device, n: usize) -> Result<(), WgpuError> {
    let flops = 2.0 * (n * n * n) as f64;
    let (x, w) = (values(n * n), values(n * n));
    let (gx, gw, gy) = (device.upload(&x)?, device.upload_matrix(&w, n, n)?, device.zeros(n * n)?);
    let run = |reps: usize| -> Result<f64, WgpuError> {
        let start = Instant::now();
        let mut b = device.batch();
        for _ in 0..reps {
            b.linear(&gx, n, &gw, &gy)?;
        }
        b.submit()?;
        device.download_range(&gy, 0, 1)?;
        Ok(start.elapsed().as_secs_f64())
    };
    run(1)?;
    let reps = if n <= 256 { 20 } else { 3 };
    let gpu = flops * reps as f64 / run(reps)? / 1e9;
    let mut y = vec![0.0; n * n];
    let start = Instant::now();
    for _ in 0..reps {
        linear(&x, n, &w, n, n, &mut y);
    }
    let cpu = flops * reps as f64 / start.elapsed().as_secs_f64() / 1e9;
    println!("matmul {n}x{n}x{n}: wgpu {gpu:.2} GFLOP/s, cpu sgemm {cpu:.1} GFLOP/s");
    Ok(())
}

/// The decode-shaped product (one row) of SmolLM2's LM head, `[1, 576] · [49152, 576]ᵀ`.
fn matvec(device: &Device) -> Result<(), WgpuError> {
    let (k, n) = (576, 49_152);
    let (gx, gw, gy) = (device.upload(&values(k))?, device.upload_matrix(&values(n * k), n, k)?, device.zeros(n)?);
    let run = |reps: usize| -> Result<f64, WgpuError> {
        let start = Instant::now();
        let mut b = device.batch();
        for _ in 0..reps {
            b.linear(&gx, 1, &gw, &gy)?;
        }
        b.submit()?;
        device.download_range(&gy, 0, 1)?;
        Ok(start.elapsed().as_secs_f64() / reps as f64)
    };
    run(1)?;
    let dt = run(10)?;
    println!(
        "matvec 1x{k}x{n}: wgpu {:.2} ms, {:.2} GFLOP/s, {:.2} GB/s of weights",
        dt * 1e3,
        2.0 * (k * n) as f64 / dt / 1e9,
        (4 * k * n) as f64 / dt / 1e9
    );
    Ok(())
}

fn smollm2(device: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        println!("smollm2: {} is missing (run scripts/setup)", path.display());
        return Ok(());
    }
    let gguf = Gguf::open(&path)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let cpu = Llama::from_gguf(&gguf)?;
    let gpu = WgpuLlama::new(device, &cpu)?;
    let prompt = tokenizer.render_chat(&[ChatMessage::new("user", "Write a long story about a dragon.")], true)?;
    let ids = tokenizer.encode(&prompt)?;
    let steps = 32;
    let next =
        |logits: &[f32]| logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i) as u32;

    let mut cache = cpu.new_cache();
    let t = Instant::now();
    let mut logits = cpu.forward_last(&ids, &mut cache)?;
    let cpu_prefill = ids.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..steps {
        logits = cpu.forward_last(&[next(&logits)], &mut cache)?;
    }
    let cpu_decode = steps as f64 / t.elapsed().as_secs_f64();

    let mut cache = gpu.new_cache();
    gpu.forward_last(&ids[..1], &mut gpu.new_cache())?; // warm-up (pipeline caches, first allocations)
    let t = Instant::now();
    let mut logits = gpu.forward_last(&ids, &mut cache)?;
    let gpu_prefill = ids.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..steps {
        logits = gpu.forward_last(&[next(&logits)], &mut cache)?;
    }
    let gpu_decode = steps as f64 / t.elapsed().as_secs_f64();
    println!(
        "smollm2 prompt {} tokens, {steps} greedy steps: prefill wgpu {gpu_prefill:.1} tok/s, cpu {cpu_prefill:.1} \
         tok/s; decode wgpu {gpu_decode:.2} tok/s, cpu {cpu_decode:.1} tok/s",
        ids.len()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes flags such as --bench; this harness takes none.
    let device = Device::wgpu()?;
    println!("device: {device:?}");
    for n in [256, 1024] {
        matmul(&device, n)?;
    }
    matvec(&device)?;
    smollm2(&device)
}
