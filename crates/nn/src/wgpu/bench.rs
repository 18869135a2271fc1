//! The wgpu side of `userrl bench nn --device wgpu`: training-step throughput (forward + backward + AdamW through
//! [`WgpuTrainer`]) on the same synthetic SFT batch the CPU training bench uses, median of timed steps after one
//! warm-up. Each timed step waits for the device to finish its AdamW update, so it measures finished work.

use super::{Device, WgpuError, WgpuTrainer};
use crate::bench::{median_seconds, synthetic_batch};
use crate::cpu_ops::AdamW;
use crate::train::{Objective, TrainStep, TrainableLlama};

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainStepResult {
    /// The adapter, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) Cpu Vulkan".
    pub device: String,
    pub seq: usize,
    pub batch: usize,
    pub runs: usize,
    /// Median seconds per optimiser step.
    pub seconds_per_step: f64,
    /// `seq · batch / seconds_per_step`.
    pub tokens_per_s: f64,
}

/// Training-step tokens/s of `model` on `device` (the model is uploaded; its CPU copy is not changed).
pub fn train_step(
    device: &Device,
    model: &TrainableLlama,
    seq: usize,
    batch: usize,
    runs: usize,
) -> Result<TrainStepResult, WgpuError> {
    let mut trainer = WgpuTrainer::new(device, model)?;
    let seqs = synthetic_batch(model.config.vocab, seq, batch);
    let step = TrainStep {
        micro_batches: vec![&seqs],
        objective: Objective::Sft,
        adamw: AdamW { lr: 1e-5, ..AdamW::default() },
        max_grad_norm: Some(1.0),
    };
    let seconds = median_seconds(runs, || {
        trainer.train_step(&step)?;
        device.wait()
    })?;
    let info = device.info();
    Ok(TrainStepResult {
        device: format!("{} {:?} {:?}", info.name, info.device_type, info.backend),
        seq,
        batch,
        runs,
        seconds_per_step: seconds,
        tokens_per_s: (seq * batch) as f64 / seconds,
    })
}
