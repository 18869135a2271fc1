//! The chat page's data: the models a person can talk to (served on /v1, or checkpoints of runs that can be
//! loaded), a chat request, and the events of a streamed reply.

use serde::{Deserialize, Serialize};

use crate::human::ToolCallView;

/// A model the chat page offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelChoice {
    /// The /v1 model name it is (or will be) served under.
    pub name: String,
    /// Where it comes from: a file, a checkpoint folder.
    pub source: String,
    /// Served now; a checkpoint that is not must be loaded first.
    pub loaded: bool,
    /// For a run's checkpoint: the run and the checkpoint row.
    pub run_id: Option<i64>,
    pub checkpoint_id: Option<i64>,
    pub step: Option<i64>,
}

/// One message of a chat, as the page keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTurn {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallView>,
}

/// What the page asks the server to answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatTurn>,
    /// Offer the gym tool `interact_with_env`.
    pub tools: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
}

/// One event of a streamed reply (one SSE message each, JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// More reply text.
    Delta {
        text: String,
    },
    /// The reply's tool calls (sent once, at the end).
    ToolCalls {
        calls: Vec<ToolCallView>,
    },
    /// The reply is complete: `stop`, `length` or `tool_calls`, and how many tokens were generated.
    Done {
        finish_reason: String,
        completion_tokens: usize,
    },
    Error {
        message: String,
    },
}

/// Longest message a person may send on the chat page, in characters.
pub const MAX_CHAT_CHARS: usize = 4000;
/// Most messages in one chat request.
pub const MAX_CHAT_MESSAGES: usize = 64;
