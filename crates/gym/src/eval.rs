//! Running agents through episodes and scoring them the paper's way (reference §9): per-gym mean episode
//! score, success rate, mean turns, and the overall score as the mean of the per-gym means weighted by the
//! number of evaluated tasks.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentTurn, Message, RandomAgent, Role};
use crate::env::{EnvConfig, Episode, Termination, Transcript};
use crate::gyms::{Catalog, Gym, GymError, GymKind};
use crate::split::Split;
use crate::text::mix;
use crate::tool;
use crate::user::User;

/// Plays one episode of `task_id` with `agent` against `user`.
pub async fn run_episode(
    gym: &dyn Gym,
    task_id: &str,
    agent: &mut dyn Agent,
    user: Arc<dyn User>,
    config: &EnvConfig,
) -> Result<Transcript, GymError> {
    Ok(play_episode(gym, task_id, agent, user, config).await?.transcript)
}

/// An episode with the conversation exactly as the agent saw it (system prompt, opening, its calls and the
/// tool responses in the config's mode).
#[derive(Clone, Debug)]
pub struct PlayedEpisode {
    pub transcript: Transcript,
    pub conversation: Vec<Message>,
}

/// Like `run_episode`, keeping the conversation (for SFT data and transcripts with the agent's reasoning).
pub async fn play_episode(
    gym: &dyn Gym,
    task_id: &str,
    agent: &mut dyn Agent,
    user: Arc<dyn User>,
    config: &EnvConfig,
) -> Result<PlayedEpisode, GymError> {
    let env = gym.new_env(task_id, config, user)?;
    let mut episode = Episode::new(env, config.clone());
    let mut conversation =
        vec![Message::new(Role::System, gym.system_prompt()), Message::new(Role::User, episode.opening())];
    while !episode.is_done() {
        match agent.act(&conversation).await {
            AgentTurn::Call { thought, arguments } => {
                let action = tool::action_from_arguments(&arguments);
                let call = action.as_ref().ok().and_then(|a| a.choice().map(|c| (c, a.content().to_string())));
                let mut message = Message::new(Role::Assistant, thought);
                message.call = call;
                conversation.push(message);
                let outcome = episode.step(action).await;
                conversation.push(Message::new(Role::Tool, outcome.tool_response));
            }
            AgentTurn::Invalid { thought, error } => {
                conversation.push(Message::new(Role::Assistant, thought));
                let outcome = episode.step(Err(error)).await;
                conversation.push(Message::new(Role::Tool, outcome.tool_response));
            }
            AgentTurn::Text(text) => {
                conversation.push(Message::new(Role::Assistant, text));
                episode.abort(Termination::NoToolCall);
            }
            AgentTurn::Failed(why) => {
                tracing::warn!(gym = %gym.kind(), task = task_id, %why, "agent failed");
                episode.abort(Termination::AgentError);
            }
        }
    }
    Ok(PlayedEpisode { transcript: episode.into_transcript(), conversation })
}

/// Which agent plays.
#[derive(Clone)]
pub enum AgentSpec {
    /// Each gym's scripted expert.
    Expert,
    Random,
    /// Any OpenAI-compatible chat model calling the tool.
    Llm(Arc<crate::llm::LlmClient>),
    /// Agents made by the caller (e.g. a local policy model), with a label for logs.
    Factory(String, AgentFactory),
}

/// Makes one task's agent: `(gym, task id, seed)`.
pub type AgentFactory = Arc<dyn Fn(&dyn Gym, &str, u64) -> Result<Box<dyn Agent>, GymError> + Send + Sync>;

impl std::fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentSpec::Expert => f.write_str("expert"),
            AgentSpec::Random => f.write_str("random"),
            AgentSpec::Llm(client) => write!(f, "llm:{}", client.config().model),
            AgentSpec::Factory(label, _) => f.write_str(label),
        }
    }
}

impl std::str::FromStr for AgentSpec {
    type Err = String;
    /// `expert` or `random`; an endpoint agent is built by the caller (it needs a client).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "expert" => Ok(AgentSpec::Expert),
            "random" => Ok(AgentSpec::Random),
            other => Err(format!("unknown agent `{other}` (expected expert or random)")),
        }
    }
}

/// Makes the agent for one task.
pub fn make_agent(spec: &AgentSpec, gym: &dyn Gym, task_id: &str, seed: u64) -> Result<Box<dyn Agent>, GymError> {
    match spec {
        AgentSpec::Expert => gym.expert(task_id, seed),
        AgentSpec::Random => Ok(Box::new(RandomAgent::new(gym.kind(), seed))),
        AgentSpec::Llm(client) => Ok(Box::new(crate::llm::LlmAgent::new(client.clone()))),
        AgentSpec::Factory(_, make) => make(gym, task_id, seed),
    }
}

/// One gym's line of the results table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GymRow {
    pub gym: GymKind,
    pub episodes: usize,
    /// Mean of the paper's per-episode score (Travel: by aspects; Persuade and Intention may exceed 1).
    pub mean_score: f64,
    /// Mean of the score over the task's best reachable score, in [0, 1].
    pub mean_normalized: f64,
    pub success_rate: f64,
    pub mean_turns: f64,
    pub terminations: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub split: Split,
    pub rows: Vec<GymRow>,
    pub episodes: usize,
    /// Per-gym mean scores weighted by their episode counts.
    pub overall_score: f64,
    pub overall_normalized: f64,
}

