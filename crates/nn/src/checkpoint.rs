//! Checkpoints: a `Llama` and its tokenizer saved as a directory of `model.safetensors` (f32 tensors named as in
//! GGUF files, row-major `[out, in]` shapes), `config.json` (the `LlamaConfig` fields) and `tokenizer.json` (our
//! own plain `TokenizerData`, not the HF format), loaded back bit-exact. Also `load_model`, which takes either such
//! a directory or a `.gguf` file, so every command accepts both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::gguf::{Gguf, GgufError};
use crate::model::{Layer, Llama, LlamaConfig, ModelError};
use crate::tokenizer::{Tokenizer, TokenizerData, TokenizerError};

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("{path} is corrupt or truncated: {message}")]
    Corrupt { path: String, message: String },
    #[error("{path} does not match the checkpoint's config: {message}")]
    Mismatch { path: String, message: String },
    // The inner errors are shown in the message rather than chained as `source`, so that anyhow's report
    // does not print them twice.
    #[error("{path}: {error}")]
    Gguf { path: String, error: GgufError },
    #[error("{path}: {error}")]
    Model { path: String, error: ModelError },
    #[error("{path}: {error}")]
    Tokenizer { path: String, error: TokenizerError },
}

/// `config.json`: the `LlamaConfig` fields plus whether the LM head is tied to the embedding.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConfigFile {
    pub architecture: String,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub rope_theta: f32,
    pub eps: f32,
    pub context: usize,
    pub tie_embeddings: bool,
}

impl ConfigFile {
    pub fn new(config: &LlamaConfig, tie_embeddings: bool) -> ConfigFile {
        let c = config.clone();
        ConfigFile {
            architecture: "llama".into(),
            vocab: c.vocab,
            hidden: c.hidden,
            layers: c.layers,
            heads: c.heads,
            kv_heads: c.kv_heads,
            ffn: c.ffn,
            rope_theta: c.rope_theta,
            eps: c.eps,
            context: c.context,
            tie_embeddings,
        }
    }

    pub fn llama_config(&self) -> LlamaConfig {
        LlamaConfig {
            vocab: self.vocab,
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv_heads,
            ffn: self.ffn,
            rope_theta: self.rope_theta,
            eps: self.eps,
            context: self.context,
        }
    }
}

/// A model with its tokenizer, as `load_model` returns it.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
}

/// Every weight of `model` with its GGUF name and row-major shape (`[out, in]` for matrices), in file order.
pub fn named_tensors(model: &Llama) -> Vec<(String, Vec<usize>, &[f32])> {
    let c = &model.config;
    let (h, kv, f, v) = (c.hidden, c.kv_dim(), c.ffn, c.vocab);
    let mut out: Vec<(String, Vec<usize>, &[f32])> = vec![("token_embd.weight".into(), vec![v, h], &model.embed)];
    for (i, l) in model.layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        out.push((n("attn_norm"), vec![h], &l.attn_norm));
        out.push((n("attn_q"), vec![h, h], &l.wq));
        out.push((n("attn_k"), vec![kv, h], &l.wk));
        out.push((n("attn_v"), vec![kv, h], &l.wv));
        out.push((n("attn_output"), vec![h, h], &l.wo));
        out.push((n("ffn_norm"), vec![h], &l.ffn_norm));
        out.push((n("ffn_gate"), vec![f, h], &l.w_gate));
        out.push((n("ffn_up"), vec![f, h], &l.w_up));
        out.push((n("ffn_down"), vec![h, f], &l.w_down));
    }
    out.push(("output_norm.weight".into(), vec![h], &model.norm));
    if let Some(head) = &model.lm_head {
        out.push(("output.weight".into(), vec![v, h], head));
    }
    out
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    // Write beside and rename, so an interrupted save never leaves a half file under the real name.
    let tmp = path.with_extension("part");
    let err = |e: std::io::Error| CheckpointError::Write { path: path.display().to_string(), message: e.to_string() };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn read_file(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::NotFound(path.display().to_string()),
        _ => CheckpointError::Read { path: path.display().to_string(), message: e.to_string() },
    })
}

