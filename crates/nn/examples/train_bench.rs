//! Quick measurement of a CPU training step (forward + backward + AdamW) on SmolLM2-135M dequantised to f32:
//! tokens/s and peak RSS. Not a criterion bench: one warm-up step, then the mean of a few timed steps.
//!
//! `cargo run --release -p userrl-nn --example train_bench -- [seq=512] [batch=1] [steps=3] [model path|random:smollm2-135m]`

use std::path::PathBuf;
use std::time::Instant;

use userrl_nn::cpu_ops::AdamW;
use userrl_nn::gguf::Gguf;
use userrl_nn::model::Llama;
use userrl_nn::train::{Objective, TrainSequence, TrainStep, TrainableLlama};

fn vm_hwm_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Seconds of CPU (user + system) this process has used, from /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (seq, batch, steps) = (arg(1, 512), arg(2, 1), arg(3, 3));
    let path = args.get(4).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let t0 = Instant::now();
    // `random:smollm2-135m`: the same shapes with random weights (a GPU box without the model file, and the
    // PyTorch peer's own set-up).
    let mut model = if path.as_os_str() == "random:smollm2-135m" {
        TrainableLlama::random(&userrl_nn::model::LlamaConfig::smollm2_135m(), 1, true)?
    } else {
        TrainableLlama::from_llama(&Llama::from_gguf(&Gguf::open(&path)?)?)?
    };
    println!("loaded {} parameters in {:.1}s", model.layout.total, t0.elapsed().as_secs_f64());
    // Deterministic pseudo-text: ids spread over the vocabulary; the loss covers every predicted token.
    let vocab = model.config.vocab as u64;
    let seqs: Vec<TrainSequence> = (0..batch as u64)
        .map(|b| {
            let tokens =
                (0..seq as u64).map(|i| ((i * 7919 + b * 104_729 + 13) * 2_654_435_761 % vocab) as u32).collect();
            TrainSequence::sft(tokens, 1)
        })
        .collect();
    let step = TrainStep {
        micro_batches: vec![&seqs],
        objective: Objective::Sft,
        adamw: AdamW { lr: 1e-5, ..AdamW::default() },
        max_grad_norm: Some(1.0),
    };
    let t = Instant::now();
    let s = model.train_step(&step)?;
    println!("warm-up step: {:.2}s, loss {:.3}, grad norm {:.3}", t.elapsed().as_secs_f64(), s.loss, s.grad_norm);
    let toks: Vec<&[u32]> = seqs.iter().map(|s| s.tokens.as_slice()).collect();
    let t = Instant::now();
    model.token_logprobs(&toks)?;
    println!("forward + chunked head only: {:.2}s", t.elapsed().as_secs_f64());
    let (t, cpu0) = (Instant::now(), cpu_seconds().unwrap_or(f64::NAN));
    for _ in 0..steps {
        let s = model.train_step(&step)?;
        println!("  loss {:.3} grad norm {:.3} entropy {:.3}", s.loss, s.grad_norm, s.entropy);
    }
    let per_step = t.elapsed().as_secs_f64() / steps as f64;
    let cpu_per_step = (cpu_seconds().unwrap_or(f64::NAN) - cpu0) / steps as f64;
    println!("CPU time {cpu_per_step:.2} s/step over {} threads", rayon::current_num_threads());
    println!(
        "seq {seq} batch {batch}: {per_step:.2} s/step, {:.1} tokens/s (forward + backward + AdamW), peak RSS {:.0} MiB",
        (seq * batch) as f64 / per_step,
        vm_hwm_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
