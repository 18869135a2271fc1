//! Multi-turn rollouts of a policy model in a gym, token-in / token-out: the trajectory is the exact sequence
//! of token ids the policy saw and sampled, with a response mask (1 only on sampled policy tokens), the
//! sampler's log-probs, the start of every assistant turn, and one reward per turn. Sampled text is decoded
//! only to find the tool call; it is never re-tokenised for training.
//!
//! Episode control follows the reference (§6.1): a turn without a valid tool call ends the episode
//! (`no_tool_call`); a turn that hits the token budget ends it (`length`); each turn with a call steps the
//! gym once with the first valid call (the original ran every call of a turn on one env concurrently and kept
//! the last one's reward; extra calls are counted in `extra_calls` instead).
//!
//! Training rollouts run on the continuous-batching engine ([`rollout_batch`]): every episode of a step is a
//! tokio task with its own engine session, so all live episodes decode in one batched forward while their gym
//! steps (user replies) run concurrently, each under a timeout. Evaluation and tests may still drive one
//! episode at a time through a [`Policy`]. [`rollout_live`] plays one engine episode the same way and reports
//! each sampled token and gym step as it happens (the web app's live episodes with a person as the user).
//!
//! A user that is gone for good (`User::abandoned`: a person who quit or timed out) ends the episode as
//! `abandoned` before the next turn is sampled.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use userrl_gym::agent::{Message, Role};
use userrl_gym::env::{EnvConfig, Episode, Termination, Transcript};
use userrl_gym::tool;
use userrl_gym::{Gym, GymError, GymKind, User};
use userrl_nn::engine::{EngineError, Event, FinishReason, Generator, Request, Session};
use userrl_nn::generate::{Generation, Sampling};
use userrl_nn::model::ModelError;
use userrl_nn::tokenizer::{ChatMessage, Tokenizer, TokenizerError};

/// A model that continues a token sequence.
pub trait Policy: Send {
    /// Samples a continuation of `context` until a stop token or `max_new_tokens`.
    fn continue_tokens(
        &mut self,
        context: &[u32],
        stop: &[u32],
        sampling: &Sampling,
    ) -> Result<Generation, RolloutError>;
}

/// The CPU model as a policy. It keeps the KV cache of the sequence it last continued: when the next context
/// extends that sequence (the next turn of the same episode), only the new tokens are run.
pub struct CpuPolicy {
    model: userrl_nn::model::Llama,
    /// The tokens the cache holds, and the cache.
    session: Option<(Vec<u32>, userrl_nn::model::KvCache)>,
}

impl CpuPolicy {
    pub fn new(model: userrl_nn::model::Llama) -> CpuPolicy {
        CpuPolicy { model, session: None }
    }
}

impl Policy for CpuPolicy {
    fn continue_tokens(
        &mut self,
        context: &[u32],
        stop: &[u32],
        sampling: &Sampling,
    ) -> Result<Generation, RolloutError> {
        let (mut fed, mut cache) = match self.session.take() {
            Some((fed, cache)) if context.len() > fed.len() && context.starts_with(&fed) => (fed, cache),
            _ => (Vec::new(), self.model.new_cache()),
        };
        let fresh = &context[fed.len()..];
        let generation =
            userrl_nn::generate::generate_continue(&self.model, &mut cache, fresh, stop, sampling, &mut |_| {})?;
        fed.extend_from_slice(fresh);
        fed.extend_from_slice(&generation.tokens[..generation.tokens.len().saturating_sub(1)]);
        self.session = Some((fed, cache));
        Ok(generation)
    }
}

/// Samples one assistant turn of an episode: `context` is the whole token sequence so far.
#[async_trait::async_trait]
trait TurnSampler: Send {
    async fn sample(&mut self, context: &[u32], stop: &[u32], sampling: &Sampling) -> Result<Generation, RolloutError>;
}

/// A synchronous [`Policy`], one episode at a time.
struct OneAtATime<'a>(&'a mut dyn Policy);

#[async_trait::async_trait]
impl TurnSampler for OneAtATime<'_> {
    async fn sample(&mut self, context: &[u32], stop: &[u32], sampling: &Sampling) -> Result<Generation, RolloutError> {
        self.0.continue_tokens(context, stop, sampling)
    }
}

/// An engine session: the first turn sends the prompt, each later turn only the tokens appended since the
/// last sample (the tool turn); the engine runs its pending sampled token and those on the kept cache.
struct EngineSampler {
    session: Session,
    /// Tokens of the episode the engine has seen or sampled so far.
    known: usize,
    /// Where each sampled token is reported as it arrives (live episodes), and the turn being sampled.
    events: Option<RolloutEvents>,
    turn: usize,
}

impl EngineSampler {
    fn new(session: Session, events: Option<RolloutEvents>) -> EngineSampler {
        EngineSampler { session, known: 0, events, turn: 0 }
    }
}

