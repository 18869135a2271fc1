//! One interface over the inference backends, so decoding (`generate::generate_with`) runs on the CPU [`Llama`] or
//! on [`WgpuLlama`] alike: each supplies a KV cache and the last position's logits.

use crate::model::{KvCache, Llama, LlamaConfig, ModelError};
use crate::wgpu::{WgpuError, WgpuKvCache, WgpuLlama};

/// A causal language model that decodes incrementally from a KV cache.
pub trait LogitsModel {
    type Cache;
    type Error: From<ModelError>;
    fn config(&self) -> &LlamaConfig;
    fn new_cache(&self) -> Self::Cache;
    /// Positions the cache holds.
    fn cache_len(cache: &Self::Cache) -> usize;
    /// Runs `tokens` after what the cache holds; returns the logits of the last position, `[vocab]`.
    fn forward_last(&self, tokens: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>, Self::Error>;
}

impl LogitsModel for Llama {
    type Cache = KvCache;
    type Error = ModelError;
    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }
    fn cache_len(cache: &KvCache) -> usize {
        cache.len
    }
    fn forward_last(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        Llama::forward_last(self, tokens, cache)
    }
}

impl LogitsModel for WgpuLlama {
    type Cache = WgpuKvCache;
    type Error = WgpuError;
    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn new_cache(&self) -> WgpuKvCache {
        WgpuLlama::new_cache(self)
    }
    fn cache_len(cache: &WgpuKvCache) -> usize {
        cache.len
    }
    fn forward_last(&self, tokens: &[u32], cache: &mut WgpuKvCache) -> Result<Vec<f32>, WgpuError> {
        WgpuLlama::forward_last(self, tokens, cache)
    }
}
