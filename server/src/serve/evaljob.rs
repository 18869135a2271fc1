//! Evaluation jobs: a TOML document with an `[evaluate]` table asks the server to score an agent (a gym's
//! expert, the random agent, a GGUF or checkpoint, or an OpenAI-compatible endpoint) over gyms, one split and
//! one kind of user. Each gym's line of the report becomes an eval row; each episode a transcript, stored
//! under the step of its place in the plan (1, 2, ...). An interrupted job resumes: the episodes (gym, task)
//! already stored are skipped, the others played as a straight run would have played them (same seeds, same
//! steps), and the eval rows cover every stored episode.
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

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;
use userrl_gym::env::{EnvConfig, Mode, Transcript};
use userrl_gym::eval::{AgentSpec, EvalReport, episode_seed, make_agent, run_episode};
use userrl_gym::llm::{LlmClient, LlmConfig, LlmUser};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{Catalog, Gym, GymError, GymKind, Split, User, UserKind};
use userrl_rl::config::UserConfig;
use userrl_types::{Speaker, TranscriptMessage, TranscriptRecord, TranscriptSummary};

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
    /// The report over the episodes played now (a resumed job's earlier episodes are in the store).
    pub report: EvalReport,
    /// False when it stopped because it was cancelled (the report then covers the episodes played).
    pub completed: bool,
    /// Episodes of the plan skipped because they were already stored.
    pub skipped: usize,
}

/// The plan's episodes in order: gym, task id and seed (the seeds `userrl_gym::eval::evaluate` gives them).
fn plan(catalog: &Catalog, spec: &EvalSpec) -> Vec<(Arc<dyn Gym>, String, u64)> {
    let mut out = Vec::new();
    for gym in catalog.gyms() {
        let ids = gym.task_ids(Some(spec.split));
        let take = spec.limit_per_gym.unwrap_or(ids.len());
        for (index, id) in ids.into_iter().take(take).enumerate() {
            out.push((gym.clone(), id, episode_seed(spec.seed, gym.kind(), index)));
        }
    }
    out
}

/// Plays the evaluation on the current runtime, skipping the episodes in `done` ((gym name, task id) pairs
/// already stored). `on_episode` sees each finished episode with its place in the plan (0-based);
/// `cancelled` is polled so that a cancel stops the job between episodes (episodes in flight are dropped).
pub async fn run(
    config: &EvalJobConfig,
    done: &HashSet<(String, String)>,
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
    let env = EnvConfig { mode: Mode::Eval, seed: spec.seed, max_steps: spec.max_steps, ..EnvConfig::default() };
    let mut skipped = 0;
    let mut todo = Vec::new();
    for (index, (gym, id, seed)) in plan(&catalog, spec).into_iter().enumerate() {
        if done.contains(&(gym.kind().name().to_string(), id.clone())) {
            skipped += 1;
        } else {
            todo.push((index, gym, id, seed));
        }
    }
    let (agent, user, env) = (&agent, &user, &env);
    let mut episodes = futures::stream::iter(todo.into_iter().map(|(index, gym, id, seed)| async move {
        let mut agent = make_agent(agent, gym.as_ref(), &id, seed)?;
        let config = EnvConfig { seed, ..env.clone() };
        let t = run_episode(gym.as_ref(), &id, agent.as_mut(), user.clone(), &config).await?;
        Ok::<_, GymError>((index, t))
    }))
    .buffered(spec.concurrency.max(1));
    let mut played = Vec::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let completed = loop {
        // Checked before each poll, so a job cancelled while queued plays no episode at all.
        if cancelled() {
            break false;
        }
        tokio::select! {
            next = episodes.next() => match next {
                Some(result) => {
                    let (index, t) = result?;
                    on_episode(index, &t);
                    played.push(t);
                }
                None => break true,
            },
            _ = tick.tick() => {}
        }
    };
    Ok(EvalOutcome { report: EvalReport::from_transcripts(spec.split, &played), completed, skipped })
}

/// One gym's eval row over stored episodes.
#[derive(Clone, Debug, PartialEq)]
pub struct GymScore {
    pub gym: String,
    pub episodes: usize,
    pub mean_score: f64,
    pub mean_normalized: f64,
    pub success_rate: f64,
    pub mean_turns: f64,
}

/// Per-gym means over the job's stored episodes (as `EvalReport` computes them from transcripts; an eval
/// record's reward is the episode's score), by gym name.
pub fn gym_scores(episodes: &[TranscriptSummary]) -> Vec<GymScore> {
    let mut by_gym: BTreeMap<&str, Vec<&TranscriptSummary>> = BTreeMap::new();
    for e in episodes {
        by_gym.entry(e.gym.as_str()).or_default().push(e);
    }
    by_gym
        .into_iter()
        .map(|(gym, es)| {
            let n = es.len() as f64;
            GymScore {
                gym: gym.to_string(),
                episodes: es.len(),
                mean_score: es.iter().map(|e| e.reward).sum::<f64>() / n,
                mean_normalized: es.iter().map(|e| e.normalized).sum::<f64>() / n,
                success_rate: es.iter().filter(|e| e.success).count() as f64 / n,
                mean_turns: es.iter().map(|e| e.turns as f64).sum::<f64>() / n,
            }
        })
        .collect()
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
        let outcome = run(&c, &HashSet::new(), |_, t| records.push(record(t)), || false).await.unwrap();
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
        let outcome = run(&c, &HashSet::new(), |_, _| {}, || true).await.unwrap();
        assert!(!outcome.completed);
    }

    #[tokio::test]
    async fn a_resumed_evaluation_plays_only_the_missing_episodes_as_a_straight_one_would() {
        let c = EvalJobConfig::from_toml(&DOC.replace("\"expert\"", "\"random\"")).unwrap();
        let mut straight = Vec::new();
        run(&c, &HashSet::new(), |i, t| straight.push((i, record(t))), || false).await.unwrap();
        assert_eq!(straight.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2, 3]);
        // The first attempt stored episodes 0 and 2.
        let done: HashSet<(String, String)> =
            [0, 2].iter().map(|&i| (straight[i].1.gym.clone(), straight[i].1.task_id.clone())).collect();
        let mut resumed = Vec::new();
        let outcome = run(&c, &done, |i, t| resumed.push((i, record(t))), || false).await.unwrap();
        assert!(outcome.completed);
        assert_eq!(outcome.skipped, 2);
        // Same places, same seeds: the same episodes as the straight run's (the random agent shows it).
        assert_eq!(resumed, [straight[1].clone(), straight[3].clone()]);
    }

    #[test]
    fn gym_scores_average_every_stored_episode() {
        let episode = |gym: &str, reward: f64, success: bool, turns: i64| TranscriptSummary {
            id: 0,
            run_id: 1,
            step: 1,
            group: 0,
            sample: 0,
            validate: true,
            gym: gym.into(),
            task_id: "t".into(),
            reward,
            normalized: reward / 2.0,
            success,
            termination: "answered".into(),
            turns,
        };
        let scores = gym_scores(&[
            episode("turtle", 1.0, true, 2),
            episode("intention", 0.5, false, 4),
            episode("turtle", 0.0, false, 4),
        ]);
        assert_eq!(
            scores.iter().map(|s| (s.gym.as_str(), s.episodes)).collect::<Vec<_>>(),
            [("intention", 1), ("turtle", 2)]
        );
        assert_eq!(
            (scores[1].mean_score, scores[1].mean_normalized, scores[1].success_rate, scores[1].mean_turns),
            (0.5, 0.25, 0.5, 3.0)
        );
    }
}