impl EvalReport {
    pub fn from_transcripts(split: Split, transcripts: &[Transcript]) -> EvalReport {
        let mut by_gym: BTreeMap<GymKind, Vec<&Transcript>> = BTreeMap::new();
        for t in transcripts {
            by_gym.entry(t.gym).or_default().push(t);
        }
        let rows: Vec<GymRow> = by_gym
            .into_iter()
            .map(|(gym, ts)| {
                let n = ts.len() as f64;
                let mut terminations = BTreeMap::new();
                for t in &ts {
                    *terminations.entry(t.termination.name().to_string()).or_insert(0) += 1;
                }
                GymRow {
                    gym,
                    episodes: ts.len(),
                    mean_score: ts.iter().map(|t| t.score).sum::<f64>() / n,
                    mean_normalized: ts.iter().map(|t| t.normalized).sum::<f64>() / n,
                    success_rate: ts.iter().filter(|t| t.success).count() as f64 / n,
                    mean_turns: ts.iter().map(|t| t.turns.len() as f64).sum::<f64>() / n,
                    terminations,
                }
            })
            .collect();
        let episodes: usize = rows.iter().map(|r| r.episodes).sum();
        let weighted = |f: fn(&GymRow) -> f64| {
            if episodes == 0 {
                0.0
            } else {
                rows.iter().map(|r| f(r) * r.episodes as f64).sum::<f64>() / episodes as f64
            }
        };
        EvalReport {
            split,
            overall_score: weighted(|r| r.mean_score),
            overall_normalized: weighted(|r| r.mean_normalized),
            rows,
            episodes,
        }
    }

    /// A plain-text table for terminals.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<10} {:>8} {:>8} {:>10} {:>8} {:>7}\n",
            "gym", "tasks", "score", "normalized", "success", "turns"
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:<10} {:>8} {:>8.3} {:>10.3} {:>8.3} {:>7.2}\n",
                r.gym.name(),
                r.episodes,
                r.mean_score,
                r.mean_normalized,
                r.success_rate,
                r.mean_turns
            ));
        }
        out.push_str(&format!(
            "{:<10} {:>8} {:>8.3} {:>10.3}\n",
            "overall", self.episodes, self.overall_score, self.overall_normalized
        ));
        out
    }
}

/// The per-episode seed: the run seed mixed with the task's position, so each task sees the same randomness
/// whatever else runs beside it.
pub fn episode_seed(run_seed: u64, gym: GymKind, index: usize) -> u64 {
    mix(mix(run_seed, gym as u64 + 1), index as u64)
}

/// What to evaluate: which tasks, which agent, how many episodes at once.
#[derive(Clone, Debug)]
pub struct EvalPlan {
    pub split: Split,
    pub agent: AgentSpec,
    pub config: EnvConfig,
    /// Episodes run at once (it matters for LLM users and agents; the scripted ones are CPU-bound).
    pub concurrency: usize,
    /// At most this many tasks per gym.
    pub limit_per_gym: Option<usize>,
}

impl EvalPlan {
    /// One episode at a time over every task of `split`, with the default episode config.
    pub fn new(split: Split, agent: AgentSpec) -> EvalPlan {
        EvalPlan { split, agent, config: EnvConfig::default(), concurrency: 1, limit_per_gym: None }
    }
}

/// Evaluates the plan's agent on every task of its split in the catalog's gyms. `on_done` sees each
/// transcript as it finishes.
pub async fn evaluate(
    catalog: &Catalog,
    plan: &EvalPlan,
    user: Arc<dyn User>,
    mut on_done: impl FnMut(&Transcript),
) -> Result<(EvalReport, Vec<Transcript>), GymError> {
    let EvalPlan { split, ref agent, ref config, concurrency, limit_per_gym } = *plan;
    let mut jobs = Vec::new();
    for gym in catalog.gyms() {
        let ids = gym.task_ids(Some(split));
        let take = limit_per_gym.unwrap_or(ids.len());
        for (index, id) in ids.into_iter().take(take).enumerate() {
            jobs.push((gym.clone(), id, episode_seed(config.seed, gym.kind(), index)));
        }
    }
    let mut stream = futures::stream::iter(jobs.into_iter().map(|(gym, id, seed)| {
        let user = user.clone();
        let mut config = config.clone();
        config.seed = seed;
        async move {
            let mut agent = make_agent(agent, gym.as_ref(), &id, seed)?;
            run_episode(gym.as_ref(), &id, agent.as_mut(), user, &config).await
        }
    }))
    .buffered(concurrency.max(1));
    let mut transcripts = Vec::new();
    while let Some(result) = stream.next().await {
        let transcript = result?;
        on_done(&transcript);
        transcripts.push(transcript);
    }
    Ok((EvalReport::from_transcripts(split, &transcripts), transcripts))
}
