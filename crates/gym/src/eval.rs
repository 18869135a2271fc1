//! Running agents through episodes and scoring them the paper's way (reference §9): per-gym mean episode
//! score, success rate, mean turns, and the overall score as the mean of the per-gym means weighted by the
//! number of evaluated tasks. With several trials per task, also tau-bench's pass^k: the chance that k
//! independent trials of a task all succeed.

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
    let env = gym.new_env(task_id, config, user.clone())?;
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
            AgentTurn::Cut(text) => {
                conversation.push(Message::new(Role::Assistant, text));
                episode.abort(Termination::Length);
            }
            AgentTurn::Failed(why) => {
                tracing::warn!(gym = %gym.kind(), task = task_id, %why, "agent failed");
                episode.abort(Termination::AgentError);
            }
        }
        if user.abandoned() {
            episode.abort(Termination::Abandoned);
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
    /// pass^1 ..= pass^k, each the mean over the gym's tasks of `pass_hat_k` (empty unless asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_k: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub split: Split,
    pub rows: Vec<GymRow>,
    pub episodes: usize,
    /// Per-gym mean scores weighted by their episode counts.
    pub overall_score: f64,
    pub overall_normalized: f64,
    /// Episodes per task.
    #[serde(default = "one")]
    pub trials: usize,
    /// pass^1 ..= pass^k over all tasks (each task weighs the same; empty unless asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_k: Vec<f64>,
}

fn one() -> usize {
    1
}

/// tau-bench's pass^k of one task: the probability that k i.i.d. trials all succeed, estimated without bias
/// from `n` trials with `c` successes as C(c, k) / C(n, k). `None` when k is 0 or more than n.
pub fn pass_hat_k(n: usize, c: usize, k: usize) -> Option<f64> {
    if k == 0 || k > n || c > n {
        return None;
    }
    // C(c, k) / C(n, k) = Π_{i<k} (c − i) / (n − i), which is 0 once i reaches c.
    Some((0..k).map(|i| c.saturating_sub(i) as f64 / (n - i) as f64).product())
}

/// pass^1 ..= pass^k averaged over tasks, from each task's (trials, successes); empty when some task has fewer
/// than k trials or there is no task.
fn mean_pass_k(tasks: &[(usize, usize)], k: usize) -> Vec<f64> {
    if tasks.is_empty() || tasks.iter().any(|(n, _)| *n < k) {
        return Vec::new();
    }
    (1..=k).map(|j| tasks.iter().filter_map(|&(n, c)| pass_hat_k(n, c, j)).sum::<f64>() / tasks.len() as f64).collect()
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
                    pass_k: Vec::new(),
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
            trials: 1,
            pass_k: Vec::new(),
        }
    }

    /// The report of `trials` episodes per task, with pass^1 ..= pass^k when `k` is given (success is the
    /// episode's `success`). Tasks are told apart by gym and task id.
    pub fn from_trials(split: Split, transcripts: &[Transcript], trials: usize, k: Option<usize>) -> EvalReport {
        let mut report = EvalReport::from_transcripts(split, transcripts);
        report.trials = trials.max(1);
        let Some(k) = k.filter(|k| *k > 0) else { return report };
        let mut tasks: BTreeMap<(GymKind, &str), (usize, usize)> = BTreeMap::new();
        for t in transcripts {
            let e = tasks.entry((t.gym, t.task_id.as_str())).or_default();
            e.0 += 1;
            e.1 += t.success as usize;
        }
        for row in &mut report.rows {
            let of_gym: Vec<(usize, usize)> =
                tasks.iter().filter(|((g, _), _)| *g == row.gym).map(|(_, v)| *v).collect();
            row.pass_k = mean_pass_k(&of_gym, k);
        }
        report.pass_k = mean_pass_k(&tasks.values().copied().collect::<Vec<_>>(), k);
        report
    }

    /// A plain-text table for terminals.
    pub fn table(&self) -> String {
        let pass_header: String = (1..=self.pass_k.len()).map(|j| format!(" {:>7}", format!("pass^{j}"))).collect();
        let pass = |values: &[f64]| -> String { values.iter().map(|v| format!(" {v:>7.3}")).collect() };
        let mut out = format!(
            "{:<10} {:>8} {:>8} {:>10} {:>8} {:>7}{pass_header}\n",
            "gym", "episodes", "score", "normalized", "success", "turns"
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:<10} {:>8} {:>8.3} {:>10.3} {:>8.3} {:>7.2}{}\n",
                r.gym.name(),
                r.episodes,
                r.mean_score,
                r.mean_normalized,
                r.success_rate,
                r.mean_turns,
                pass(&r.pass_k)
            ));
        }
        out.push_str(&format!(
            "{:<10} {:>8} {:>8.3} {:>10.3} {:>8} {:>7}{}\n",
            "overall",
            self.episodes,
            self.overall_score,
            self.overall_normalized,
            "",
            "",
            pass(&self.pass_k)
        ));
        if self.trials > 1 {
            out.push_str(&format!("{} trials per task\n", self.trials));
        }
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
    on_done: impl FnMut(&Transcript),
) -> Result<(EvalReport, Vec<Transcript>), GymError> {
    evaluate_trials(catalog, plan, 1, None, user, on_done).await
}

/// The seed of trial `trial` of a task (trial 0 keeps the one-trial seed).
pub fn trial_seed(episode_seed: u64, trial: usize) -> u64 {
    if trial == 0 { episode_seed } else { mix(episode_seed, trial as u64) }
}

