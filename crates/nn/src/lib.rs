//! userrl-nn: the policy engine. Today: reading LLaMA-family weights from GGUF files (v3; F32, F16, Q4_0,
//! Q4_1, Q8_0 dequantised to f32). The model, the two backends (wgpu WGSL and native CPU), the tokenizer and
//! generation follow (issue #3).

pub mod cpu_ops;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod tokenizer;
pub mod train;
