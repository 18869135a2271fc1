//! SmolLM2-135M-Instruct on the wgpu backend against the CPU backend: the same next token for a chat prompt, logits
//! within 1e-3 relative, and the same greedy continuation. The model file comes from `scripts/setup`.

use std::path::PathBuf;

use userrl_nn::generate::{Sampling, generate, generate_with};
use userrl_nn::gguf::Gguf;
use userrl_nn::model::Llama;
use userrl_nn::tokenizer::{ChatMessage, Tokenizer};
use userrl_nn::wgpu::{Device, WgpuLlama};

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap()
}

#[test]
fn smollm2_same_next_token_on_wgpu_and_cpu() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
    let device = Device::wgpu().unwrap_or_else(|e| panic!("this test needs a wgpu adapter: {e}"));
    let gguf = Gguf::open(&path).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let cpu = Llama::from_gguf(&gguf).unwrap();
    let gpu = WgpuLlama::new(&device, &cpu).unwrap();
    let prompt = tokenizer.render_chat(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    let ids = tokenizer.encode(&prompt).unwrap();

    let want = cpu.forward_last(&ids, &mut cpu.new_cache()).unwrap();
    let got = gpu.forward_last(&ids, &mut gpu.new_cache()).unwrap();
    assert_eq!(argmax(&got), argmax(&want));
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    assert!(diff / scale <= 1e-3, "max |Δlogit| {diff} against max |logit| {scale}");

    let sampling = Sampling { max_new_tokens: 8, ..Sampling::default() };
    let want = generate(&cpu, &ids, &[tokenizer.eos], &sampling).unwrap();
    let got = generate_with(&gpu, &ids, &[tokenizer.eos], &sampling).unwrap();
    assert_eq!(tokenizer.decode(&got.tokens).unwrap(), tokenizer.decode(&want.tokens).unwrap());
}
