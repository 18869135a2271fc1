//! The environment API. A gym's `Env` holds one task's state and applies the gym's rules to one action;
//! `Episode` wraps it with what every gym shares: the step budget (truncation at `max_steps`), the allowed
//! choices, malformed tool calls (feedback and reward 0, the turn is spent), the tool-response text, and the
//! transcript with per-turn rewards and the episode score.

use serde::{Deserialize, Serialize};

use crate::gyms::GymKind;
use crate::tool::{self, Action, Choice, ToolError};

pub const DEFAULT_MAX_STEPS: usize = 16;

/// Training shows the reward line in every tool response and uses the training reward parameters; evaluation
/// shows the feedback alone (the original's split, §3.2 and §9 of the reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Train,
    #[default]
    Eval,
}

/// Switches that reproduce behaviours of the original code that we consider bugs (reference §11). All are off
/// by default; each gym documents its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Compat {
    pub persuade: crate::gyms::persuade::Compat,
    pub travel: crate::gyms::travel::Compat,
    pub intention: crate::gyms::intention::Compat,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvConfig {
    pub max_steps: usize,
    pub mode: Mode,
    /// Seeds every random choice of the episode (the scripted user's phrasing, the random agent).
    pub seed: u64,
    pub compat: Compat,
}

impl Default for EnvConfig {
    fn default() -> Self {
        EnvConfig { max_steps: DEFAULT_MAX_STEPS, mode: Mode::Eval, seed: 0, compat: Compat::default() }
    }
}

/// What a gym's rules say about one action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvStep {
    pub feedback: String,
    pub reward: f64,
    /// The episode ended by the gym's rules (solved, goal reached, conversation closed, `[finish]`).
    pub terminated: bool,
}

impl EnvStep {
    pub fn reply(feedback: impl Into<String>) -> EnvStep {
        EnvStep { feedback: feedback.into(), reward: 0.0, terminated: false }
    }
    pub fn rewarded(feedback: impl Into<String>, reward: f64) -> EnvStep {
        EnvStep { feedback: feedback.into(), reward, terminated: false }
    }
    pub fn end(mut self) -> EnvStep {
        self.terminated = true;
        self
    }
}

/// One task's live state inside a gym.
#[async_trait::async_trait]
pub trait Env: Send {
    fn kind(&self) -> GymKind;
    fn task_id(&self) -> &str;
    /// The task's first user message (what the agent reads after the system prompt).
    fn opening(&self) -> String;
    /// Applies one action. `Episode` has already checked the choice is allowed and the budget is not spent.
    async fn step(&mut self, action: &Action) -> EnvStep;
    /// Whether the task counts as solved now (a correct answer, the goal stance, every detail found…).
    fn success(&self) -> bool;
    /// The best score an episode of this task can reach (the denominator of the normalised score).
    fn max_score(&self) -> f64 {
        1.0
    }
    /// The episode's score from its turns (reference §9): the sum of turn rewards unless the gym says otherwise.
    fn episode_score(&self, turns: &[TurnRecord]) -> f64 {
        turns.iter().map(|t| t.reward).sum()
    }
}

/// Why an episode ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    /// The gym ended it (solved, goal stance, all preferences, the user hung up…).
    Terminated,
    /// The agent sent `[finish]`.
    Finished,
    /// The step budget ran out.
    MaxSteps,
    /// The agent's turn had no tool call.
    NoToolCall,
    /// The agent failed (its model endpoint died, its output ran past the length limit…).
    AgentError,
    /// The agent's output ran past its token budget (a turn's or the whole episode's).
    Length,
    /// Stopped from outside before it ended (a person quit, a run was cancelled).
    Abandoned,
}

impl Termination {
    pub fn name(&self) -> &'static str {
        match self {
            Termination::Terminated => "terminated",
            Termination::Finished => "finished",
            Termination::MaxSteps => "max_steps",
            Termination::NoToolCall => "no_tool_call",
            Termination::AgentError => "agent_error",
            Termination::Length => "length",
            Termination::Abandoned => "abandoned",
        }
    }
}

/// One turn of an episode as it is stored and shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// `action`, `answer`, `search`, `finish`, or `invalid` for a call that did not parse.
    pub choice: String,
    pub content: String,
    pub feedback: String,
    pub reward: f64,
    pub valid: bool,
}

/// A finished episode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub gym: GymKind,
    pub task_id: String,
    pub opening: String,
    pub turns: Vec<TurnRecord>,
    /// The paper's per-episode score (reference §9).
    pub score: f64,
    /// `score / max_score`, clipped to [0, 1].
    pub normalized: f64,
    pub success: bool,
    pub termination: Termination,
}

