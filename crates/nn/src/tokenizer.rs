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
    data: TokenizerData,
}

/// Everything the tokenizer is built from, as the GGUF `tokenizer.*` keys hold it. Serialised as a checkpoint's
/// `tokenizer.json` (our own format, not the HF one) and written back as GGUF metadata on export.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenizerData {
    /// `tokenizer.ggml.model`; only `gpt2` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`, the llama.cpp pre-tokenizer name (`smollm`), kept so exports load in llama.cpp.
    #[serde(default)]
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// GGUF token types (1 normal, 3 control, 4 user-defined, ...), one per token.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: u32,
    #[serde(default)]
    pub unknown: Option<u32>,
    #[serde(default)]
    pub padding: Option<u32>,
    #[serde(default)]
    pub add_bos_token: Option<bool>,
    #[serde(default)]
    pub add_space_prefix: Option<bool>,
    #[serde(default)]
    pub chat_template: Option<String>,
}

impl TokenizerData {
    pub fn from_gguf(gguf: &Gguf) -> Result<TokenizerData, TokenizerError> {
        let model = gguf.str("tokenizer.ggml.model").map_err(|e| TokenizerError::Missing(e.to_string()))?;
        let strings = |key: &str| -> Result<Vec<String>, TokenizerError> {
            let items = gguf.get(key).and_then(Value::as_array).ok_or_else(|| TokenizerError::Missing(key.into()))?;
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| TokenizerError::Missing(format!("{key}[{i}] is not a string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let token_types: Vec<i32> = gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().map_or(1, |x| x as i32)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let id = |key: &str| gguf.u64(key).ok().map(|v| v as u32);
        let flag = |key: &str| match gguf.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        Ok(TokenizerData {
            model: model.to_string(),
            pre: gguf.str("tokenizer.ggml.pre").ok().map(str::to_string),
            tokens,
            token_types,
            merges,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id")
                .ok_or_else(|| TokenizerError::Missing("tokenizer.ggml.eos_token_id".into()))?,
            unknown: id("tokenizer.ggml.unknown_token_id"),
            padding: id("tokenizer.ggml.padding_token_id"),
            add_bos_token: flag("tokenizer.ggml.add_bos_token"),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
            chat_template: gguf.str("tokenizer.chat_template").ok().map(str::to_string),
        })
    }
}

impl Tokenizer {
    pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_data(TokenizerData::from_gguf(gguf)?)
    }

    /// Builds the tokenizer from its plain description (what a checkpoint's `tokenizer.json` holds).
    pub fn from_data(data: TokenizerData) -> Result<Tokenizer, TokenizerError> {
        if data.model != "gpt2" {
            return Err(TokenizerError::Unsupported(data.model.clone()));
        }
        let mut vocab = Vocab::default();
        let mut specials = Vec::new();
        for (id, text) in data.tokens.iter().enumerate() {
            vocab.insert(text.clone(), id as u32);
            if matches!(data.token_types.get(id).map(|&t| t as i64), Some(TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            {
                specials.push(AddedToken::from(text.clone(), true));
            }
        }
        let mut merge_pairs = Vec::with_capacity(data.merges.len());
        for (i, m) in data.merges.iter().enumerate() {
            let (a, b) =
                m.split_once(' ').ok_or_else(|| TokenizerError::Build(format!("merge {i} `{m}` has no space")))?;
            merge_pairs.push((a.to_string(), b.to_string()));
        }
        let vocab_size = data.tokens.len();
        if data.eos as usize >= vocab_size {
            return Err(TokenizerError::Build(format!(
                "eos id {} is outside the vocabulary of {vocab_size}",
                data.eos
            )));
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
        Ok(Tokenizer { inner, template: data.chat_template.clone(), bos: data.bos, eos: data.eos, vocab_size, data })
    }

    /// The plain description this tokenizer was built from (saved with checkpoints and GGUF exports).
    pub fn data(&self) -> &TokenizerData {
        &self.data
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
