//! SmolLM2-135M-Instruct end to end on the CPU backend: tokenizer ids, the chat template, and a greedy answer.
//! The model file is fetched by `scripts/setup` into `models/`.

use std::path::PathBuf;

use userrl_nn::generate::{Sampling, generate};
use userrl_nn::gguf::Gguf;
use userrl_nn::model::{Llama, ModelError};
use userrl_nn::tokenizer::{ChatMessage, Tokenizer};

fn model_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
    path
}

#[test]
fn smollm2_answers_the_capital_of_france() {
    let gguf = Gguf::open(&model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(tokenizer.token_id("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.token_id("<|im_end|>"), Some(2));
    assert_eq!(tokenizer.encode("<|im_start|>user\n").unwrap()[0], 1);
    let text = "Hello, world! 12345 naïve café 🙂\n\tcode();";
    assert_eq!(tokenizer.decode(&tokenizer.encode(text).unwrap()).unwrap(), text);
    // Digits are split one by one (SmolLM's pre-tokenizer).
    assert_eq!(tokenizer.encode("2024").unwrap().len(), 4);

    let model = Llama::from_gguf(&gguf).unwrap();
    assert_eq!((model.config.layers, model.config.hidden, model.config.heads, model.config.kv_heads), (30, 576, 9, 3));
    // The named shape that `bench nn --model random:smollm2-135m` builds is the file's.
    assert_eq!(model.config, userrl_nn::model::LlamaConfig::smollm2_135m());
    let prompt = tokenizer.render_chat(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    let ids = tokenizer.encode(&prompt).unwrap();
    let out =
        generate(&model, &ids, &[tokenizer.eos], &Sampling { max_new_tokens: 24, ..Sampling::default() }).unwrap();
    let answer = tokenizer.decode(&out.tokens).unwrap();
    assert!(answer.contains("Paris"), "{answer}");
    assert!(out.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));

    // Incremental decoding equals a full forward: the last logits of prompt+1 token match.
    let mut cache = model.new_cache();
    let full = model.forward(&ids[..8], &mut cache).unwrap();
    let mut cache2 = model.new_cache();
    model.forward(&ids[..7], &mut cache2).unwrap();
    let last = model.forward_last(&ids[7..8], &mut cache2).unwrap();
    let vocab = model.config.vocab;
    let max_diff = full[7 * vocab..].iter().zip(&last).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(max_diff < 1e-3, "{max_diff}");

    assert!(matches!(model.forward(&[], &mut model.new_cache()), Err(ModelError::Empty)));
    assert!(matches!(model.forward(&[60_000], &mut model.new_cache()), Err(ModelError::BadToken { .. })));
}