#[async_trait::async_trait]
impl TurnSampler for EngineSampler {
    async fn sample(&mut self, context: &[u32], stop: &[u32], sampling: &Sampling) -> Result<Generation, RolloutError> {
        let fresh = context.get(self.known..).unwrap_or_default();
        let request =
            Request { tokens: fresh.to_vec(), stop: stop.to_vec(), sampling: sampling.clone(), constraint: None };
        let stream = self.session.generate(request)?;
        let generation = match &self.events {
            None => stream.collect().await?.0,
            Some(events) => {
                let mut stream = stream;
                let mut out = Generation { tokens: Vec::new(), logprobs: Vec::new(), stopped: false };
                loop {
                    match stream.next().await {
                        Some(Event::Token { id, logprob }) => {
                            out.tokens.push(id);
                            out.logprobs.push(logprob);
                            // A listener that left does not stop the episode (it is still stored).
                            let _ = events.send(RolloutEvent::Token { turn: self.turn, id });
                        }
                        Some(Event::Finished(reason)) => {
                            out.stopped = reason == FinishReason::Stop;
                            break;
                        }
                        Some(Event::Failed(e)) => return Err(e.into()),
                        None => return Err(EngineError::Stopped.into()),
                    }
                }
                out
            }
        };
        self.turn += 1;
        self.known = context.len() + generation.tokens.len();
        Ok(generation)
    }
}

/// What [`rollout_live`] reports while it plays.
#[derive(Clone, Debug, PartialEq)]
pub enum RolloutEvent {
    /// The prompt is built: the gym's opening user message (the task as the agent reads it).
    Started { opening: String },
    /// One token sampled for assistant turn `turn` (0-based).
    Token { turn: usize, id: u32 },
    /// Turn `turn` is sampled in full (its stop token included, when it stopped).
    Sampled { turn: usize, tokens: Vec<u32> },
    /// The gym stepped turn `turn`: the reward, the environment's feedback and whether the episode is over.
    Stepped { turn: usize, reward: f64, feedback: String, done: bool },
}

