//! userrl-nn: the policy engine. LLaMA-family weights from GGUF files (v3; F32, F16, Q4_0, Q4_1, Q8_0
//! dequantised to f32), the tokenizer and chat template, inference and generation on two backends (native CPU
//! in `model`; WGSL compute shaders in `wgpu`, behind the `backend::LogitsModel` trait), and CPU training:
//! `cpu_ops` (every training op, forward and backward: the oracle for the GPU kernels) and `train` (flat
//! parameters, SFT / policy-gradient / GRPO steps with AdamW).

pub mod backend;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod cpu_ops;
pub mod engine;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod skinny;
pub mod tokenizer;
pub mod train;
pub mod wgpu;
