//! The wgpu side of `userrl bench nn --device wgpu`: training-step throughput (forward + backward + AdamW through
//! [`WgpuTrainer`]) on the same synthetic SFT batch the CPU training bench uses, median of timed steps after one
//! warm-up. Each timed step waits for the device to finish its AdamW update, so it measures finished work; the
//! log-prob forward over the same batch reads its results back, so it does too.

use super::{Device, MatmulTiles, WgpuError, WgpuTrainer};
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
    /// Tokens/s of [`WgpuTrainer::token_logprobs`] over the same batch (GRPO's old-log-prob recompute).
    pub logprob_tokens_per_s: f64,
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
    let tokens: Vec<&[u32]> = seqs.iter().map(|s| s.tokens.as_slice()).collect();
    let logprob_seconds = median_seconds(runs, || trainer.token_logprobs(&tokens).map(|_| ()))?;
    let info = device.info();
    Ok(TrainStepResult {
        device: format!("{} {:?} {:?}", info.name, info.device_type, info.backend),
        seq,
        batch,
        runs,
        seconds_per_step: seconds,
        tokens_per_s: (seq * batch) as f64 / seconds,
        logprob_tokens_per_s: (seq * batch) as f64 / logprob_seconds,
    })
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MatmulResult {
    pub n: usize,
    /// "Registers" or "Shared" ([`super::MatmulTiles`]).
    pub tiles: String,
    pub gflops: f64,
}

/// GFLOP/s of the many-row matmul (`y = x · wᵀ`, the layout of prefill and the training forward) on an
/// `n × n × n` problem, each timed run waiting for the device, with each tiling the adapter can run.
pub fn matmul(device: &Device, n: usize, runs: usize) -> Result<Vec<MatmulResult>, WgpuError> {
    let x: Vec<f32> = (0..n * n).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let w: Vec<f32> = (0..n * n).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    let (gx, gw, gy) = (device.upload(&x)?, device.upload_matrix(&w, n, n)?, device.zeros(n * n)?);
    let flops = 2.0 * (n as f64).powi(3);
    [MatmulTiles::Registers, MatmulTiles::Shared]
        .into_iter()
        .map(|tiles| {
            let dev = device.with_matmul_tiles(tiles);
            let seconds = median_seconds(runs, || {
                let mut batch = dev.batch();
                batch.linear(&gx, n, &gw, &gy)?;
                batch.submit()?;
                dev.wait()
            })?;
            Ok(MatmulResult { n, tiles: format!("{tiles:?}"), gflops: flops / seconds / 1e9 })
        })
        .collect()
}