/// What the agent gets back from one tool call.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutcome {
    pub feedback: String,
    pub reward: f64,
    pub terminated: bool,
    pub truncated: bool,
    /// The tool message text for the agent (feedback, plus the reward line in training).
    pub tool_response: String,
}

impl StepOutcome {
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// An `Env` plus the rules every gym shares.
pub struct Episode {
    env: Box<dyn Env>,
    allowed: &'static [Choice],
    config: EnvConfig,
    turns: Vec<TurnRecord>,
    ended: Option<Termination>,
}

impl Episode {
    pub fn new(env: Box<dyn Env>, config: EnvConfig) -> Episode {
        let allowed = env.kind().allowed_choices();
        Episode { env, allowed, config, turns: Vec::new(), ended: None }
    }

    pub fn kind(&self) -> GymKind {
        self.env.kind()
    }
    pub fn task_id(&self) -> &str {
        self.env.task_id()
    }
    pub fn opening(&self) -> String {
        self.env.opening()
    }
    pub fn turns(&self) -> &[TurnRecord] {
        &self.turns
    }
    pub fn is_done(&self) -> bool {
        self.ended.is_some()
    }
    pub fn config(&self) -> &EnvConfig {
        &self.config
    }

    /// Applies one tool call (already parsed, or the parse error). After the episode has ended every call is
    /// refused with a message and reward 0 and is not recorded.
    pub async fn step(&mut self, call: Result<Action, ToolError>) -> StepOutcome {
        if self.ended.is_some() {
            let feedback = "The episode has already ended.".to_string();
            return StepOutcome {
                tool_response: feedback.clone(),
                feedback,
                reward: 0.0,
                terminated: true,
                truncated: false,
            };
        }
        let checked = call.and_then(|action| match action.choice() {
            Some(choice) if !self.allowed.contains(&choice) => Err(ToolError::ChoiceNotAllowed {
                choice: choice.name().to_string(),
                allowed: self.allowed.iter().map(|c| format!("`{}`", c.name())).collect::<Vec<_>>().join(", "),
            }),
            _ => Ok(action),
        });
        let (record, env_step) = match checked {
            Ok(action) => {
                let mut step = self.env.step(&action).await;
                if !step.reward.is_finite() {
                    tracing::warn!(gym = ?self.env.kind(), task = self.env.task_id(), "non-finite reward replaced by 0");
                    step.reward = 0.0;
                }
                if matches!(action, Action::Finish) {
                    step.terminated = true;
                }
                let choice = action.choice().map(Choice::name).unwrap_or("finish").to_string();
                let record = TurnRecord {
                    choice,
                    content: action.content().to_string(),
                    feedback: step.feedback.clone(),
                    reward: step.reward,
                    valid: true,
                };
                if matches!(action, Action::Finish) {
                    self.ended = Some(Termination::Finished);
                }
                (record, step)
            }
            Err(error) => {
                let step = EnvStep::reply(error.to_string());
                let record = TurnRecord {
                    choice: "invalid".into(),
                    content: String::new(),
                    feedback: step.feedback.clone(),
                    reward: 0.0,
                    valid: false,
                };
                (record, step)
            }
        };
        self.turns.push(record);
        let truncated = !env_step.terminated && self.turns.len() >= self.config.max_steps;
        if self.ended.is_none() {
            if env_step.terminated {
                self.ended = Some(Termination::Terminated);
            } else if truncated {
                self.ended = Some(Termination::MaxSteps);
            }
        }
        StepOutcome {
            tool_response: tool::tool_response(&env_step.feedback, env_step.reward, self.config.mode),
            feedback: env_step.feedback,
            reward: env_step.reward,
            terminated: env_step.terminated,
            truncated,
        }
    }

    /// Ends the episode from the agent's side (no tool call, an agent failure).
    pub fn abort(&mut self, why: Termination) {
        if self.ended.is_none() {
            self.ended = Some(why);
        }
    }

    pub fn score(&self) -> f64 {
        self.env.episode_score(&self.turns)
    }

    /// Closes the episode and returns its transcript. An episode still open is marked as abandoned.
    pub fn into_transcript(self) -> Transcript {
        // `+ 0.0` turns the -0.0 of an empty float sum into 0.0.
        let score = self.score() + 0.0;
        let max = self.env.max_score();
        let normalized = if max > 0.0 { (score / max).clamp(0.0, 1.0) + 0.0 } else { 0.0 };
        Transcript {
            gym: self.env.kind(),
            task_id: self.env.task_id().to_string(),
            opening: self.env.opening(),
            success: self.env.success(),
            score,
            normalized,
            termination: self.ended.unwrap_or(Termination::Abandoned),
            turns: self.turns,
        }
    }
}