/// The sending side of a live rollout's reports.
pub type RolloutEvents = tokio::sync::mpsc::UnboundedSender<RolloutEvent>;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Gym(#[from] GymError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("generation engine: {0}")]
    Engine(#[from] EngineError),
    #[error("a rollout task failed: {0}")]
    Task(String),
    #[error("the chat template has no `{0}` token")]
    MissingToken(&'static str),
    #[error("bad SFT record: {0}")]
    BadRecord(String),
}

#[derive(Clone, Debug)]
pub struct RolloutConfig {
    pub env: EnvConfig,
    /// New tokens per assistant turn.
    pub max_new_tokens: usize,
    /// The whole sequence (prompt, turns and tool responses).
    pub max_total_tokens: usize,
    pub sampling: Sampling,
    /// How long one gym step (the user's reply) may take; past it the episode ends as `agent_error`. `None`
    /// waits as long as the step takes (and needs no tokio timer, e.g. under `futures::executor`).
    pub step_timeout: Option<Duration>,
}

/// One rollout, ready for shaping and the policy update.
#[derive(Clone, Debug, Serialize)]
pub struct Trajectory {
    pub gym: GymKind,
    pub task_id: String,
    pub tokens: Vec<u32>,
    /// 1 on tokens the policy sampled, 0 on prompt, template, user and tool tokens.
    pub response_mask: Vec<u8>,
    /// The sampler's log-prob on policy tokens, 0 elsewhere.
    pub sampled_logprobs: Vec<f32>,
    /// Index in `tokens` where each assistant turn's sampled tokens start.
    pub turn_starts: Vec<usize>,
    /// One reward per assistant turn (0 for a final turn without a tool call).
    pub turn_rewards: Vec<f64>,
    pub prompt_len: usize,
    /// The system turn as the policy saw it (the gym's prompt with the tool block).
    pub system: String,
    /// The tool response each turn got (with the reward line in training); `None` for a turn without a call
    /// or one cut by the token limit.
    pub tool_responses: Vec<Option<String>>,
    pub termination: Termination,
    pub extra_calls: usize,
    /// Seconds each gym step took (the user's answer: microseconds for the scripted user, a round trip for an
    /// LLM or a person).
    pub step_seconds: Vec<f64>,
    pub transcript: Transcript,
}

impl Trajectory {
    /// Policy tokens per turn (for the turn-credit rescaling).
    pub fn policy_tokens_per_turn(&self) -> Vec<usize> {
        let mut bounds = self.turn_starts.clone();
        bounds.push(self.tokens.len());
        bounds.windows(2).map(|w| self.response_mask[w[0]..w[1]].iter().filter(|m| **m == 1).count()).collect()
    }

    /// One advantage per token: each turn's policy tokens get that turn's value (the shaping's
    /// `turn_advantages`), every other token 0.
    pub fn token_advantages(&self, per_turn: &[f64]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.tokens.len()];
        for (turn, &start) in self.turn_starts.iter().enumerate() {
            let end = self.turn_starts.get(turn + 1).copied().unwrap_or(self.tokens.len());
            let value = per_turn.get(turn).copied().unwrap_or(0.0) as f32;
            for (o, m) in out[start..end].iter_mut().zip(&self.response_mask[start..end]) {
                if *m == 1 {
                    *o = value;
                }
            }
        }
        out
    }
}

/// The system turn with the tool described Hermes-style, as Qwen-family templates render it.
pub fn system_with_tools(system: &str) -> String {
    format!(
        "{system}\n\n# Tools\n\nYou may call the function below to interact with the environment.\n\n<tools>\n{}\n</tools>\n\n\
         For each call, return a JSON object with the function name and arguments inside <tool_call></tool_call> \
         tags:\n<tool_call>\n{{\"name\": \"interact_with_env\", \"arguments\": {{\"choice\": \"...\", \"content\": \"...\"}}}}\n</tool_call>",
        tool::schema()
    )
}

/// The tokens appended after an assistant turn: its end, the tool response as a user turn, and the next
/// assistant header.
fn tool_turn_text(response: &str) -> String {
    format!("\n<|im_start|>user\n<tool_response>\n{response}\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
}

/// Renders an SFT chat record (`sft_data::chat_record`) into tokens exactly as a rollout lays them out (system
/// turn with the tool, opening, assistant turns with Hermes calls ending in `<|im_end|>`, tool responses as
/// user turns), with the mask on the assistant's tokens only. Records that do not start with a system and a
/// user message are refused.
pub fn render_sft_record(
    tokenizer: &Tokenizer,
    record: &serde_json::Value,
) -> Result<(Vec<u32>, Vec<bool>), RolloutError> {
    let im_end = tokenizer.token_id("<|im_end|>").ok_or(RolloutError::MissingToken("<|im_end|>"))?;
    let messages = record["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let (Some(system), Some(user)) = (messages.first(), messages.get(1)) else {
        return Err(RolloutError::BadRecord("needs a system and a user message first".into()));
    };
    if system["role"] != "system" || user["role"] != "user" {
        return Err(RolloutError::BadRecord("needs a system and a user message first".into()));
    }
    let text = |m: &serde_json::Value| m["content"].as_str().unwrap_or_default().to_string();
    let prompt = tokenizer.render_chat(
        &[ChatMessage::new("system", &system_with_tools(&text(system))), ChatMessage::new("user", &text(user))],
        true,
    )?;
    let mut tokens = tokenizer.encode(&prompt)?;
    let mut mask = vec![false; tokens.len()];
    for m in &messages[2..] {
        match m["role"].as_str() {
            Some("assistant") => {
                let mut body = text(m);
                if let Some(call) = m["tool_calls"].as_array().and_then(|c| c.first()) {
                    let arguments: serde_json::Value = match &call["function"]["arguments"] {
                        serde_json::Value::String(s) => serde_json::from_str(s)
                            .map_err(|e| RolloutError::BadRecord(format!("tool call arguments: {e}")))?,
                        other => other.clone(),
                    };
                    let name = call["function"]["name"].as_str().unwrap_or(tool::TOOL_NAME).to_string();
                    let hermes = tool::ToolCall { name, arguments }.to_hermes();
                    body = if body.is_empty() { hermes } else { format!("{body}\n{hermes}") };
                }
                let mut ids = tokenizer.encode(&body)?;
                ids.push(im_end);
                mask.extend(std::iter::repeat_n(true, ids.len()));
                tokens.extend(ids);
            }
            Some("tool") => {
                let ids = tokenizer.encode(&tool_turn_text(&text(m)))?;
                mask.extend(std::iter::repeat_n(false, ids.len()));
                tokens.extend(ids);
            }
            other => return Err(RolloutError::BadRecord(format!("unexpected role {other:?} after the opening"))),
        }
    }
    Ok((tokens, mask))
}

/// A local policy model as an `Agent` (for `userrl eval --model <gguf|checkpoint>`): the conversation is
/// rendered as rollouts lay it out, the model continues it, and the first Hermes tool call of its reply is the
/// turn. Evaluation re-tokenises the history, which is fine here: nothing is trained on it.
pub struct ModelAgent {
    pub model: Arc<userrl_nn::model::Llama>,
    pub tokenizer: Arc<Tokenizer>,
    pub sampling: Sampling,
}

impl ModelAgent {
    fn context(&self, conversation: &[Message]) -> Result<Vec<u32>, RolloutError> {
        let (system, user) = match conversation {
            [s, u, ..] if s.role == Role::System && u.role == Role::User => (s.content.as_str(), u.content.as_str()),
            _ => return Err(RolloutError::BadRecord("the conversation must open with system and user".into())),
        };
        let im_end = tokenizer_token(&self.tokenizer, "<|im_end|>")?;
        let prompt = self.tokenizer.render_chat(
            &[ChatMessage::new("system", &system_with_tools(system)), ChatMessage::new("user", user)],
            true,
        )?;
        let mut ids = self.tokenizer.encode(&prompt)?;
        for m in &conversation[2..] {
            match m.role {
                Role::Assistant => {
                    ids.extend(self.tokenizer.encode(&m.content)?);
                    ids.push(im_end);
                }
                _ => ids.extend(self.tokenizer.encode(&tool_turn_text(&m.content))?),
            }
        }
        Ok(ids)
    }
}

fn tokenizer_token(tokenizer: &Tokenizer, token: &'static str) -> Result<u32, RolloutError> {
    tokenizer.token_id(token).ok_or(RolloutError::MissingToken(token))
}

#[async_trait::async_trait]
impl userrl_gym::Agent for ModelAgent {
    async fn act(&mut self, conversation: &[Message]) -> userrl_gym::AgentTurn {
        use userrl_gym::AgentTurn;
        let result = (|| -> Result<(String, bool), RolloutError> {
            let context = self.context(conversation)?;
            let im_end = tokenizer_token(&self.tokenizer, "<|im_end|>")?;
            let room = self.model.config.context.saturating_sub(context.len() + 1);
            if room == 0 {
                // The conversation fills the model's context: the episode ends as `length` (reference §6.1).
                return Ok((String::new(), false));
            }
            let sampling = Sampling { max_new_tokens: self.sampling.max_new_tokens.min(room), ..self.sampling.clone() };
            let generation = userrl_nn::generate::generate(&self.model, &context, &[im_end], &sampling)?;
            // A stopped reply ends with <|im_end|>, which is not text.
            let text_len = generation.tokens.len().saturating_sub(usize::from(generation.stopped));
            Ok((self.tokenizer.decode(&generation.tokens[..text_len])?, generation.stopped))
        })();
        match result {
            Err(e) => AgentTurn::Failed(e.to_string()),
            Ok((text, stopped)) => turn_from_reply(text, stopped),
        }
    }
}

/// An evaluated reply as a turn: its first Hermes call (the reference's evaluation reads the first call of any
/// reply, cut or not); without one, a cut reply ends the episode as `length` and a finished one as `no_tool_call`.
fn turn_from_reply(text: String, stopped: bool) -> userrl_gym::AgentTurn {
    use userrl_gym::AgentTurn;
    match tool::parse_hermes(&text).calls.into_iter().next() {
        None if !stopped => AgentTurn::Cut(text),
        None => AgentTurn::Text(text),
        Some(call) if call.name != tool::TOOL_NAME => AgentTurn::Invalid {
            thought: text,
            error: tool::ToolError::UnknownTool(call.name.chars().take(60).collect()),
        },
        Some(call) => AgentTurn::Call { thought: text, arguments: call.arguments },
    }
}

/// Plays one episode with the policy. `seed` varies sampling between the rollouts of a group.
pub async fn rollout(
    gym: &dyn Gym,
    task_id: &str,
    policy: &mut dyn Policy,
    tokenizer: &Tokenizer,
    user: Arc<dyn User>,
    config: &RolloutConfig,
) -> Result<Trajectory, RolloutError> {
    play(gym, task_id, &mut OneAtATime(policy), tokenizer, user, config, None).await
}

/// Plays one episode on `engine` exactly as [`rollout_batch`] plays each of its jobs, reporting every sampled
/// token and gym step to `events` as it happens. Dropping the returned future drops the engine session, which
/// cancels the turn being sampled.
pub async fn rollout_live(
    engine: &dyn Generator,
    job: RolloutJob,
    tokenizer: &Tokenizer,
    user: Arc<dyn User>,
    events: RolloutEvents,
) -> Result<Trajectory, RolloutError> {
    let mut sampler = EngineSampler::new(engine.session(), Some(events.clone()));
    play(job.gym.as_ref(), &job.task_id, &mut sampler, tokenizer, user, &job.config, Some(&events)).await
}

/// One episode to play in a [`rollout_batch`].
#[derive(Clone)]
pub struct RolloutJob {
    pub gym: Arc<dyn Gym>,
    pub task_id: String,
    pub config: RolloutConfig,
}

/// Plays every job at once on `engine`, each as a tokio task with its own engine session (so their turns
/// decode together in one batch and their gym steps overlap), and returns the trajectories in job order.
/// Must be called inside a tokio runtime with the timer enabled when a job has a `step_timeout`.
pub async fn rollout_batch(
    engine: &dyn Generator,
    jobs: Vec<RolloutJob>,
    tokenizer: Arc<Tokenizer>,
    user: Arc<dyn User>,
) -> Vec<Result<Trajectory, RolloutError>> {
    let mut tasks = tokio::task::JoinSet::new();
    let n = jobs.len();
    for (i, job) in jobs.into_iter().enumerate() {
        let mut sampler = EngineSampler::new(engine.session(), None);
        let (tokenizer, user) = (tokenizer.clone(), user.clone());
        tasks.spawn(async move {
            let t = play(job.gym.as_ref(), &job.task_id, &mut sampler, &tokenizer, user, &job.config, None).await;
            (i, t)
        });
    }
    let mut out: Vec<Option<Result<Trajectory, RolloutError>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, t)) => out[i] = Some(t),
            // A panicked task's slot stays empty and is reported below; the others still finish.
            Err(e) => tracing::error!(error = %e, "rollout task failed"),
        }
    }
    out.into_iter().map(|t| t.unwrap_or_else(|| Err(RolloutError::Task("panicked or cancelled".into())))).collect()
}

