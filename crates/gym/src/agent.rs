//! Agents: anything that reads the conversation and makes one tool call per turn. The scripted experts (one per
//! gym, in each gym's module), the random baseline below, and later the policy model all fill this slot.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::gyms::GymKind;
use crate::tool::Choice;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One message of the agent's conversation. An assistant message that called the tool carries the call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<(Choice, String)>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message { role, content: content.into(), call: None }
    }
}

/// What the agent does in one turn.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum AgentTurn {
    /// A call of `interact_with_env`, with the text the agent wrote around it (its reasoning, if any). The raw
    /// arguments are kept as JSON so that a model's malformed call reaches the gym's error handling.
    Call { thought: String, arguments: serde_json::Value },
    /// A tool call that could not be read (a wrong tool name, arguments that are not JSON); the episode gets the
    /// error as feedback and the turn is spent.
    Invalid { thought: String, error: crate::tool::ToolError },
    /// Text without a tool call: the episode ends (reference §6.1).
    Text(String),
    /// A reply cut at the token limit before it held a tool call: the episode ends as `length` (reference §6.1,
    /// finish reason LENGTH). A cut reply that already holds a complete call is a [`AgentTurn::Call`], as the
    /// reference's evaluation reads the first call of whatever text came back.
    Cut(String),
    /// The agent could not produce a turn (its endpoint is down, its output overflowed…).
    Failed(String),
}

impl AgentTurn {
    pub fn call(choice: Choice, content: impl Into<String>) -> AgentTurn {
        AgentTurn::Call {
            thought: String::new(),
            arguments: serde_json::json!({"choice": choice.name(), "content": content.into()}),
        }
    }
    pub fn call_with_thought(thought: impl Into<String>, choice: Choice, content: impl Into<String>) -> AgentTurn {
        AgentTurn::Call {
            thought: thought.into(),
            arguments: serde_json::json!({"choice": choice.name(), "content": content.into()}),
        }
    }
}

#[async_trait::async_trait]
pub trait Agent: Send {
    /// The next turn given the whole conversation so far (system prompt, opening, then assistant/tool turns).
    async fn act(&mut self, conversation: &[Message]) -> AgentTurn;
}

/// The baseline: a random allowed choice, and content made of a few random words from what it has read (so
/// it can stumble on an option id or a number, as a clueless agent would).
pub struct RandomAgent {
    rng: ChaCha8Rng,
    allowed: &'static [Choice],
}

impl RandomAgent {
    pub fn new(kind: GymKind, seed: u64) -> RandomAgent {
        RandomAgent { rng: ChaCha8Rng::seed_from_u64(seed), allowed: kind.allowed_choices() }
    }
}

#[async_trait::async_trait]
impl Agent for RandomAgent {
    async fn act(&mut self, conversation: &[Message]) -> AgentTurn {
        let Some(&choice) = self.allowed.choose(&mut self.rng) else {
            return AgentTurn::Text("I have nothing to do.".into());
        };
        let seen: Vec<&str> =
            conversation.iter().filter(|m| m.role != Role::System).flat_map(|m| m.content.split_whitespace()).collect();
        let n = self.rng.random_range(1..=6);
        let content: Vec<&str> = (0..n).filter_map(|_| seen.choose(&mut self.rng).copied()).collect();
        let content = if content.is_empty() { "hello".to_string() } else { content.join(" ") };
        AgentTurn::call(choice, content)
    }
}
