//! userrl-nn: the policy engine. Today: reading LLaMA-family weights from GGUF files (v3; F32, F16, Q4_0,
//! Q4_1, Q8_0 dequantised to f32), CPU inference and generation, and CPU training: `cpu_ops` (every training
//! op, forward and backward, the oracle for a wgpu backend) and `train` (flat parameters, SFT / policy-gradient /
//! GRPO steps with AdamW). The wgpu backend follows (issue #3).

pub mod cpu_ops;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod tokenizer;
pub mod train;