/// Like `evaluate`, with `trials` episodes of every task (each with its own seed, so sampling agents and
/// users vary) and pass^1 ..= pass^k in the report when `k` is given (`trials` is raised to `k` if lower).
pub async fn evaluate_trials(
    catalog: &Catalog,
    plan: &EvalPlan,
    trials: usize,
    k: Option<usize>,
    user: Arc<dyn User>,
    mut on_done: impl FnMut(&Transcript),
) -> Result<(EvalReport, Vec<Transcript>), GymError> {
    let EvalPlan { split, ref agent, ref config, concurrency, limit_per_gym } = *plan;
    let trials = trials.max(k.unwrap_or(1)).max(1);
    let mut jobs = Vec::new();
    for gym in catalog.gyms() {
        let ids = gym.task_ids(Some(split));
        let take = limit_per_gym.unwrap_or(ids.len());
        for (index, id) in ids.into_iter().take(take).enumerate() {
            for trial in 0..trials {
                let seed = trial_seed(episode_seed(config.seed, gym.kind(), index), trial);
                jobs.push((gym.clone(), id.clone(), seed));
            }
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
    Ok((EvalReport::from_trials(split, &transcripts, trials, k), transcripts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode(gym: GymKind, task: &str, success: bool) -> Transcript {
        Transcript {
            gym,
            task_id: task.into(),
            opening: String::new(),
            turns: Vec::new(),
            score: success as u8 as f64,
            normalized: success as u8 as f64,
            success,
            termination: Termination::Terminated,
        }
    }

    #[test]
    fn pass_hat_k_is_c_choose_k_over_n_choose_k() {
        // 2 successes in 4 trials: pass^1 = 2/4, pass^2 = C(2,2)/C(4,2) = 1/6, pass^3 = 0.
        assert_eq!(pass_hat_k(4, 2, 1), Some(0.5));
        assert!((pass_hat_k(4, 2, 2).unwrap() - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(pass_hat_k(4, 2, 3), Some(0.0));
        assert_eq!(pass_hat_k(4, 4, 4), Some(1.0));
        // C(5,3)/C(8,3) = 10/56.
        assert!((pass_hat_k(8, 5, 3).unwrap() - 10.0 / 56.0).abs() < 1e-12);
        assert_eq!(pass_hat_k(3, 1, 4), None);
        assert_eq!(pass_hat_k(3, 1, 0), None);
    }

    /// Worked example: three tasks, four trials each, solved 4, 2 and 0 times.
    /// pass^1 = (1 + 1/2 + 0) / 3 = 0.5; pass^2 = (1 + 1/6 + 0) / 3 = 7/18; pass^3 = (1 + 0 + 0) / 3 = 1/3.
    #[test]
    fn report_averages_pass_k_over_tasks() {
        let mut transcripts = Vec::new();
        for (task, successes) in [("a", 4), ("b", 2), ("c", 0)] {
            for trial in 0..4 {
                transcripts.push(episode(GymKind::Function, task, trial < successes));
            }
        }
        // A second gym with one task solved once in four: it counts as a task in the overall mean.
        for trial in 0..4 {
            transcripts.push(episode(GymKind::Intention, "x", trial == 0));
        }
        let report = EvalReport::from_trials(Split::Test, &transcripts, 4, Some(3));
        let function = report.rows.iter().find(|r| r.gym == GymKind::Function).unwrap();
        let want = [0.5, 7.0 / 18.0, 1.0 / 3.0];
        assert_eq!(function.pass_k.len(), 3);
        for (got, want) in function.pass_k.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert_eq!(function.success_rate, 0.5);
        // Overall: tasks a, b, c, x: pass^1 = (1 + 0.5 + 0 + 0.25) / 4, pass^2 = (1 + 1/6 + 0 + 0) / 4.
        assert!((report.pass_k[0] - 1.75 / 4.0).abs() < 1e-12);
        assert!((report.pass_k[1] - (7.0 / 6.0) / 4.0).abs() < 1e-12);
        assert_eq!(report.trials, 4);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["pass_k"].as_array().unwrap().len(), 3);
        assert!(report.table().contains("pass^3"));
        // Without k, nothing about pass^k is reported.
        let plain = EvalReport::from_trials(Split::Test, &transcripts, 4, None);
        assert!(plain.pass_k.is_empty());
        assert!(serde_json::to_value(&plain).unwrap().get("pass_k").is_none());
    }

    #[tokio::test]
    async fn trials_run_every_task_k_times_with_distinct_seeds() {
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let mut plan = EvalPlan::new(Split::Test, AgentSpec::Random);
        plan.limit_per_gym = Some(2);
        let (report, transcripts) =
            evaluate_trials(&catalog, &plan, 1, Some(3), Arc::new(crate::user::ScriptedUser), |_| {}).await.unwrap();
        assert_eq!(transcripts.len(), 6);
        assert_eq!(report.trials, 3);
        assert_eq!(report.pass_k.len(), 3);
        assert!(report.pass_k.windows(2).all(|w| w[0] >= w[1]), "pass^k never rises with k: {:?}", report.pass_k);
        let seeds: std::collections::BTreeSet<u64> = (0..3).map(|t| trial_seed(7, t)).collect();
        assert_eq!(seeds.len(), 3);
        assert_eq!(trial_seed(7, 0), 7);
    }
}
