//! Evaluation jobs: a TOML document with an `[evaluate]` table asks the server to score an agent (a gym's
//! expert, the random agent, a GGUF or checkpoint, or an OpenAI-compatible endpoint) over gyms, one split and
//! one kind of user. Each gym's line of the report becomes an eval row; each episode a transcript.
//!
//! ```toml
//! name = "expert-baseline"
//! [evaluate]
//! agent = "expert"            # expert | random | <file.gguf or checkpoint dir> | openai:<base URL>#<model>
//! gyms = ["intention", "turtle"]
//! split = "test"
//! limit_per_gym = 10
//! user = { kind = "scripted" }
//! ```

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use userrl_gym::env::{EnvConfig, Mode, Transcript};
use userrl_gym::eval::{AgentSpec, EvalPlan, EvalReport, evaluate};
use userrl_gym::llm::{LlmClient, LlmConfig, LlmUser};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{Catalog, GymKind, Split, User, UserKind};
use userrl_rl::config::UserConfig;
use userrl_types::{Speaker, TranscriptMessage, TranscriptRecord};

/// A whole eval job document.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalJobConfig {
    #[serde(default = "default_name")]
    pub name: String,
    pub evaluate: EvalSpec,
}

fn default_name() -> String {
    "eval".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    pub agent: String,
    pub gyms: Vec<GymKind>,
    #[serde(default = "default_split")]
    pub split: Split,
    #[serde(default)]
    pub limit_per_gym: Option<usize>,
    #[serde(default)]
    pub user: UserConfig,
    #[serde(default)]
    pub seed: u64,
    /// Tokens per agent reply for model agents.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Episodes at once (worth raising for LLM users and endpoint agents).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
    /// Sampling temperature of model agents (0: greedy, the paper's protocol).
    #[serde(default)]
    pub temperature: f32,
}

fn default_split() -> Split {
    Split::Test
}
fn default_max_new_tokens() -> usize {
    512
}
fn default_concurrency() -> usize {
    4
}
fn default_max_steps() -> usize {
    16
}

/// A bad eval document: the key at fault (when known) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("`{f}` ")).unwrap_or_default())]
pub struct SpecError {
    pub field: Option<String>,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError { field: Some(field.into()), message: message.into() }
}

/// Whether a TOML document asks for an evaluation (it has a top-level `evaluate` table).
pub fn is_eval_document(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("evaluate"))
}

