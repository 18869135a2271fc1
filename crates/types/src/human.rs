//! What a person sees and sends while playing the user of a gym live: the controls of an open question, the
//! answer, and the state of a live episode (agent turns, tool calls, rewards, the outcome) as the server
//! pushes it to the browser. The gym crate re-exports the control and answer types, so the rules that check
//! an answer and the page that draws the controls share one definition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One option of a button row or checkbox group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pick {
    pub id: String,
    pub label: String,
}

impl Pick {
    pub fn new(id: impl Into<String>, label: impl Into<String>) -> Pick {
        Pick { id: id.into(), label: label.into() }
    }
}

/// One input the person answers with; `name` is the key of its value in the answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Exactly one of the options (Yes/No/Maybe, right/wrong).
    Buttons { name: String, label: String, options: Vec<Pick> },
    /// Any subset of the options (none is allowed), at most `max` of them when set.
    Checkboxes { name: String, label: String, options: Vec<Pick>, max: Option<usize> },
    /// A whole number in `min..=max`; `labels[i]` names the value `min + i`.
    Scale { name: String, label: String, min: i64, max: i64, labels: Vec<String> },
    /// Free text of at most `max_chars` characters; a required field must not be blank.
    Text { name: String, label: String, max_chars: usize, required: bool },
}

impl Control {
    pub fn name(&self) -> &str {
        match self {
            Control::Buttons { name, .. }
            | Control::Checkboxes { name, .. }
            | Control::Scale { name, .. }
            | Control::Text { name, .. } => name,
        }
    }
}

/// A piece of hidden task information the person may see (the entity, the hidden story, a preference…).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shown {
    pub label: String,
    pub text: String,
}

/// One earlier line of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// `agent` or `you`.
    pub speaker: String,
    pub text: String,
}

/// One control's value: a button id or text (`"yes"`), checkbox ids (`["P1"]`), or a scale number (`5`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Number(i64),
    Text(String),
    List(Vec<String>),
}

/// The person's answer to one prompt: a value per control name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HumanAnswer {
    pub values: BTreeMap<String, Value>,
}

impl HumanAnswer {
    pub fn new() -> HumanAnswer {
        HumanAnswer::default()
    }
    pub fn with(mut self, name: &str, value: Value) -> HumanAnswer {
        self.values.insert(name.to_string(), value);
        self
    }
    pub fn text(self, name: &str, text: impl Into<String>) -> HumanAnswer {
        self.with(name, Value::Text(text.into()))
    }
    pub fn list<S: Into<String>>(self, name: &str, ids: impl IntoIterator<Item = S>) -> HumanAnswer {
        self.with(name, Value::List(ids.into_iter().map(Into::into).collect()))
    }
    pub fn number(self, name: &str, n: i64) -> HumanAnswer {
        self.with(name, Value::Number(n))
    }
}

/// The question waiting for the person, as the browser shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenPrompt {
    /// The answer must name this id; an answer to any other id is refused (no replay).
    pub id: u64,
    pub instruction: String,
    /// The agent's message (question, guess, story, argument…).
    pub message: String,
    pub context: Vec<Shown>,
    pub history: Vec<Line>,
    pub controls: Vec<Control>,
}

/// One tool call of an agent reply, for a card: the function and its arguments (pretty JSON), and for the gym
/// tool its `choice` and `content`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCallView {
    pub name: String,
    pub arguments: String,
    pub choice: Option<String>,
    pub content: Option<String>,
}

/// What starts a live episode: a gym task, the agent model (a name served on /v1) and its sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeSpec {
    pub gym: String,
    pub task_id: String,
    pub model: String,
    pub temperature: f32,
    pub top_p: f32,
    /// New tokens per agent turn.
    pub max_new_tokens: usize,
    /// Sampling seed; `None` picks one.
    pub seed: Option<u64>,
    /// Who started it (`chat`, `study:<slug>`…); stored with the episode.
    pub origin: String,
}

/// Where a live episode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeStatus {
    /// The agent is writing its turn (or the gym is stepping).
    Agent,
    /// A question waits for the person.
    Waiting,
    Done,
}

/// One entry of a live episode's conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EpisodeItem {
    /// The task as the agent reads it (the gym's opening user message).
    Opening { text: String },
    /// An agent turn: its text outside tool calls and its call, with the turn's reward once the gym stepped.
    Agent { turn: usize, text: String, call: Option<ToolCallView>, reward: Option<f64> },
    /// The person's answer to a question of the agent's turn `turn`.
    Human { turn: usize, text: String },
    /// The environment's feedback to turn `turn` (what the tool returned to the agent).
    Feedback { turn: usize, text: String },
}

/// How a live episode ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeOutcome {
    /// `terminated`, `finished`, `max_steps`, `no_tool_call`, `agent_error`, `length`, `abandoned`.
    pub termination: String,
    /// The paper's score, normalised to [0, 1], and whether the task was solved.
    pub score: f64,
    pub normalized: f64,
    pub success: bool,
    pub turn_rewards: Vec<f64>,
    /// Seconds each gym step took (for a person: how long they took to answer).
    pub step_seconds: Vec<f64>,
    /// The stored episode's id (`Store::episode`), once it is written.
    pub stored_id: Option<i64>,
    /// Why the episode failed to run, when it did (the model went away…).
    pub error: Option<String>,
}

/// The whole state of a live episode; the server pushes a fresh copy on every change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeState {
    /// Unguessable: whoever holds it can answer for the person.
    pub id: String,
    pub spec: EpisodeSpec,
    pub gym_title: String,
    /// The hidden task the person plays (the goal, the entity, the preferences…).
    pub briefing: Vec<Shown>,
    pub items: Vec<EpisodeItem>,
    /// The agent reply being written, decoded so far (empty between turns).
    pub streaming: String,
    pub prompt: Option<OpenPrompt>,
    pub turn_rewards: Vec<f64>,
    pub status: EpisodeStatus,
    pub outcome: Option<EpisodeOutcome>,
    /// An unanswered question is abandoned after this many seconds.
    pub idle_timeout_s: u64,
    /// Bumped on every change.
    pub version: u64,
}

/// A gym and its tasks, for pickers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GymTasks {
    pub gym: String,
    pub title: String,
    /// (task id, split)
    pub tasks: Vec<(String, String)>,
}

/// A stored live episode (the list view; `Store::episode` gives its record too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeSummary {
    pub id: i64,
    /// Who started it (`chat`, `study:<slug>`…).
    pub origin: String,
    /// The agent model (its /v1 name) and where it was loaded from.
    pub model: String,
    /// `human`.
    pub user_kind: String,
    pub gym: String,
    pub task_id: String,
    /// The sum of the turn rewards, the paper's normalised score, and whether the task was solved.
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub reward: f64,
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub normalized: f64,
    pub success: bool,
    pub termination: String,
    pub turns: i64,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: i64,
}
