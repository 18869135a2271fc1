//! The single tool the agent calls, `interact_with_env(choice, content)`: its JSON schema, how a call becomes a
//! gym action (`[action] …`, `[answer] …`, `[search] …`, `[finish]`), how Hermes-style `<tool_call>` blocks
//! are found in model text, and how the gym's feedback is returned (with the reward line in training only).
//!
//! Everything here takes untrusted model output: every malformed call becomes a `ToolError` whose message is
//! shown to the agent as feedback, never a panic.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const TOOL_NAME: &str = "interact_with_env";

/// Longest content accepted in one call. Longer content is rejected (not truncated) so that the agent learns
/// the limit instead of having its words silently cut.
pub const MAX_CONTENT_CHARS: usize = 8_192;

/// What the agent chose to do in one turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Action,
    Answer,
    Search,
}

impl Choice {
    pub const ALL: [Choice; 3] = [Choice::Action, Choice::Answer, Choice::Search];

    pub fn name(self) -> &'static str {
        match self {
            Choice::Action => "action",
            Choice::Answer => "answer",
            Choice::Search => "search",
        }
    }

    pub fn parse(s: &str) -> Option<Choice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "action" => Some(Choice::Action),
            "answer" => Some(Choice::Answer),
            "search" => Some(Choice::Search),
            _ => None,
        }
    }
}

/// A gym action: the tool call after the choice has been turned into the gym's bracketed command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "choice", content = "content", rename_all = "lowercase")]
pub enum Action {
    Action(String),
    Answer(String),
    Search(String),
    Finish,
}

impl Action {
    pub fn new(choice: Choice, content: impl Into<String>) -> Action {
        let content = content.into();
        match choice {
            Choice::Action => Action::Action(content),
            Choice::Answer => Action::Answer(content),
            Choice::Search => Action::Search(content),
        }
    }

    pub fn choice(&self) -> Option<Choice> {
        match self {
            Action::Action(_) => Some(Choice::Action),
            Action::Answer(_) => Some(Choice::Answer),
            Action::Search(_) => Some(Choice::Search),
            Action::Finish => None,
        }
    }

    pub fn content(&self) -> &str {
        match self {
            Action::Action(c) | Action::Answer(c) | Action::Search(c) => c,
            Action::Finish => "",
        }
    }

    /// The original's gym-side command string, e.g. `[answer] Paris`.
    pub fn command(&self) -> String {
        match self {
            Action::Finish => "[finish]".to_string(),
            other => format!("[{}] {}", other.choice().map(Choice::name).unwrap_or(""), other.content()),
        }
    }
}

/// Why a tool call could not be turned into an action. The `Display` text is the feedback the agent reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum ToolError {
    #[error("The tool arguments must be a JSON object with the fields `choice` and `content`.")]
    NotAnObject,
    #[error("The tool arguments are not valid JSON ({0}). Call `{TOOL_NAME}` with a JSON object.")]
    InvalidJson(String),
    #[error("The tool call is missing the field `{0}`.")]
    MissingField(&'static str),
    #[error("The field `{0}` must be a string.")]
    NotAString(&'static str),
    #[error("Unknown choice `{0}`: it must be one of `action`, `answer` or `search`.")]
    UnknownChoice(String),
    #[error("The choice `{choice}` is not available in this environment; use one of: {allowed}.")]
    ChoiceNotAllowed { choice: String, allowed: String },
    #[error("The content is empty. Write what you want to {0}.")]
    EmptyContent(&'static str),
    #[error("The content is {0} characters long; the limit is {MAX_CONTENT_CHARS}. Be concise.")]
    ContentTooLong(usize),
    #[error("Unknown tool `{0}`: the only tool is `{TOOL_NAME}`.")]
    UnknownTool(String),
}

/// The JSON schema of the tool, in the OpenAI `tools` format (the same shape as the original's).
pub fn schema() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Interact with the environment described in the system prompt, one step at a time. \
                The system prompt says which choices this environment accepts and what each one does.",
            "parameters": {
                "type": "object",
                "properties": {
                    "choice": {
                        "type": "string",
                        "enum": ["action", "answer", "search"],
                        "description": "What to do next: `action`, `answer` or `search`, as the system prompt allows."
                    },
                    "content": {
                        "type": "string",
                        "description": "The text of the chosen step: the message or command for `action`, the \
                            final answer for `answer`, the query for `search`. Follow the format the system \
                            prompt gives for each choice."
                    }
                },
                "required": ["choice", "content"]
            }
        }
    })
}