/// Saves `model` and `tokenizer` into the directory `dir` (created if needed; the three files are replaced).
pub fn save(model: &Llama, tokenizer: &TokenizerData, dir: &Path) -> Result<(), CheckpointError> {
    let path = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::Write { path: path.clone(), message: e.to_string() })?;
    let tensors = named_tensors(model);
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), data) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| CheckpointError::Write { path: path.clone(), message: format!("tensor `{name}`: {e}") })?;
        views.push((name.clone(), view));
    }
    let metadata = [("format".to_string(), "userrl".to_string())].into_iter().collect();
    let st = safetensors::serialize(views, Some(metadata))
        .map_err(|e| CheckpointError::Write { path: path.clone(), message: e.to_string() })?;
    write_file(&dir.join(MODEL_FILE), &st)?;
    let json = |value: serde_json::Result<Vec<u8>>| {
        value.map_err(|e| CheckpointError::Write { path: path.clone(), message: e.to_string() })
    };
    let config = json(serde_json::to_vec_pretty(&ConfigFile::new(&model.config, model.lm_head.is_none())))?;
    write_file(&dir.join(CONFIG_FILE), &config)?;
    write_file(&dir.join(TOKENIZER_FILE), &json(serde_json::to_vec(tokenizer))?)?;
    Ok(())
}

/// Loads a checkpoint directory written by `save`.
pub fn load(dir: &Path) -> Result<LoadedModel, CheckpointError> {
    if !dir.exists() {
        return Err(CheckpointError::NotFound(dir.display().to_string()));
    }
    let config_path = dir.join(CONFIG_FILE);
    let corrupt = |p: &Path, e: &dyn std::fmt::Display| CheckpointError::Corrupt {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let config: ConfigFile =
        serde_json::from_slice(&read_file(&config_path)?).map_err(|e| corrupt(&config_path, &e))?;
    if config.architecture != "llama" {
        let error = ModelError::Unsupported(format!("architecture `{}` (only llama)", config.architecture));
        return Err(CheckpointError::Model { path: config_path.display().to_string(), error });
    }
    let llama_config = config.llama_config();
    llama_config
        .validate()
        .map_err(|error| CheckpointError::Model { path: config_path.display().to_string(), error })?;

    let tok_path = dir.join(TOKENIZER_FILE);
    let data: TokenizerData = serde_json::from_slice(&read_file(&tok_path)?).map_err(|e| corrupt(&tok_path, &e))?;
    if data.tokens.len() > llama_config.vocab {
        return Err(CheckpointError::Mismatch {
            path: tok_path.display().to_string(),
            message: format!("{} tokens but the model's vocabulary is {}", data.tokens.len(), llama_config.vocab),
        });
    }
    let tokenizer = Tokenizer::from_data(data)
        .map_err(|error| CheckpointError::Tokenizer { path: tok_path.display().to_string(), error })?;

    let st_path = dir.join(MODEL_FILE);
    let bytes = read_file(&st_path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&st_path, &e))?;
    let mismatch = |message: String| CheckpointError::Mismatch { path: st_path.display().to_string(), message };
    let mut by_name: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    // The expected names and shapes come from a zero-sized stand-in of the configured model.
    let expected = expected_shapes(&llama_config, config.tie_embeddings);
    for (name, shape) in &expected {
        let view = st.tensor(name).map_err(|_| mismatch(format!("tensor `{name}` is missing")))?;
        if view.dtype() != Dtype::F32 {
            return Err(mismatch(format!("tensor `{name}` is {:?}, expected F32", view.dtype())));
        }
        if view.shape() != shape.as_slice() {
            return Err(mismatch(format!("tensor `{name}` has shape {:?}, expected {shape:?}", view.shape())));
        }
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        by_name.insert(name.clone(), values);
    }
    if let Some(extra) = st.names().into_iter().find(|n| !by_name.contains_key(*n)) {
        return Err(mismatch(format!("unexpected tensor `{extra}` (is tie_embeddings right?)")));
    }
    let mut take = |name: &str| by_name.remove(name).unwrap_or_default();
    let layers = (0..llama_config.layers)
        .map(|i| {
            let mut n = |s: &str| take(&format!("blk.{i}.{s}.weight"));
            Layer {
                attn_norm: n("attn_norm"),
                wq: n("attn_q"),
                wk: n("attn_k"),
                wv: n("attn_v"),
                wo: n("attn_output"),
                ffn_norm: n("ffn_norm"),
                w_gate: n("ffn_gate"),
                w_up: n("ffn_up"),
                w_down: n("ffn_down"),
            }
        })
        .collect();
    let model = Llama {
        embed: take("token_embd.weight"),
        norm: take("output_norm.weight"),
        lm_head: (!config.tie_embeddings).then(|| take("output.weight")),
        layers,
        config: llama_config,
        half: None,
    };
    Ok(LoadedModel { model, tokenizer })
}

