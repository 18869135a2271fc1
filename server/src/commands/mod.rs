//! One module per subcommand, plus the options they share (which tasks, which user).

pub mod bench;
pub mod data;
pub mod eval;
pub mod generate;
pub mod gyms;
pub mod play;
pub mod serve;
pub mod sft_data;
pub mod train;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use userrl_gym::env::Compat;
use userrl_gym::llm::{LlmClient, LlmConfig, LlmUser};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{Catalog, GymKind, User, UserKind};

/// Where the tasks come from.
#[derive(clap::Args, Clone, Debug)]
pub struct TaskArgs {
    /// A directory of `<gym>.jsonl` task files (as `userrl data import` writes); default: the embedded sets.
    #[arg(long)]
    pub tasks: Option<PathBuf>,
}

impl TaskArgs {
    pub fn catalog(&self, kinds: &[GymKind]) -> Result<Catalog> {
        match &self.tasks {
            Some(dir) => {
                let catalog =
                    Catalog::from_dir(dir, kinds).with_context(|| format!("loading tasks from {}", dir.display()))?;
                anyhow::ensure!(!catalog.gyms().is_empty(), "no task file for the requested gyms in {}", dir.display());
                Ok(catalog)
            }
            None => Ok(Catalog::builtin(kinds)?),
        }
    }
}

/// Who plays the user.
#[derive(clap::Args, Clone, Debug)]
pub struct UserArgs {
    /// scripted (embedded, no LLM) or llm (an OpenAI-compatible endpoint).
    #[arg(long, default_value = "scripted")]
    pub user: UserKind,
    /// Base URL(s) of the endpoint, comma-separated to balance several servers (e.g. http://localhost:8000/v1).
    /// The key comes from USERRL_LLM_API_KEY or OPENAI_API_KEY.
    #[arg(long, env = "USERRL_LLM_URL")]
    pub llm_url: Option<String>,
    /// The user/judge model name.
    #[arg(long, env = "USERRL_LLM_MODEL", default_value = "gpt-4o")]
    pub llm_model: String,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub llm_timeout_ms: u64,
    /// Tries per request (the first included), with exponential backoff between them.
    #[arg(long, default_value_t = 3)]
    pub llm_tries: u32,
    /// Requests in flight at once across all endpoints.
    #[arg(long, default_value_t = 64)]
    pub llm_concurrency: usize,
    /// Keep `<think>` blocks in the user's replies (they are stripped by default).
    #[arg(long)]
    pub llm_keep_think: bool,
    /// Ask the endpoint for JSON-constrained replies (`response_format` json_object); small models need it.
    #[arg(long)]
    pub llm_json: bool,
}

impl UserArgs {
    pub fn build(&self) -> Result<Arc<dyn User>> {
        match self.user {
            UserKind::Scripted => Ok(Arc::new(ScriptedUser)),
            UserKind::Llm => {
                let config = LlmConfig {
                    base_urls: self
                        .llm_url
                        .as_deref()
                        .unwrap_or_default()
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(String::from)
                        .collect(),
                    model: self.llm_model.clone(),
                    timeout_ms: self.llm_timeout_ms,
                    max_tries: self.llm_tries,
                    concurrency: self.llm_concurrency,
                    strip_think: !self.llm_keep_think,
                    json_mode: self.llm_json,
                    ..LlmConfig::default()
                }
                .with_env();
                Ok(Arc::new(LlmUser::new(Arc::new(LlmClient::new(config)?))))
            }
            UserKind::Human => anyhow::bail!("the human user plays in the web app's study portal, not in the terminal"),
        }
    }
}

/// Turns `--compat persuade.repay_levels,travel.uncapped_answer_reward` into switches; unknown names are errors
/// that list the known ones.
pub fn parse_compat(list: &[String]) -> Result<Compat> {
    let mut value = serde_json::to_value(Compat::default())?;
    let known = || {
        let mut names = Vec::new();
        if let Some(gyms) = serde_json::to_value(Compat::default()).ok().and_then(|v| v.as_object().cloned()) {
            for (gym, switches) in gyms {
                for name in switches.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                    names.push(format!("{gym}.{name}"));
                }
            }
        }
        names.join(", ")
    };
    for name in list.iter().flat_map(|l| l.split(',')).map(str::trim).filter(|n| !n.is_empty()) {
        let slot = name
            .split_once('.')
            .and_then(|(gym, switch)| value.get_mut(gym)?.get_mut(switch))
            .filter(|v| v.is_boolean());
        let Some(slot) = slot else {
            anyhow::bail!("unknown compatibility switch `{name}` (known: {})", known());
        };
        *slot = serde_json::Value::Bool(true);
    }
    Ok(serde_json::from_value(value)?)
}

pub fn parse_gyms(list: &str) -> Result<Vec<GymKind>> {
    GymKind::parse_list(list).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_switches_parse_by_name() {
        let c = parse_compat(&["persuade.repay_levels,travel.uncapped_answer_reward".into()]).unwrap();
        assert!(c.persuade.repay_levels && c.travel.uncapped_answer_reward && !c.intention.leak_details_to_simulator);
        let err = parse_compat(&["persuade.nope".into()]).unwrap_err().to_string();
        assert!(err.contains("intention.leak_details_to_simulator"), "{err}");
        assert!(parse_compat(&[]).is_ok());
    }
}
