//! Checkpoints and GGUF export on a tiny random model with a tiny byte-level tokenizer: save -> load gives
//! identical logits (exact), GGUF F32 export -> our loader is exact, F16 export equals the model with its
//! matrices rounded through f16; bad paths and files are clear errors.

use std::path::PathBuf;

use userrl_nn::checkpoint::{self, CheckpointError, load_model, random_model};
use userrl_nn::export::to_gguf;
use userrl_nn::gguf::{Gguf, GgufError, TensorType};
use userrl_nn::model::{Llama, LlamaConfig};
use userrl_nn::quant::{f16_to_f32, f32_to_f16};
use userrl_nn::tokenizer::{ChatMessage, Tokenizer, TokenizerData};

fn config() -> LlamaConfig {
    LlamaConfig {
        vocab: 0,
        hidden: 16,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        ffn: 24,
        rope_theta: 10_000.0,
        eps: 1e-5,
        context: 64,
    }
}

/// Three ChatML specials, the 256 byte-level symbols, and two merges (`h e`, `l l`).
fn tiny_tokenizer() -> TokenizerData {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    tokens.extend(["he", "ll"].map(String::from));
    let mut token_types = vec![1; tokens.len()];
    token_types[..3].fill(3);
    TokenizerData {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types,
        merges: vec!["h e".into(), "l l".into()],
        bos: Some(1),
        eos: 2,
        unknown: Some(0),
        padding: Some(2),
        add_bos_token: Some(false),
        add_space_prefix: Some(false),
        chat_template: Some(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
        ),
    }
}

fn tiny_model(tied: bool, seed: u64) -> (Llama, TokenizerData) {
    let tok = tiny_tokenizer();
    let config = LlamaConfig { vocab: tok.tokens.len(), ..config() };
    (random_model(config, tied, seed), tok)
}

