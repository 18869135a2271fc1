//! Export to GGUF (F32 or F16) with the llama metadata llama.cpp and Ollama read: the hyper-parameters under
//! `llama.*`, the tokenizer under `tokenizer.ggml.*` and the chat template, so a trained agent runs there.
//! GGUF lists dimensions innermost first: a row-major `[out, in]` weight is written with dims `[in, out]`.
//! One-dimensional tensors (the norms) stay F32 in an F16 export, as llama.cpp's own converter does.

use std::path::Path;

use crate::checkpoint::named_tensors;
use crate::gguf::{self, GgufError, TensorType, Value};
use crate::model::Llama;
use crate::tokenizer::TokenizerData;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("GGUF export supports F32 and F16 tensors, not {0:?}")]
    Type(TensorType),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// The GGUF metadata of `model` and `tokenizer`, in the order llama.cpp's converter writes it.
pub fn metadata(model: &Llama, tokenizer: &TokenizerData, name: &str, kind: TensorType) -> Vec<(String, Value)> {
    let c = &model.config;
    let u32v = |v: usize| Value::U32(v as u32);
    let strings = |items: &[String]| Value::Array(items.iter().map(|s| Value::String(s.clone())).collect());
    // llama.cpp's file types: 0 = all F32, 1 = mostly F16.
    let file_type = if kind == TensorType::F16 { 1 } else { 0 };
    let mut meta = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.type", Value::String("model".into())),
        ("general.name", Value::String(name.into())),
        ("general.file_type", Value::U32(file_type)),
        ("general.alignment", Value::U32(32)),
        ("llama.vocab_size", u32v(c.vocab)),
        ("llama.context_length", u32v(c.context)),
        ("llama.embedding_length", u32v(c.hidden)),
        ("llama.block_count", u32v(c.layers)),
        ("llama.feed_forward_length", u32v(c.ffn)),
        ("llama.rope.dimension_count", u32v(c.head_dim())),
        ("llama.attention.head_count", u32v(c.heads)),
        ("llama.attention.head_count_kv", u32v(c.kv_heads)),
        ("llama.rope.freq_base", Value::F32(c.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(c.eps)),
        ("tokenizer.ggml.model", Value::String(tokenizer.model.clone())),
    ];
    if let Some(pre) = &tokenizer.pre {
        meta.push(("tokenizer.ggml.pre", Value::String(pre.clone())));
    }
    meta.push(("tokenizer.ggml.tokens", strings(&tokenizer.tokens)));
    meta.push((
        "tokenizer.ggml.token_type",
        Value::Array(tokenizer.token_types.iter().map(|&t| Value::I32(t)).collect()),
    ));
    meta.push(("tokenizer.ggml.merges", strings(&tokenizer.merges)));
    if let Some(bos) = tokenizer.bos {
        meta.push(("tokenizer.ggml.bos_token_id", Value::U32(bos)));
    }
    meta.push(("tokenizer.ggml.eos_token_id", Value::U32(tokenizer.eos)));
    if let Some(unknown) = tokenizer.unknown {
        meta.push(("tokenizer.ggml.unknown_token_id", Value::U32(unknown)));
    }
    if let Some(padding) = tokenizer.padding {
        meta.push(("tokenizer.ggml.padding_token_id", Value::U32(padding)));
    }
    if let Some(add_bos) = tokenizer.add_bos_token {
        meta.push(("tokenizer.ggml.add_bos_token", Value::Bool(add_bos)));
    }
    if let Some(prefix) = tokenizer.add_space_prefix {
        meta.push(("tokenizer.ggml.add_space_prefix", Value::Bool(prefix)));
    }
    if let Some(template) = &tokenizer.chat_template {
        meta.push(("tokenizer.chat_template", Value::String(template.clone())));
    }
    meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The GGUF file of `model` and `tokenizer` with matrices stored as `kind` (F32 or F16).
pub fn to_gguf(model: &Llama, tokenizer: &TokenizerData, name: &str, kind: TensorType) -> Result<Vec<u8>, ExportError> {
    if !matches!(kind, TensorType::F32 | TensorType::F16) {
        return Err(ExportError::Type(kind));
    }
    let tensors: Vec<(String, Vec<u64>, TensorType, Vec<f32>)> = named_tensors(model)
        .into_iter()
        .map(|(name, shape, values)| {
            let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            let tensor_kind = if shape.len() == 1 { TensorType::F32 } else { kind };
            (name, dims, tensor_kind, values.to_vec())
        })
        .collect();
    Ok(gguf::write(&metadata(model, tokenizer, name, kind), &tensors)?)
}

/// Writes `to_gguf` to `path`.
pub fn export_gguf(
    model: &Llama,
    tokenizer: &TokenizerData,
    name: &str,
    kind: TensorType,
    path: &Path,
) -> Result<(), ExportError> {
    let bytes = to_gguf(model, tokenizer, name, kind)?;
    std::fs::write(path, bytes)
        .map_err(|e| ExportError::Write { path: path.display().to_string(), message: e.to_string() })
}
