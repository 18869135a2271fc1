//! Run configuration (TOML): the model, the gyms and their sampling weights, the user, SFT and GRPO settings,
//! evaluation and checkpoints. Unknown keys and out-of-range values fail before any work starts, with the key
//! named (`grpo.clip must be in (0, 1)`); every field has the paper's default where the paper has one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use userrl_gym::{GymKind, Split, UserKind};

use crate::shaping::{TrajectoryScore, TurnCredit};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// A name for the run (the dashboard shows it).
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub user: UserConfig,
    #[serde(default)]
    pub sft: Option<SftConfig>,
    #[serde(default)]
    pub grpo: Option<GrpoConfig>,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

fn default_name() -> String {
    "run".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU through wgpu when there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Wgpu,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A GGUF file or a checkpoint directory; absent when `tiny` is given.
    #[serde(default)]
    pub path: Option<String>,
    /// A small random model (for tests and ablations) instead of a file.
    #[serde(default)]
    pub tiny: Option<TinyModel>,
    #[serde(default)]
    pub device: DeviceChoice,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyModel {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    /// The tokenizer (and vocabulary) comes from this GGUF file.
    pub tokenizer: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub gyms: Vec<GymKind>,
    /// Sampling weight per gym (default 1 each).
    #[serde(default)]
    pub weights: BTreeMap<GymKind, f64>,
    #[serde(default = "default_train_split")]
    pub split: Split,
    /// A directory of `<gym>.jsonl` task files; default: the embedded sets.
    #[serde(default)]
    pub tasks: Option<String>,
}

fn default_train_split() -> Split {
    Split::Train
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    pub kind: UserKind,
    /// Base URLs (several are balanced); the key comes from the environment only.
    pub llm_urls: Vec<String>,
    pub llm_model: String,
    pub timeout_ms: u64,
}

impl Default for UserConfig {
    fn default() -> Self {
        UserConfig { kind: UserKind::Scripted, llm_urls: Vec::new(), llm_model: "gpt-4o".into(), timeout_ms: 10_000 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// JSONL chat records (`userrl sft-data`); generated from the experts when absent.
    pub data: Option<String>,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub max_seq_len: usize,
    pub warmup_fraction: f64,
    /// Use at most this many records (after shuffling with the run seed).
    pub max_examples: Option<usize>,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            data: None,
            epochs: 3,
            lr: 1e-5,
            batch_size: 8,
            max_seq_len: 2048,
            warmup_fraction: 0.1,
            max_examples: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ZeroVariance {
    /// Keep groups whose rewards are all equal (they give no gradient but count in the batch).
    #[default]
    Keep,
    /// Drop them from the update.
    Drop,
    /// Sample other prompts until the batch is full (bounded tries).
    Resample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    #[default]
    Constant,
    Cosine,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    pub steps: usize,
    pub prompts_per_step: usize,
    pub group_size: usize,
    pub max_turns: usize,
    pub max_new_tokens: usize,
    pub max_total_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub mini_batches: usize,
    pub clip: f64,
    pub dual_clip: f64,
    pub grad_clip: f64,
    pub kl_coef: f64,
    pub entropy_coef: f64,
    pub gamma: f64,
    pub turn_credit: TurnCredit,
    pub trajectory_score: TrajectoryScore,
    pub zero_variance: ZeroVariance,
    /// Seconds one gym step (the user's reply) may take during rollouts; past it the episode ends as
    /// `agent_error`.
    pub step_timeout_s: f64,
}

impl Default for GrpoConfig {
    /// The paper's settings (reference §7.5), except the batch, which is the caller's to size.
    fn default() -> Self {
        GrpoConfig {
            steps: 270,
            prompts_per_step: 128,
            group_size: 8,
            max_turns: 16,
            max_new_tokens: 1024,
            max_total_tokens: 9344,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            lr: 1e-6,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            weight_decay: 0.01,
            mini_batches: 8,
            clip: 0.2,
            dual_clip: 3.0,
            grad_clip: 1.0,
            kl_coef: 0.0,
            entropy_coef: 0.0,
            gamma: 0.8,
            turn_credit: TurnCredit::Equalized,
            trajectory_score: TrajectoryScore::Sum,
            zero_variance: ZeroVariance::Keep,
            step_timeout_s: 120.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many GRPO steps (0: only at the end).
    pub every: usize,
    pub split: Split,
    /// Gyms to evaluate (default: the training gyms).
    pub gyms: Option<Vec<GymKind>>,
    pub limit_per_gym: Option<usize>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { every: 5, split: Split::Test, gyms: None, limit_per_gym: None }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// A resumable checkpoint every this many GRPO steps (and at the end of SFT); 0: only the final model.
    pub every: usize,
    /// A resumable checkpoint every this many SFT steps (0: only at the end of SFT). Optimizer state is
    /// three times the model, so SFT steps, which are short, are not checkpointed one by one by default.
    pub sft_every: usize,
    pub dir: String,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { every: 1, sft_every: 0, dir: "runs".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Parse(String),
    #[error("`{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

impl RunConfig {
    pub fn from_toml(text: &str) -> Result<RunConfig, ConfigError> {
        let config: RunConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<RunConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Io { path: path.display().to_string(), message: e.to_string() })?;
        RunConfig::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.model.path, &self.model.tiny) {
            (None, None) => return Err(invalid("model", "needs `path` (GGUF or checkpoint) or `tiny`")),
            (Some(_), Some(_)) => return Err(invalid("model", "takes `path` or `tiny`, not both")),
            _ => {}
        }
        if let Some(t) = &self.model.tiny {
            if t.layers == 0 || t.hidden == 0 || t.ffn == 0 {
                return Err(invalid("model.tiny", "layers, hidden and ffn must be positive"));
            }
            if t.heads == 0
                || t.kv_heads == 0
                || !t.hidden.is_multiple_of(t.heads)
                || !t.heads.is_multiple_of(t.kv_heads)
            {
                return Err(invalid("model.tiny.heads", "hidden must divide by heads, and heads by kv_heads"));
            }
            if !(t.hidden / t.heads).is_multiple_of(2) {
                return Err(invalid("model.tiny.heads", "the head size (hidden / heads) must be even for RoPE"));
            }
        }
        if self.data.gyms.is_empty() {
            return Err(invalid("data.gyms", "must list at least one gym"));
        }
        for (gym, w) in &self.data.weights {
            if !self.data.gyms.contains(gym) {
                return Err(invalid("data.weights", format!("names `{gym}`, which is not in data.gyms")));
            }
            if !w.is_finite() || *w < 0.0 {
                return Err(invalid("data.weights", format!("weight of `{gym}` must be >= 0")));
            }
        }
        if self.user.kind == UserKind::Human {
            return Err(invalid("user.kind", "training runs use `scripted` or `llm` users"));
        }
        if self.user.kind == UserKind::Llm && self.user.llm_urls.is_empty() && std::env::var("USERRL_LLM_URL").is_err()
        {
            return Err(invalid("user.llm_urls", "is empty and USERRL_LLM_URL is not set"));
        }
        if self.sft.is_none() && self.grpo.is_none() {
            return Err(invalid("sft", "a run needs an [sft] or a [grpo] section (or both)"));
        }
        if let Some(s) = &self.sft {
            if s.epochs == 0 || s.batch_size == 0 || s.max_seq_len < 16 {
                return Err(invalid("sft", "epochs and batch_size must be positive, max_seq_len >= 16"));
            }
            if !(s.lr > 0.0 && s.lr < 1.0) {
                return Err(invalid("sft.lr", "must be in (0, 1)"));
            }
            if !(0.0..1.0).contains(&s.warmup_fraction) {
                return Err(invalid("sft.warmup_fraction", "must be in [0, 1)"));
            }
        }
        if let Some(g) = &self.grpo {
            let positive = [
                ("grpo.steps", g.steps),
                ("grpo.prompts_per_step", g.prompts_per_step),
                ("grpo.group_size", g.group_size),
                ("grpo.max_turns", g.max_turns),
                ("grpo.max_new_tokens", g.max_new_tokens),
                ("grpo.mini_batches", g.mini_batches),
            ];
            for (key, value) in positive {
                if value == 0 {
                    return Err(invalid(key, "must be positive"));
                }
            }
            if g.max_total_tokens <= g.max_new_tokens {
                return Err(invalid("grpo.max_total_tokens", "must exceed max_new_tokens"));
            }
            if !(g.lr > 0.0 && g.lr < 1.0) {
                return Err(invalid("grpo.lr", "must be in (0, 1)"));
            }
            if !(g.clip > 0.0 && g.clip < 1.0) {
                return Err(invalid("grpo.clip", "must be in (0, 1)"));
            }
            if g.dual_clip <= 1.0 {
                return Err(invalid("grpo.dual_clip", "must be > 1"));
            }
            if g.grad_clip <= 0.0 {
                return Err(invalid("grpo.grad_clip", "must be positive"));
            }
            if !(g.step_timeout_s.is_finite() && g.step_timeout_s > 0.0) {
                return Err(invalid("grpo.step_timeout_s", "must be a positive number of seconds"));
            }
            if !(g.gamma > 0.0 && g.gamma <= 1.0) {
                return Err(invalid("grpo.gamma", "must be in (0, 1]"));
            }
            if g.kl_coef < 0.0 || g.entropy_coef < 0.0 || g.weight_decay < 0.0 {
                return Err(invalid("grpo.kl_coef", "kl_coef, entropy_coef and weight_decay must be >= 0"));
            }
            if g.entropy_coef != 0.0 {
                return Err(invalid(
                    "grpo.entropy_coef",
                    "an entropy bonus is not implemented (entropy is logged as a metric); leave it at 0",
                ));
            }
            if g.temperature < 0.0 || !(g.top_p > 0.0 && g.top_p <= 1.0) {
                return Err(invalid("grpo.temperature", "temperature must be >= 0 and top_p in (0, 1]"));
            }
            if g.prompts_per_step * g.group_size % g.mini_batches != 0 {
                return Err(invalid("grpo.mini_batches", "must divide prompts_per_step x group_size"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [model]
        path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
        [data]
        gyms = ["function", "turtle"]
        [grpo]
        steps = 10
        prompts_per_step = 4
        group_size = 4
        mini_batches = 2
        turn_credit = "r2g"
        trajectory_score = "r2g"
    "#;

    #[test]
    fn defaults_are_the_papers() {
        let c = RunConfig::from_toml(MINIMAL).unwrap();
        let g = c.grpo.unwrap();
        assert_eq!((g.clip, g.dual_clip, g.grad_clip, g.gamma, g.kl_coef), (0.2, 3.0, 1.0, 0.8, 0.0));
        assert_eq!((g.turn_credit, g.trajectory_score, g.max_turns), (TurnCredit::R2g, TrajectoryScore::R2g, 16));
        assert_eq!(c.data.split, Split::Train);
        assert_eq!(c.user.kind, UserKind::Scripted);
    }

    /// Every config the repository ships (README, docs/experiments.md) parses and validates.
    #[test]
    fn shipped_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut files = Vec::new();
        for dir in [root.clone(), root.join("experiments")] {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 8, "{files:?}");
        for path in &files {
            if let Err(e) = RunConfig::from_file(path) {
                panic!("{}: {e}", path.display());
            }
        }
        let paper = RunConfig::from_file(&root.join("paper.toml")).unwrap();
        let g = paper.grpo.unwrap();
        assert_eq!((g.steps, g.prompts_per_step, g.group_size, g.mini_batches), (270, 128, 8, 8));
        assert_eq!((g.turn_credit, g.trajectory_score), (TurnCredit::Equalized, TrajectoryScore::Sum));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = RunConfig::from_toml(&MINIMAL.replace("steps = 10", "stepz = 10")).unwrap_err().to_string();
        assert!(err.contains("stepz"), "{err}");
        let err = RunConfig::from_toml(&MINIMAL.replace("group_size = 4", "group_size = 4\nclip = 1.5"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpo.clip"), "{err}");
        let err = RunConfig::from_toml(&MINIMAL.replace("\"turtle\"", "\"turtles\"")).unwrap_err().to_string();
        assert!(err.contains("turtles"), "{err}");
        let err = RunConfig::from_toml(&MINIMAL.replace("turn_credit = \"r2g\"", "turn_credit = \"fancy\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fancy"), "{err}");
        let err =
            RunConfig::from_toml(&MINIMAL.replace("mini_batches = 2", "mini_batches = 3")).unwrap_err().to_string();
        assert!(err.contains("grpo.mini_batches"), "{err}");
        let err = RunConfig::from_toml(&MINIMAL.replace("group_size = 4", "group_size = 4\nentropy_coef = 0.01"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpo.entropy_coef") && err.contains("not implemented"), "{err}");
        let no_model = MINIMAL.replace("path = \"models/SmolLM2-135M-Instruct.Q4_1.gguf\"", "");
        assert!(RunConfig::from_toml(&no_model).unwrap_err().to_string().contains("`model`"));
        assert!(matches!(RunConfig::from_file(Path::new("/nonexistent.toml")), Err(ConfigError::Io { .. })));
    }
}