fn expected_shapes(c: &LlamaConfig, tied: bool) -> Vec<(String, Vec<usize>)> {
    let shell = Llama {
        config: c.clone(),
        embed: Vec::new(),
        layers: (0..c.layers)
            .map(|_| Layer {
                attn_norm: Vec::new(),
                wq: Vec::new(),
                wk: Vec::new(),
                wv: Vec::new(),
                wo: Vec::new(),
                ffn_norm: Vec::new(),
                w_gate: Vec::new(),
                w_up: Vec::new(),
                w_down: Vec::new(),
            })
            .collect(),
        norm: Vec::new(),
        lm_head: (!tied).then(Vec::new),
        half: None,
    };
    named_tensors(&shell).into_iter().map(|(n, s, _)| (n, s)).collect()
}

/// Loads a model and its tokenizer from a `.gguf` file or a checkpoint directory (a path to the checkpoint's
/// `model.safetensors` also works).
pub fn load_model(path: &Path) -> Result<LoadedModel, CheckpointError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::NotFound(shown.clone()),
        _ => CheckpointError::Read { path: shown.clone(), message: e.to_string() },
    })?;
    if meta.is_dir() {
        return load(path);
    }
    if path.file_name().is_some_and(|n| n == MODEL_FILE) {
        let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
        return load(&dir);
    }
    let gguf = Gguf::open(path).map_err(|error| CheckpointError::Gguf { path: shown.clone(), error })?;
    let model = Llama::from_gguf(&gguf).map_err(|error| CheckpointError::Model { path: shown.clone(), error })?;
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|error| CheckpointError::Tokenizer { path: shown, error })?;
    Ok(LoadedModel { model, tokenizer })
}

/// A model of `config` with random weights (uniform, scaled by 1/sqrt(fan-in); norms near 1), for tests and
/// benchmarks. Deterministic in `seed`.
pub fn random_model(config: LlamaConfig, tie_embeddings: bool, seed: u64) -> Llama {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut matrix = |rows: usize, cols: usize| -> Vec<f32> {
        let scale = 1.0 / (cols as f32).sqrt();
        (0..rows * cols).map(|_| uniform() * scale).collect()
    };
    let (h, kv, f, v) = (config.hidden, config.kv_dim(), config.ffn, config.vocab);
    let layers = (0..config.layers)
        .map(|_| Layer {
            attn_norm: vec![1.0; h],
            wq: matrix(h, h),
            wk: matrix(kv, h),
            wv: matrix(kv, h),
            wo: matrix(h, h),
            ffn_norm: vec![1.0; h],
            w_gate: matrix(f, h),
            w_up: matrix(f, h),
            w_down: matrix(h, f),
        })
        .collect::<Vec<_>>();
    let mut embed = matrix(v, h);
    // Embeddings of unit-ish scale, so the logits are not all near zero.
    embed.iter_mut().for_each(|x| *x *= (h as f32).sqrt());
    let lm_head = (!tie_embeddings).then(|| matrix(v, h));
    let mut norm = matrix(1, h);
    norm.iter_mut().for_each(|x| *x = 1.0 + 0.5 * *x);
    Llama { config, embed, layers, norm, lm_head, half: None }
}
