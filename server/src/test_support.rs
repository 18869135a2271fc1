//! Helpers shared by the server's unit tests: the small byte-level tokenizer that the tiny test models run on.

use userrl_nn::tokenizer::{Tokenizer, TokenizerData};

/// Three ChatML specials (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>` = ids 0, 1, 2), the 256 byte-level
/// symbols in sorted order, then `extra` as user-defined tokens (each matched whole, before BPE).
pub(crate) fn byte_tokenizer(extra: &[String]) -> Tokenizer {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let mut token_types = vec![1; tokens.len()];
    token_types[..3].fill(3);
    tokens.extend(extra.iter().cloned());
    token_types.resize(tokens.len(), 4);
    Tokenizer::from_data(TokenizerData {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types,
        merges: Vec::new(),
        bos: Some(1),
        eos: 2,
        unknown: Some(0),
        padding: Some(2),
        add_bos_token: Some(false),
        add_space_prefix: Some(false),
        chat_template: None,
    })
    .unwrap()
}