impl EvalJobConfig {
    pub fn from_toml(text: &str) -> Result<EvalJobConfig, SpecError> {
        let config: EvalJobConfig = toml::from_str(text).map_err(|e| SpecError {
            field: super::toml_error_key(text, &e),
            message: e.message().trim().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let spec = &self.evaluate;
        if spec.gyms.is_empty() {
            return Err(invalid("evaluate.gyms", "must list at least one gym"));
        }
        if spec.agent.trim().is_empty() {
            return Err(invalid("evaluate.agent", "must be expert, random, a model path or openai:<url>#<model>"));
        }
        if spec.max_new_tokens == 0 || spec.concurrency == 0 || spec.max_steps == 0 {
            return Err(invalid("evaluate", "max_new_tokens, concurrency and max_steps must be positive"));
        }
        if !(spec.temperature >= 0.0 && spec.temperature.is_finite()) {
            return Err(invalid("evaluate.temperature", "must be >= 0"));
        }
        if spec.limit_per_gym == Some(0) {
            return Err(invalid("evaluate.limit_per_gym", "must be positive"));
        }
        match spec.user.kind {
            UserKind::Human => return Err(invalid("evaluate.user.kind", "eval jobs use `scripted` or `llm` users")),
            UserKind::Llm if spec.user.llm_urls.is_empty() && std::env::var("USERRL_LLM_URL").is_err() => {
                return Err(invalid("evaluate.user.llm_urls", "is empty and USERRL_LLM_URL is not set"));
            }
            _ => {}
        }
        let agent = spec.agent.as_str();
        let known = matches!(agent, "expert" | "random") || agent.starts_with("openai:");
        if !known && !Path::new(agent).exists() {
            return Err(invalid("evaluate.agent", format!("`{agent}` is not expert, random, openai:… or a file")));
        }
        Ok(())
    }

    /// The number of episodes it will play (the run's planned total).
    pub fn episodes(&self) -> Result<usize, SpecError> {
        let catalog = self.catalog()?;
        Ok(catalog
            .gyms()
            .iter()
            .map(|g| {
                let n = g.task_ids(Some(self.evaluate.split)).len();
                self.evaluate.limit_per_gym.map_or(n, |l| l.min(n))
            })
            .sum())
    }

    fn catalog(&self) -> Result<Catalog, SpecError> {
        Catalog::builtin(&self.evaluate.gyms).map_err(|e| invalid("evaluate.gyms", e.to_string()))
    }
}

/// What an eval job produced.
pub struct EvalOutcome {
    pub report: EvalReport,
    /// False when it stopped because it was cancelled (the report then covers the episodes played).
    pub completed: bool,
}

/// Plays the evaluation on the current runtime. `on_episode` sees each finished episode; `cancelled` is polled
/// so that a cancel stops the job between episodes (episodes in flight are dropped).
pub async fn run(
    config: &EvalJobConfig,
    mut on_episode: impl FnMut(usize, &Transcript),
    cancelled: impl Fn() -> bool,
) -> anyhow::Result<EvalOutcome> {
    let spec = &config.evaluate;
    let catalog = config.catalog()?;
    let user = build_user(&spec.user)?;
    let agent = match spec.agent.as_str() {
        "expert" => AgentSpec::Expert,
        "random" => AgentSpec::Random,
        s if s.starts_with("openai:") => crate::commands::eval::endpoint_agent(s, spec.temperature)?,
        path => crate::commands::eval::local_agent(path, spec.max_new_tokens, spec.temperature)?,
    };
    let plan = EvalPlan {
        split: spec.split,
        agent,
        config: EnvConfig { mode: Mode::Eval, seed: spec.seed, max_steps: spec.max_steps, ..EnvConfig::default() },
        concurrency: spec.concurrency,
        limit_per_gym: spec.limit_per_gym,
    };
    let mut played = Vec::new();
    let mut index = 0;
    let result = {
        let job = evaluate(&catalog, &plan, user, |t| {
            on_episode(index, t);
            index += 1;
            played.push(t.clone());
        });
        tokio::pin!(job);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            // Checked before each poll, so a job cancelled while queued plays no episode at all.
            if cancelled() {
                break None;
            }
            tokio::select! {
                done = &mut job => break Some(done),
                _ = tick.tick() => {}
            }
        }
    };
    match result {
        Some(done) => Ok(EvalOutcome { report: done?.0, completed: true }),
        None => Ok(EvalOutcome { report: EvalReport::from_transcripts(spec.split, &played), completed: false }),
    }
}

fn build_user(config: &UserConfig) -> anyhow::Result<Arc<dyn User>> {
    match config.kind {
        UserKind::Scripted => Ok(Arc::new(ScriptedUser)),
        UserKind::Llm => {
            let llm = LlmConfig {
                base_urls: config.llm_urls.clone(),
                model: config.llm_model.clone(),
                timeout_ms: config.timeout_ms,
                ..LlmConfig::default()
            }
            .with_env();
            Ok(Arc::new(LlmUser::new(Arc::new(LlmClient::new(llm)?))))
        }
        UserKind::Human => anyhow::bail!("eval jobs use scripted or llm users"),
    }
}

/// An evaluation episode as the transcript viewer shows it: the user's opening, then per turn the agent's
/// tool call and the gym's feedback, with the turn's reward on the agent's message.
pub fn record(t: &Transcript) -> TranscriptRecord {
    let mut messages =
        vec![TranscriptMessage { speaker: Speaker::User, text: t.opening.clone(), tokens: vec![], reward: None }];
    for turn in &t.turns {
        let call = if turn.content.is_empty() {
            format!("[{}]", turn.choice)
        } else {
            format!("[{}] {}", turn.choice, turn.content)
        };
        messages.push(TranscriptMessage {
            speaker: Speaker::Assistant,
            text: call,
            tokens: vec![],
            reward: Some(turn.reward),
        });
        messages.push(TranscriptMessage {
            speaker: Speaker::Tool,
            text: turn.feedback.clone(),
            tokens: vec![],
            reward: None,
        });
    }
    TranscriptRecord {
        gym: t.gym.name().to_string(),
        task_id: t.task_id.clone(),
        reward: t.score,
        score: t.score,
        normalized: t.normalized,
        success: t.success,
        termination: t.termination.name().to_string(),
        advantage: 0.0,
        turn_rewards: t.turns.iter().map(|turn| turn.reward).collect(),
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
        name = "baseline"
        [evaluate]
        agent = "expert"
        gyms = ["intention", "turtle"]
        limit_per_gym = 2
    "#;

    #[test]
    fn eval_documents_parse_with_defaults_and_name_bad_keys() {
        assert!(is_eval_document(DOC));
        assert!(!is_eval_document("name = \"x\"\n[model]\npath = \"m\""));
        assert!(!is_eval_document("not toml = = ="));
        let c = EvalJobConfig::from_toml(DOC).unwrap();
        assert_eq!(
            (c.evaluate.split, c.evaluate.concurrency, c.evaluate.user.kind),
            (Split::Test, 4, UserKind::Scripted)
        );
        assert_eq!(c.episodes().unwrap(), 4);
        let err = EvalJobConfig::from_toml(&DOC.replace("limit_per_gym", "limit_per_gymm")).unwrap_err();
        assert!(err.message.contains("limit_per_gymm"), "{err}");
        let err = EvalJobConfig::from_toml(&DOC.replace("\"expert\"", "\"/no/such/model.gguf\"")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("evaluate.agent"));
        let err = EvalJobConfig::from_toml(&DOC.replace("[\"intention\", \"turtle\"]", "[]")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("evaluate.gyms"));
    }

    #[tokio::test]
    async fn the_expert_evaluation_scores_every_gym_and_records_its_episodes() {
        let c = EvalJobConfig::from_toml(DOC).unwrap();
        let mut records = Vec::new();
        let outcome = run(&c, |_, t| records.push(record(t)), || false).await.unwrap();
        assert!(outcome.completed);
        assert_eq!(outcome.report.rows.len(), 2);
        assert_eq!(records.len(), 4);
        assert!(outcome.report.rows.iter().all(|r| r.success_rate == 1.0), "{:?}", outcome.report.rows);
        let first = &records[0];
        assert_eq!(first.messages[0].speaker, Speaker::User);
        assert_eq!(first.turn_rewards.len(), first.messages.iter().filter(|m| m.speaker == Speaker::Assistant).count());
    }

    #[tokio::test]
    async fn a_cancelled_evaluation_stops_and_reports_what_it_played() {
        let c = EvalJobConfig::from_toml(&DOC.replace("limit_per_gym = 2", "")).unwrap();
        let outcome = run(&c, |_, _| {}, || true).await.unwrap();
        assert!(!outcome.completed);
    }
}