async fn play(
    gym: &dyn Gym,
    task_id: &str,
    policy: &mut dyn TurnSampler,
    tokenizer: &Tokenizer,
    user: Arc<dyn User>,
    config: &RolloutConfig,
    events: Option<&RolloutEvents>,
) -> Result<Trajectory, RolloutError> {
    let report = |event: RolloutEvent| {
        if let Some(events) = events {
            let _ = events.send(event);
        }
    };
    let im_end = tokenizer.token_id("<|im_end|>").ok_or(RolloutError::MissingToken("<|im_end|>"))?;
    let env = gym.new_env(task_id, &config.env, user.clone())?;
    let mut episode = Episode::new(env, config.env.clone());
    let system = system_with_tools(&gym.system_prompt());
    let prompt = tokenizer
        .render_chat(&[ChatMessage::new("system", &system), ChatMessage::new("user", &episode.opening())], true)?;
    let mut tokens = tokenizer.encode(&prompt)?;
    report(RolloutEvent::Started { opening: episode.opening() });
    let prompt_len = tokens.len();
    let mut response_mask = vec![0u8; prompt_len];
    let mut sampled_logprobs = vec![0.0f32; prompt_len];
    let (mut turn_starts, mut turn_rewards, mut tool_responses) = (Vec::new(), Vec::new(), Vec::new());
    let mut extra_calls = 0;
    let mut step_seconds = Vec::new();
    let mut ended: Option<Termination> = None;
    while !episode.is_done() && ended.is_none() {
        if user.abandoned() {
            ended = Some(Termination::Abandoned);
            break;
        }
        let room = config.max_total_tokens.saturating_sub(tokens.len() + 1);
        if room == 0 {
            ended = Some(Termination::Length);
            break;
        }
        let sampling = Sampling {
            max_new_tokens: config.max_new_tokens.min(room),
            seed: userrl_gym::text::mix(config.sampling.seed, turn_starts.len() as u64),
            ..config.sampling.clone()
        };
        let generation = policy.sample(&tokens, &[im_end], &sampling).await?;
        report(RolloutEvent::Sampled { turn: turn_starts.len(), tokens: generation.tokens.clone() });
        turn_starts.push(tokens.len());
        turn_rewards.push(0.0);
        tool_responses.push(None);
        tokens.extend_from_slice(&generation.tokens);
        response_mask.extend(std::iter::repeat_n(1u8, generation.tokens.len()));
        sampled_logprobs.extend_from_slice(&generation.logprobs);
        if !generation.stopped {
            ended = Some(Termination::Length);
            break;
        }
        let text = tokenizer.decode(&generation.tokens)?;
        let parsed = tool::parse_hermes(&text);
        let Some(call) = parsed.calls.first() else {
            ended = Some(Termination::NoToolCall);
            break;
        };
        extra_calls += parsed.calls.len() - 1;
        let action = call.to_action();
        let asked = std::time::Instant::now();
        let outcome = match config.step_timeout {
            None => episode.step(action).await,
            Some(limit) => match tokio::time::timeout(limit, episode.step(action)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // The step never answered (a stuck user endpoint): the turn keeps reward 0 and no response.
                    tracing::warn!(gym = %gym.kind(), task = task_id, seconds = limit.as_secs_f64(), "gym step timed out");
                    step_seconds.push(asked.elapsed().as_secs_f64());
                    ended = Some(Termination::AgentError);
                    break;
                }
            },
        };
        step_seconds.push(asked.elapsed().as_secs_f64());
        if let Some(last) = turn_rewards.last_mut() {
            *last = outcome.reward;
        }
        report(RolloutEvent::Stepped {
            turn: turn_starts.len() - 1,
            reward: outcome.reward,
            feedback: outcome.feedback.clone(),
            done: outcome.done(),
        });
        let appended = (!outcome.done()).then(|| tokenizer.encode(&tool_turn_text(&outcome.tool_response)));
        if let Some(last) = tool_responses.last_mut() {
            *last = Some(outcome.tool_response);
        }
        let Some(appended) = appended else { break };
        let appended = appended?;
        response_mask.extend(std::iter::repeat_n(0u8, appended.len()));
        sampled_logprobs.extend(std::iter::repeat_n(0.0f32, appended.len()));
        tokens.extend(appended);
    }
    if let Some(why) = ended.clone() {
        episode.abort(why);
    }
    let transcript = episode.into_transcript();
    Ok(Trajectory {
        gym: gym.kind(),
        task_id: task_id.to_string(),
        termination: transcript.termination.clone(),
        tokens,
        response_mask,
        sampled_logprobs,
        turn_starts,
        turn_rewards,
        prompt_len,
        system,
        tool_responses,
        extra_calls,
        step_seconds,
        transcript,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::executor::block_on;
    use userrl_gym::Catalog;
    use userrl_gym::user::ScriptedUser;
    use userrl_nn::engine::Engine;
    use userrl_nn::gguf::Gguf;
    use userrl_nn::model::Llama;

    pub(crate) fn tokenizer() -> Tokenizer {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
        Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap()
    }

    /// A policy that "samples" scripted texts, recording the exact ids it returned.
    pub(crate) struct Scripted {
        pub turns: Vec<Vec<u32>>,
        pub next: usize,
        pub sampled: Vec<u32>,
    }

    impl Policy for Scripted {
        fn continue_tokens(&mut self, _: &[u32], _: &[u32], s: &Sampling) -> Result<Generation, RolloutError> {
            let mut tokens = self.turns.get(self.next).cloned().unwrap_or_default();
            self.next += 1;
            let stopped = tokens.len() <= s.max_new_tokens;
            tokens.truncate(s.max_new_tokens);
            self.sampled.extend_from_slice(&tokens);
            Ok(Generation { logprobs: vec![-0.5; tokens.len()], tokens, stopped })
        }
    }

    pub(crate) fn turn(tok: &Tokenizer, text: &str) -> Vec<u32> {
        let mut ids = tok.encode(text).unwrap();
        ids.push(tok.token_id("<|im_end|>").unwrap());
        ids
    }

    pub(crate) fn config() -> RolloutConfig {
        RolloutConfig {
            env: EnvConfig::default(),
            max_new_tokens: 200,
            max_total_tokens: 4096,
            sampling: Sampling::default(),
            step_timeout: None,
        }
    }

    #[test]
    fn trajectory_keeps_the_sampled_ids_and_masks_everything_else() {
        let tok = tokenizer();
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let gym = catalog.get(GymKind::Function).unwrap();
        let task = gym.task_ids(None)[0].clone();
        let expected = gym.export_tasks()[0]["expected"].as_f64().unwrap();
        let call = |choice: &str, content: &str| {
            format!(
                "<think>ok</think>\n<tool_call>\n{{\"name\": \"interact_with_env\", \"arguments\": {{\"choice\": \"{choice}\", \"content\": \"{content}\"}}}}\n</tool_call>"
            )
        };
        // An odd spacing that a decode/encode round trip would not reproduce token for token.
        let mut first = tok.encode("  ").unwrap();
        first.extend(turn(&tok, &call("search", "test")));
        let mut policy = Scripted {
            turns: vec![
                first,
                turn(&tok, &call("action", "1 2 3 4")),
                turn(&tok, &call("answer", &format!("{expected}"))),
            ],
            next: 0,
            sampled: Vec::new(),
        };
        let t = block_on(rollout(gym.as_ref(), &task, &mut policy, &tok, Arc::new(ScriptedUser), &config())).unwrap();
        // Token-in/token-out: the ids under the mask are exactly the sampled ids, in order.
        let masked: Vec<u32> =
            t.tokens.iter().zip(&t.response_mask).filter(|(_, m)| **m == 1).map(|(id, _)| *id).collect();
        assert_eq!(masked, policy.sampled);
        assert_eq!(t.turn_rewards, vec![0.0, 0.0, 1.0]);
        assert_eq!(t.termination, Termination::Terminated);
        assert_eq!(t.policy_tokens_per_turn().iter().sum::<usize>(), policy.sampled.len());
        assert!(t.response_mask[..t.prompt_len].iter().all(|m| *m == 0));
        assert_eq!(t.turn_starts.len(), 3);
        assert_eq!(t.step_seconds.len(), 3);
        assert!(t.sampled_logprobs.iter().zip(&t.response_mask).all(|(l, m)| (*m == 1) == (*l != 0.0)));
        // The prompt carries the tool schema and the system turn.
        let prompt = tok.decode(&t.tokens[..t.prompt_len]).unwrap();
        assert!(prompt.contains("<tools>") && prompt.contains("FunctionGym"));
    }

    #[test]
    fn no_tool_call_length_and_bad_calls_end_or_continue_as_the_reference_says() {
        let tok = tokenizer();
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let gym = catalog.get(GymKind::Function).unwrap();
        let task = gym.task_ids(None)[0].clone();
        // A hallucinated tool name continues the episode with an error and reward 0; plain text ends it.
        let mut policy = Scripted {
            turns: vec![
                turn(&tok, "<tool_call>{\"name\": \"web_search\", \"arguments\": {\"q\": \"x\"}}</tool_call>"),
                turn(&tok, "<tool_call>{not json}</tool_call>"),
            ],
            next: 0,
            sampled: Vec::new(),
        };
        let t = block_on(rollout(gym.as_ref(), &task, &mut policy, &tok, Arc::new(ScriptedUser), &config())).unwrap();
        assert_eq!(t.termination, Termination::NoToolCall);
        assert_eq!(t.turn_rewards, vec![0.0, 0.0]);
        assert!(t.transcript.turns[0].feedback.contains("Unknown tool"));
        // A turn past its token budget ends the episode with `length`.
        let mut policy = Scripted { turns: vec![turn(&tok, &"word ".repeat(300))], next: 0, sampled: Vec::new() };
        let t = block_on(rollout(gym.as_ref(), &task, &mut policy, &tok, Arc::new(ScriptedUser), &config())).unwrap();
        assert_eq!(t.termination, Termination::Length);
        assert_eq!(t.response_mask.iter().filter(|m| **m == 1).count(), 200);
    }

    #[test]
    fn model_agent_plays_through_the_episode_runner() {
        use userrl_gym::eval::run_episode;
        let tok = Arc::new(tokenizer());
        let config = userrl_nn::model::LlamaConfig {
            vocab: tok.vocab_size(),
            hidden: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            ffn: 32,
            rope_theta: 10_000.0,
            eps: 1e-5,
            context: 2048,
        };
        let model = Arc::new(userrl_nn::train::random_llama(&config, 1, true).unwrap());
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let gym = catalog.get(GymKind::Function).unwrap();
        let task = gym.task_ids(None)[0].clone();
        // A random model rarely stops within 4 tokens: the reply is cut at its budget and the episode ends as
        // `length` (reference §6.1), not a panic.
        let mut agent = ModelAgent {
            model,
            tokenizer: tok.clone(),
            sampling: Sampling { max_new_tokens: 4, ..Sampling::default() },
        };
        let t = block_on(run_episode(gym.as_ref(), &task, &mut agent, Arc::new(ScriptedUser), &EnvConfig::default()))
            .unwrap();
        assert!(matches!(t.termination, Termination::Length | Termination::NoToolCall), "{:?}", t.termination);
        assert!(t.turns.is_empty());
        let conversation = [Message::new(Role::System, "You are an agent."), Message::new(Role::User, "Hello")];
        match block_on(userrl_gym::Agent::act(&mut agent, &conversation)) {
            userrl_gym::AgentTurn::Cut(text) => assert!(!text.is_empty()),
            other => panic!("a random model should overflow 4 tokens here: {other:?}"),
        }
        // A conversation that already fills the model's context ends the episode as `length`, not an error.
        let mut full = ModelAgent {
            model: Arc::new(tiny_llama(tok.vocab_size(), 8)),
            tokenizer: tok.clone(),
            sampling: Sampling { max_new_tokens: 4, ..Sampling::default() },
        };
        assert_eq!(
            block_on(userrl_gym::Agent::act(&mut full, &conversation)),
            userrl_gym::AgentTurn::Cut(String::new())
        );
    }

    #[test]
    fn a_cut_reply_keeps_a_complete_call_and_otherwise_ends_as_length() {
        use userrl_gym::AgentTurn;
        let call = r#"Let me ask.<tool_call>{"name": "interact_with_env", "arguments": {"choice": "action", "content": "Which city?"}}</tool_call> and then"#;
        assert!(matches!(turn_from_reply(call.into(), false), AgentTurn::Call { .. }));
        assert!(matches!(turn_from_reply(call.into(), true), AgentTurn::Call { .. }));
        let half = r#"Let me ask.<tool_call>{"name": "interact_with_env", "argum"#;
        assert_eq!(turn_from_reply(half.into(), false), AgentTurn::Cut(half.into()));
        assert_eq!(turn_from_reply("All done.".into(), true), AgentTurn::Text("All done.".into()));
    }

    #[test]
    fn cpu_policy_session_matches_a_fresh_prefill() {
        let config = userrl_nn::model::LlamaConfig {
            vocab: 97,
            hidden: 32,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 48,
            rope_theta: 10_000.0,
            eps: 1e-5,
            context: 256,
        };
        let model = || userrl_nn::train::random_llama(&config, 7, true).unwrap();
        let sampling = Sampling { max_new_tokens: 12, ..Sampling::default() };
        let mut with_session = CpuPolicy::new(model());
        let first: Vec<u32> = (0..40).map(|i| (i * 7 % 97) as u32).collect();
        let turn1 = with_session.continue_tokens(&first, &[], &sampling).unwrap();
        // The next turn: the sampled tokens plus a tool response, as a rollout appends them.
        let mut second = first.clone();
        second.extend(&turn1.tokens);
        second.extend([5u32, 6, 7, 8, 9]);
        let turn2 = with_session.continue_tokens(&second, &[], &sampling).unwrap();
        let fresh = CpuPolicy::new(model()).continue_tokens(&second, &[], &sampling).unwrap();
        assert_eq!(turn2.tokens, fresh.tokens);
        for (a, b) in turn2.logprobs.iter().zip(&fresh.logprobs) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    fn tiny_llama(vocab: usize, context: usize) -> Llama {
        let config = userrl_nn::model::LlamaConfig {
            vocab,
            hidden: 16,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            ffn: 32,
            rope_theta: 10_000.0,
            eps: 1e-5,
            context,
        };
        userrl_nn::train::random_llama(&config, 5, true).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Episodes played together on the engine give, token for token, the trajectories the sequential path gives
    /// one at a time (greedy and seeded sampling), with the sampler's log-probs.
    #[test]
    fn engine_rollouts_equal_sequential_rollouts() {
        let tok = Arc::new(tokenizer());
        let model = tiny_llama(tok.vocab_size(), 2048);
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let gym = catalog.get(GymKind::Function).unwrap().clone();
        let tasks = gym.task_ids(None);
        let jobs: Vec<RolloutJob> = (0..4)
            .map(|i| {
                let mut config = config();
                config.max_new_tokens = 10 + 3 * i;
                config.sampling = Sampling {
                    temperature: if i == 3 { 1.0 } else { 0.0 },
                    seed: 17 + i as u64,
                    ..Sampling::default()
                };
                config.step_timeout = Some(Duration::from_secs(60));
                RolloutJob { gym: gym.clone(), task_id: tasks[i % tasks.len()].clone(), config }
            })
            .collect();
        let engine =
            Engine::new(Arc::new(tiny_llama(tok.vocab_size(), 2048)), userrl_nn::engine::EngineConfig::default())
                .unwrap();
        let rt = runtime();
        let batched = rt.block_on(rollout_batch(&engine, jobs.clone(), tok.clone(), Arc::new(ScriptedUser)));
        let mut policy = CpuPolicy::new(model);
        for (job, got) in jobs.iter().zip(batched) {
            let got = got.unwrap();
            let want = rt
                .block_on(rollout(
                    job.gym.as_ref(),
                    &job.task_id,
                    &mut policy,
                    &tok,
                    Arc::new(ScriptedUser),
                    &job.config,
                ))
                .unwrap();
            assert_eq!(got.tokens, want.tokens);
            assert_eq!(got.response_mask, want.response_mask);
            assert_eq!(got.turn_starts, want.turn_starts);
            assert_eq!(got.termination, want.termination);
            assert!(got.response_mask.contains(&1));
            for (a, b) in got.sampled_logprobs.iter().zip(&want.sampled_logprobs) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    /// Over several turns the engine session is sent only the appended tokens and still samples what the
    /// sequential policy samples from the whole context.
    #[test]
    fn engine_session_turns_equal_the_sequential_policy() {
        let model = tiny_llama(97, 256);
        let engine = Engine::new(Arc::new(tiny_llama(97, 256)), userrl_nn::engine::EngineConfig::default()).unwrap();
        let mut sampler = EngineSampler::new(engine.session(), None);
        let mut policy = CpuPolicy::new(model);
        let sampling = Sampling { max_new_tokens: 9, ..Sampling::default() };
        let mut context: Vec<u32> = (0..30).map(|i| (i * 11 % 97) as u32).collect();
        let rt = runtime();
        for turn in 0..3u32 {
            let prompt_before = engine.stats().prompt_tokens.load(std::sync::atomic::Ordering::Relaxed);
            let got = rt.block_on(sampler.sample(&context, &[], &sampling)).unwrap();
            let want = policy.continue_tokens(&context, &[], &sampling).unwrap();
            assert_eq!(got.tokens, want.tokens, "turn {turn}");
            for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
                assert!((a - b).abs() < 1e-4, "turn {turn}: {a} vs {b}");
            }
            if turn > 0 {
                // The last sampled token and the 4 appended ones: the prefix is not run again.
                let fed = engine.stats().prompt_tokens.load(std::sync::atomic::Ordering::Relaxed) - prompt_before;
                assert_eq!(fed, 5, "turn {turn}");
            }
            context.extend(&got.tokens);
            context.extend([turn + 1, turn + 2, turn + 3, turn + 4]);
        }
    }

    /// A user that never answers in time.
    struct StuckUser;

    #[async_trait::async_trait]
    impl User for StuckUser {
        fn kind(&self) -> userrl_gym::UserKind {
            userrl_gym::UserKind::Scripted
        }
        async fn reply(
            &self,
            query: &userrl_gym::user::UserQuery,
        ) -> Result<userrl_gym::user::UserReply, userrl_gym::user::UserError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            query.scripted_reply()
        }
    }

    #[test]
    fn a_gym_step_past_its_timeout_ends_the_episode_as_an_agent_error() {
        let tok = tokenizer();
        let catalog = Catalog::builtin(&[GymKind::Intention]).unwrap();
        let gym = catalog.get(GymKind::Intention).unwrap();
        let task = gym.task_ids(None)[0].clone();
        let ask = "<tool_call>\n{\"name\": \"interact_with_env\", \"arguments\": {\"choice\": \"action\", \"content\": \"What is your budget?\"}}\n</tool_call>";
        let mut policy = Scripted { turns: vec![turn(&tok, ask), turn(&tok, ask)], next: 0, sampled: Vec::new() };
        let config = RolloutConfig { step_timeout: Some(Duration::from_millis(50)), ..config() };
        let t =
            runtime().block_on(rollout(gym.as_ref(), &task, &mut policy, &tok, Arc::new(StuckUser), &config)).unwrap();
        assert_eq!(t.termination, Termination::AgentError);
        assert_eq!(t.turn_rewards, vec![0.0]);
        assert_eq!(t.tool_responses, vec![None]);
        assert_eq!(t.step_seconds.len(), 1);
        assert_eq!(policy.next, 1);
    }
}