/// Removes control characters (keeping newlines and tabs) so they never reach a user model or a terminal.
pub fn sanitize(content: &str) -> String {
    content.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect()
}

/// Turns the tool's arguments into an action, as the original tool does, with two deliberate changes: an
/// unknown choice is an error (the original forwarded the raw content), and `finish` is accepted although the
/// schema does not list it. The `[x]` prefix is dropped when the content already carries it.
pub fn action_from_arguments(arguments: &Value) -> Result<Action, ToolError> {
    let object = arguments.as_object().ok_or(ToolError::NotAnObject)?;
    let choice = object.get("choice").ok_or(ToolError::MissingField("choice"))?;
    let choice = choice.as_str().ok_or(ToolError::NotAString("choice"))?;
    if choice.trim().eq_ignore_ascii_case("finish") {
        return Ok(Action::Finish);
    }
    let choice = Choice::parse(choice).ok_or_else(|| ToolError::UnknownChoice(truncate_for_message(choice)))?;
    let content = match object.get("content") {
        None => return Err(ToolError::MissingField("content")),
        Some(Value::String(s)) => s.as_str(),
        // Models often send a number for Function answers; accept scalars as their JSON text.
        Some(v @ (Value::Number(_) | Value::Bool(_))) => return action_from_content(choice, &v.to_string()),
        Some(_) => return Err(ToolError::NotAString("content")),
    };
    action_from_content(choice, content)
}

/// Builds an action from a choice and raw content, applying the content rules.
pub fn action_from_content(choice: Choice, content: &str) -> Result<Action, ToolError> {
    let chars = content.chars().count();
    if chars > MAX_CONTENT_CHARS {
        return Err(ToolError::ContentTooLong(chars));
    }
    let mut content = sanitize(content);
    let prefix = format!("[{}]", choice.name());
    if content.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(&prefix)) {
        content = content[prefix.len()..].to_string();
    }
    let content = content.trim().to_string();
    if content.is_empty() {
        return Err(ToolError::EmptyContent(choice.name()));
    }
    Ok(Action::new(choice, content))
}

/// Parses the arguments as JSON text first (what a model writes), then as an action.
pub fn action_from_json_text(arguments: &str) -> Result<Action, ToolError> {
    let value: Value =
        serde_json::from_str(arguments).map_err(|e| ToolError::InvalidJson(truncate_for_message(&e.to_string())))?;
    action_from_arguments(&value)
}

/// Same as `action_from_json_text` for raw bytes (HTTP bodies, files); invalid UTF-8 is replaced, not fatal.
pub fn action_from_bytes(bytes: &[u8]) -> Result<Action, ToolError> {
    action_from_json_text(&String::from_utf8_lossy(bytes))
}

fn truncate_for_message(s: &str) -> String {
    let clean = sanitize(s);
    if clean.chars().count() > 60 { format!("{}…", clean.chars().take(60).collect::<String>()) } else { clean }
}

/// One `<tool_call>{"name": …, "arguments": …}</tool_call>` block found in model text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolCall {
    pub fn interact(choice: Choice, content: &str) -> ToolCall {
        ToolCall { name: TOOL_NAME.to_string(), arguments: json!({"choice": choice.name(), "content": content}) }
    }

    /// The call as an action, checking the tool name.
    pub fn to_action(&self) -> Result<Action, ToolError> {
        if self.name != TOOL_NAME {
            return Err(ToolError::UnknownTool(truncate_for_message(&self.name)));
        }
        action_from_arguments(&self.arguments)
    }

    /// The Hermes-style text of this call.
    pub fn to_hermes(&self) -> String {
        format!("<tool_call>\n{}\n</tool_call>", json!({"name": self.name, "arguments": self.arguments}))
    }
}

/// What was found in one assistant message.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedTurn {
    /// Calls whose body was a JSON object with a string `name` and object `arguments` (a string holding JSON
    /// is accepted too, as some models emit that).
    pub calls: Vec<ToolCall>,
    /// Blocks that were opened but could not be parsed, with the reason.
    pub malformed: Vec<String>,
}

/// Finds every Hermes tool call in `text`. Calls whose arguments are not an object are reported as malformed,
/// as the original rollout drops them.
pub fn parse_hermes(text: &str) -> ParsedTurn {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut calls = Vec::new();
    let mut malformed = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let (body, next) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            None => (after, ""),
        };
        match parse_call_body(body.trim()) {
            Ok(call) => calls.push(call),
            Err(why) => malformed.push(why),
        }
        rest = next;
    }
    ParsedTurn { calls, malformed }
}

