//! Where a run's optimiser steps execute: the CPU trainer, or the wgpu trainer (WGSL forward, backward and
//! AdamW on a GPU) as the run config's `model.device` says, with GRPO's old-log-prob recompute beside them. The CPU
//! copy of the model stays the run's truth for everything else — rollouts, evaluation, checkpoints — so after each device step
//! the weights, gradients and AdamW moments are read back into it (an exact copy: checkpoints and resume do not
//! care where a step ran).

use std::ops::Deref;

use userrl_nn::train::{StepStats, TrainStep, TrainableLlama};
use userrl_nn::wgpu::{Device, WgpuTrainer};

use crate::config::DeviceChoice;
use crate::train::TrainError;

pub struct Learner {
    model: TrainableLlama,
    gpu: Option<WgpuTrainer>,
}

impl Deref for Learner {
    type Target = TrainableLlama;
    fn deref(&self) -> &TrainableLlama {
        &self.model
    }
}

impl Learner {
    /// `auto` trains on a hardware GPU when wgpu finds one, else on the CPU; `wgpu` insists on wgpu (software
    /// adapters such as lavapipe included) and fails with the reason when there is none.
    pub fn new(model: TrainableLlama, device: DeviceChoice) -> Result<Learner, TrainError> {
        let device = match device {
            DeviceChoice::Cpu => None,
            DeviceChoice::Auto => Device::auto(),
            DeviceChoice::Wgpu => Some(Device::wgpu()?),
        };
        let gpu = device.map(|d| WgpuTrainer::new(&d, &model)).transpose()?;
        if let Some(trainer) = &gpu {
            tracing::info!(device = ?trainer.device(), "training steps run on wgpu");
        }
        Ok(Learner { model, gpu })
    }

    /// "cpu", or the wgpu adapter's description.
    pub fn device_name(&self) -> String {
        match &self.gpu {
            None => "cpu".into(),
            Some(trainer) => format!("{:?}", trainer.device()),
        }
    }

    /// One optimiser step (forward, backward, AdamW) on the learner's device.
    pub fn train_step(&mut self, step: &TrainStep) -> Result<StepStats, TrainError> {
        match &mut self.gpu {
            None => Ok(self.model.train_step(step)?),
            Some(trainer) => {
                let stats = trainer.train_step(step)?;
                trainer.write_into(&mut self.model)?;
                Ok(stats)
            }
        }
    }

    /// Per-token log-probs under the current weights (`TrainableLlama::token_logprobs`), on the device the steps
    /// run on: GRPO's old log-probs then come from the kernels of the update they feed, and a GPU run does not
    /// wait on a CPU forward over every trajectory.
    pub fn token_logprobs(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, TrainError> {
        match &self.gpu {
            None => Ok(self.model.token_logprobs(seqs)?),
            Some(trainer) => Ok(trainer.token_logprobs(seqs)?),
        }
    }

    /// Zero AdamW's moments and step count (GRPO starts with a fresh optimiser after SFT), on both copies.
    pub fn reset_optimizer(&mut self) -> Result<(), TrainError> {
        self.model.adam_m.iter_mut().for_each(|m| *m = 0.0);
        self.model.adam_v.iter_mut().for_each(|v| *v = 0.0);
        self.model.step = 0;
        if let Some(trainer) = &mut self.gpu {
            *trainer = WgpuTrainer::new(trainer.device(), &self.model)?;
        }
        Ok(())
    }
}
