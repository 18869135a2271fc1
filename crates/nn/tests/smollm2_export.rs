//! SmolLM2-135M-Instruct through a checkpoint and through GGUF export: the checkpoint and the F32 export give
//! bit-identical logits, the F16 export still answers "Paris", and the exported metadata is what llama.cpp
//! reads (the source file's tokenizer keys come back unchanged).

use std::path::PathBuf;

use userrl_nn::checkpoint::{self, load_model};
use userrl_nn::export::to_gguf;
use userrl_nn::generate::{Sampling, generate};
use userrl_nn::gguf::{Gguf, TensorType};
use userrl_nn::model::Llama;
use userrl_nn::tokenizer::{ChatMessage, TokenizerData};

fn model_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
    path
}

fn logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    model.forward(ids, &mut model.new_cache()).unwrap()
}

#[test]
fn smollm2_survives_checkpoint_and_gguf_export() {
    let source = Gguf::open(&model_path()).unwrap();
    let original = load_model(&model_path()).unwrap();
    let (model, tokenizer) = (&original.model, &original.tokenizer);
    let prompt = tokenizer.render_chat(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    let ids = tokenizer.encode(&prompt).unwrap();
    let want = logits(model, &ids[..6]);

    let dir = std::env::temp_dir().join(format!("userrl-nn-smollm2-ckpt-{}", std::process::id()));
    checkpoint::save(model, tokenizer.data(), &dir).unwrap();
    let loaded = load_model(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.model.config, model.config);
    assert!(logits(&loaded.model, &ids[..6]) == want, "checkpoint changed the logits");
    assert_eq!(loaded.tokenizer.encode(&prompt).unwrap(), ids);
    drop(loaded);

    let f32_file = Gguf::parse(to_gguf(model, tokenizer.data(), "SmolLM2-135M-Instruct", TensorType::F32).unwrap());
    let f32_file = f32_file.unwrap();
    assert!(logits(&Llama::from_gguf(&f32_file).unwrap(), &ids[..6]) == want, "F32 export changed the logits");
    for key in ["tokenizer.ggml.pre", "tokenizer.chat_template", "llama.rope.freq_base", "llama.context_length"] {
        assert_eq!(f32_file.get(key), source.get(key), "{key}");
    }
    assert_eq!(TokenizerData::from_gguf(&f32_file).unwrap(), *tokenizer.data());
    drop(f32_file);

    let f16_file = Gguf::parse(to_gguf(model, tokenizer.data(), "SmolLM2-135M-Instruct", TensorType::F16).unwrap());
    let f16_model = Llama::from_gguf(&f16_file.unwrap()).unwrap();
    let out =
        generate(&f16_model, &ids, &[tokenizer.eos], &Sampling { max_new_tokens: 16, ..Sampling::default() }).unwrap();
    let answer = tokenizer.decode(&out.tokens).unwrap();
    assert!(answer.contains("Paris"), "{answer}");
}
