//! The tokenizer and chat template of a GGUF model: a byte-level BPE built with the HF `tokenizers` crate from
//! the GGUF's vocabulary and merges (SmolLM's pre-tokenizer: every digit alone, then the GPT-2 byte-level
//! split), special tokens (GGUF token types control / user-defined) matched before BPE, and the chat template
//! rendered with `minijinja`.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::gguf::{Gguf, Value};

/// GGUF token types that are special tokens (matched whole, never split by BPE).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the GGUF has no tokenizer: {0}")]
    Missing(String),
    #[error("tokenizer model `{0}` is not supported (only byte-level BPE, `gpt2`)")]
    Unsupported(String),
    #[error("building the tokenizer failed: {0}")]
    Build(String),
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("the chat template failed: {0}")]
    Template(String),
}

/// A chat message for the template.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

pub struct Tokenizer {
    inner: HfTokenizer,
    template: Option<String>,
    pub bos: Option<u32>,
    pub eos: u32,
    vocab_size: usize,
}

impl Tokenizer {
    pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = gguf.str("tokenizer.ggml.model").map_err(|e| TokenizerError::Missing(e.to_string()))?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(model.into()));
        }
        let tokens = gguf
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| TokenizerError::Missing("tokenizer.ggml.tokens".into()))?;
        let merges = gguf
            .get("tokenizer.ggml.merges")
            .and_then(Value::as_array)
            .ok_or_else(|| TokenizerError::Missing("tokenizer.ggml.merges".into()))?;
        let types: Vec<i64> = gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().map_or(1, |x| x as i64)).collect())
            .unwrap_or_default();
        let mut vocab = Vocab::default();
        let mut specials = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            let text = token.as_str().ok_or_else(|| TokenizerError::Missing(format!("token {id} is not a string")))?;
            vocab.insert(text.to_string(), id as u32);
            if matches!(types.get(id), Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED)) {
                specials.push(AddedToken::from(text.to_string(), true));
            }
        }
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let m = m.as_str().ok_or_else(|| TokenizerError::Missing(format!("merge {i} is not a string")))?;
            let (a, b) =
                m.split_once(' ').ok_or_else(|| TokenizerError::Build(format!("merge {i} `{m}` has no space")))?;
            merge_pairs.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merge_pairs)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let mut inner = HfTokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.add_special_tokens(specials).map_err(|e| TokenizerError::Build(e.to_string()))?;
        let eos = gguf.u64("tokenizer.ggml.eos_token_id").map_err(|e| TokenizerError::Missing(e.to_string()))? as u32;
        let bos = gguf.u64("tokenizer.ggml.bos_token_id").ok().map(|b| b as u32);
        let template = gguf.str("tokenizer.chat_template").ok().map(str::to_string);
        Ok(Tokenizer { inner, template, bos, eos, vocab_size: tokens.len() })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Token ids of `text`; special-token text (`<|im_start|>`) becomes its single id.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Renders the model's chat template. Without a template in the file, ChatML is used.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TokenizerError> {
        let Some(template) = &self.template else {
            let mut out: String =
                messages.iter().map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content)).collect();
            if add_generation_prompt {
                out.push_str("<|im_start|>assistant\n");
            }
            return Ok(out);
        };
        let mut env = minijinja::Environment::new();
        env.add_template("chat", template).map_err(|e| TokenizerError::Template(e.to_string()))?;
        let tmpl = env.get_template("chat").map_err(|e| TokenizerError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! { messages => template_messages(messages), add_generation_prompt => add_generation_prompt })
            .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

fn template_messages(messages: &[ChatMessage]) -> minijinja::Value {
    let items: Vec<minijinja::Value> = messages
        .iter()
        .map(|m| {
            let map: std::collections::BTreeMap<String, minijinja::Value> = [
                ("role".to_string(), minijinja::Value::from(m.role.as_str())),
                ("content".to_string(), minijinja::Value::from(m.content.as_str())),
            ]
            .into_iter()
            .collect();
            minijinja::Value::from(map)
        })
        .collect();
    minijinja::Value::from(items)
}