fn logits(model: &Llama) -> Vec<f32> {
    let tokens = [1u32, 40, 77, 200, 5, 259, 260, 2];
    let mut cache = model.new_cache();
    let mut out = model.forward(&tokens[..5], &mut cache).unwrap();
    out.extend(model.forward(&tokens[5..], &mut cache).unwrap());
    out
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("userrl-nn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn checkpoint_round_trip_is_bit_exact() {
    for tied in [true, false] {
        let (model, tok) = tiny_model(tied, 7);
        let dir = scratch(&format!("ckpt-{tied}"));
        checkpoint::save(&model, &tok, &dir).unwrap();
        let loaded = load_model(&dir).unwrap();
        assert_eq!(loaded.model.config, model.config);
        assert_eq!(loaded.model.lm_head.is_none(), tied);
        let (a, b) = (logits(&model), logits(&loaded.model));
        assert!(a.iter().all(|v| v.is_finite()));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "logits differ (tied {tied})");
        // Through the safetensors file path as well.
        let again = load_model(&dir.join(checkpoint::MODEL_FILE)).unwrap();
        assert_eq!(logits(&again.model), a);

        // The tokenizer comes back whole and behaves the same.
        assert_eq!(loaded.tokenizer.data(), &tok);
        let original = Tokenizer::from_data(tok.clone()).unwrap();
        let text = "<|im_start|>user\nhello, wörld 42 🙂<|im_end|>";
        let ids = original.encode(text).unwrap();
        assert_eq!(ids[0], 1);
        assert!(ids.contains(&259) && ids.contains(&260), "merges applied: {ids:?}");
        assert_eq!(loaded.tokenizer.encode(text).unwrap(), ids);
        assert_eq!(loaded.tokenizer.decode(&ids).unwrap(), text);
        let chat = [ChatMessage::new("system", "be brief"), ChatMessage::new("user", "hi")];
        assert_eq!(loaded.tokenizer.render_chat(&chat, true).unwrap(), original.render_chat(&chat, true).unwrap());
        assert_eq!((loaded.tokenizer.eos, loaded.tokenizer.bos), (2, Some(1)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn gguf_export_f32_is_exact_and_f16_rounds_once() {
    for tied in [true, false] {
        let (model, tok) = tiny_model(tied, 11);
        let want = logits(&model);

        let g = Gguf::parse(to_gguf(&model, &tok, "tiny", TensorType::F32).unwrap()).unwrap();
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.u64("llama.rope.dimension_count").unwrap(), 4);
        assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().dims, vec![24, 16], "GGUF dims are innermost first");
        assert_eq!(g.tensor("blk.1.attn_k.weight").unwrap().dims, vec![16, 8]);
        let back = Llama::from_gguf(&g).unwrap();
        assert_eq!(back.config, model.config);
        assert_eq!(back.lm_head.is_none(), tied);
        let got = logits(&back);
        assert!(want.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()), "F32 export changed the logits");
        assert_eq!(TokenizerData::from_gguf(&g).unwrap(), tok);
        let tokenizer = Tokenizer::from_gguf(&g).unwrap();
        assert_eq!(
            tokenizer.encode("hello").unwrap(),
            Tokenizer::from_data(tok.clone()).unwrap().encode("hello").unwrap()
        );

        // F16: matrices round once to half precision, norms stay F32; the loader gives exactly that model.
        let g16 = Gguf::parse(to_gguf(&model, &tok, "tiny", TensorType::F16).unwrap()).unwrap();
        assert_eq!(g16.tensor("blk.0.attn_q.weight").unwrap().kind, TensorType::F16);
        assert_eq!(g16.tensor("blk.0.attn_norm.weight").unwrap().kind, TensorType::F32);
        assert_eq!(g16.u64("general.file_type").unwrap(), 1);
        let back16 = Llama::from_gguf(&g16).unwrap();
        let round = |v: &[f32]| v.iter().map(|&x| f16_to_f32(f32_to_f16(x))).collect::<Vec<_>>();
        let mut rounded = random_model(model.config.clone(), tied, 11);
        rounded.embed = round(&rounded.embed);
        rounded.lm_head = rounded.lm_head.as_deref().map(round);
        for l in &mut rounded.layers {
            for w in [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w_gate, &mut l.w_up, &mut l.w_down] {
                *w = round(w);
            }
        }
        let got16 = logits(&back16);
        assert_eq!(got16, logits(&rounded));
        // And half precision moved the logits only a little.
        let max = want.iter().zip(&got16).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let scale = want.iter().map(|a| a.abs()).fold(0.0f32, f32::max);
        assert!(max > 0.0 && max < 1e-2 * scale.max(1.0), "F16 drift {max} on logits up to {scale}");
    }
}

#[test]
fn exports_refuse_quantised_types() {
    let (model, tok) = tiny_model(true, 3);
    assert!(to_gguf(&model, &tok, "tiny", TensorType::Q4_1).is_err());
}

#[test]
fn bad_paths_and_files_are_clear_errors() {
    let missing = std::env::temp_dir().join("userrl-nn-definitely-missing.gguf");
    let err = load_model(&missing).err().unwrap();
    assert!(matches!(err, CheckpointError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("userrl-nn-definitely-missing.gguf"), "{err}");

    // A truncated GGUF names the problem.
    let (model, tok) = tiny_model(false, 5);
    let dir = scratch("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = to_gguf(&model, &tok, "tiny", TensorType::F32).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_model(&cut).err().unwrap();
    assert!(matches!(err, CheckpointError::Gguf { error: GgufError::Truncated(_), .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    std::fs::write(&cut, b"not a model at all").unwrap();
    assert!(matches!(load_model(&cut), Err(CheckpointError::Gguf { error: GgufError::BadMagic(_), .. })));

    // A checkpoint with a truncated safetensors file, a missing file, or a config that does not fit.
    let ckpt = dir.join("ckpt");
    checkpoint::save(&model, &tok, &ckpt).unwrap();
    let st = ckpt.join(checkpoint::MODEL_FILE);
    let full = std::fs::read(&st).unwrap();
    std::fs::write(&st, &full[..full.len() / 2]).unwrap();
    let err = load_model(&ckpt).err().unwrap();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    std::fs::write(&st, &full).unwrap();

    let config_path = ckpt.join(checkpoint::CONFIG_FILE);
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config.replace("\"ffn\": 24", "\"ffn\": 32")).unwrap();
    let err = load_model(&ckpt).err().unwrap();
    assert!(matches!(err, CheckpointError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("blk.0.ffn_gate.weight") && err.to_string().contains("[32, 16]"), "{err}");
    std::fs::write(&config_path, config.replace("\"tie_embeddings\": false", "\"tie_embeddings\": true")).unwrap();
    assert!(load_model(&ckpt).err().unwrap().to_string().contains("output.weight"));
    std::fs::write(&config_path, config.replace("\"heads\": 4", "\"heads\": 3")).unwrap();
    assert!(matches!(load_model(&ckpt), Err(CheckpointError::Model { .. })));
    std::fs::write(&config_path, "{\"vocab\": ").unwrap();
    assert!(matches!(load_model(&ckpt), Err(CheckpointError::Corrupt { .. })));
    std::fs::write(&config_path, &config).unwrap();
    assert!(load_model(&ckpt).is_ok());

    std::fs::remove_file(ckpt.join(checkpoint::TOKENIZER_FILE)).unwrap();
    let err = load_model(&ckpt).err().unwrap();
    assert!(matches!(err, CheckpointError::NotFound(ref p) if p.ends_with("tokenizer.json")), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