fn parse_call_body(body: &str) -> Result<ToolCall, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("invalid JSON in tool call: {e}"))?;
    let object = value.as_object().ok_or("tool call is not a JSON object")?;
    let name = object.get("name").and_then(Value::as_str).ok_or("tool call has no string `name`")?;
    let arguments = match object.get("arguments") {
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Err("tool call `arguments` is not a JSON object".into()),
        },
        _ => return Err("tool call `arguments` is not a JSON object".into()),
    };
    Ok(ToolCall { name: name.to_string(), arguments })
}

/// The text the agent reads back: the feedback, plus `Reward: r` in training (as the original).
pub fn tool_response(feedback: &str, reward: f64, mode: crate::env::Mode) -> String {
    match mode {
        crate::env::Mode::Train => format!("{feedback}\nReward: {}", format_reward(reward)),
        crate::env::Mode::Eval => feedback.to_string(),
    }
}

/// Formats a reward the way Python prints a float (`1.0`, `0.8`, `0.166667`).
pub fn format_reward(reward: f64) -> String {
    if reward.fract() == 0.0 && reward.abs() < 1e15 { format!("{reward:.1}") } else { format!("{reward}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Mode;

    #[test]
    fn choice_maps_to_prefixed_command() {
        let a = action_from_arguments(&json!({"choice": "answer", "content": "Paris"})).unwrap();
        assert_eq!(a.command(), "[answer] Paris");
        let a = action_from_arguments(&json!({"choice": "action", "content": "[action] is it red?"})).unwrap();
        assert_eq!(a, Action::Action("is it red?".into()));
        let a = action_from_arguments(&json!({"choice": "finish", "content": ""})).unwrap();
        assert_eq!(a.command(), "[finish]");
        let a = action_from_arguments(&json!({"choice": "answer", "content": 42})).unwrap();
        assert_eq!(a, Action::Answer("42".into()));
    }

    #[test]
    fn malformed_arguments_are_errors() {
        assert_eq!(action_from_arguments(&json!([1, 2])), Err(ToolError::NotAnObject));
        assert_eq!(action_from_arguments(&json!({"content": "x"})), Err(ToolError::MissingField("choice")));
        assert!(matches!(
            action_from_arguments(&json!({"choice": "fly", "content": "x"})),
            Err(ToolError::UnknownChoice(_))
        ));
        assert_eq!(
            action_from_arguments(&json!({"choice": "search", "content": "  "})),
            Err(ToolError::EmptyContent("search"))
        );
        let huge = "x".repeat(1 << 20);
        assert_eq!(
            action_from_arguments(&json!({"choice": "search", "content": huge})),
            Err(ToolError::ContentTooLong(1 << 20))
        );
        assert!(matches!(action_from_bytes(b"{\"choice\": \"answer\", \xff"), Err(ToolError::InvalidJson(_))));
        let a =
            action_from_arguments(&json!({"choice": "action", "content": "is\u{0007} it\u{001b}[31m red"})).unwrap();
        assert_eq!(a.content(), "is it[31m red");
    }

    #[test]
    fn hermes_blocks_are_found() {
        let text = "<think>hmm</think>\n<tool_call>\n{\"name\": \"interact_with_env\", \"arguments\": {\"choice\": \"search\", \"content\": \"test\"}}\n</tool_call>\
            <tool_call>{\"name\": \"interact_with_env\", \"arguments\": \"[1]\"}</tool_call><tool_call>{oops";
        let parsed = parse_hermes(text);
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.calls[0].to_action().unwrap(), Action::Search("test".into()));
        assert_eq!(parsed.malformed.len(), 2);
        let roundtrip = parse_hermes(&ToolCall::interact(Choice::Answer, "F2").to_hermes());
        assert_eq!(roundtrip.calls[0].to_action().unwrap(), Action::Answer("F2".into()));
    }

    #[test]
    fn tool_response_has_reward_line_only_in_training() {
        assert_eq!(tool_response("Yes", 0.0, Mode::Train), "Yes\nReward: 0.0");
        assert_eq!(tool_response("ok", 0.166667, Mode::Train), "ok\nReward: 0.166667");
        assert_eq!(tool_response("Yes", 1.0, Mode::Eval), "Yes");
    }
}
