//! From an OpenAI request to prompt tokens, and from sampled text back to a reply. Tools are described
//! Hermes-style in the system turn (Qwen's wording, the layout our rollouts train on); assistant tool calls
//! in the history become `<tool_call>{json}</tool_call>` blocks and tool results `<tool_response>` blocks in a
//! user turn; `<tool_call>` blocks in the output become `tool_calls`. `tool_choice` "required" or a named
//! function is enforced by opening the call in the prompt, so the model can only continue it.

use serde_json::{Value, json};
use userrl_gym::tool::{ToolCall, parse_hermes};
use userrl_nn::tokenizer::{ChatMessage, Tokenizer};

use super::wire::{ApiError, WireMessage, content_text};

const CALL_OPEN: &str = "<tool_call>";

/// How the request uses its tools.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolMode {
    Off,
    Auto,
    Required,
    Named(String),
}

/// The prompt of one request.
#[derive(Debug)]
pub struct Plan {
    pub tokens: Vec<u32>,
    /// The JSON part of `forced` (what a tool-call constraint starts from); `None` when no call is forced.
    pub forced_json: Option<String>,
    /// The reply's opening that the prompt already holds (a forced `<tool_call>`); part of the reply's text.
    pub forced: String,
    pub tools_on: bool,
}

/// The system text with the tools listed (Qwen2.5's Hermes wording).
pub fn system_with_tools(system: &str, tools: &[Value]) -> String {
    let listed: Vec<String> = tools.iter().map(Value::to_string).collect();
    let head = if system.is_empty() { String::new() } else { format!("{system}\n\n") };
    format!(
        "{head}# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": \
         <args-json-object>}}\n</tool_call>",
        listed.join("\n")
    )
}

fn tool_names(tools: &[Value]) -> Result<Vec<String>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let name = tool["function"]["name"].as_str().filter(|n| !n.is_empty());
            match (tool["type"].as_str(), name) {
                (Some("function"), Some(name)) => Ok(name.to_string()),
                _ => Err(ApiError::invalid(
                    format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"),
                    Some("tools"),
                )),
            }
        })
        .collect()
}

pub fn tool_mode(tools: &[Value], choice: &Option<Value>) -> Result<ToolMode, ApiError> {
    let names = tool_names(tools)?;
    let has_tools = !names.is_empty();
    let need_tools = || ApiError::invalid("`tool_choice` needs `tools`", Some("tool_choice"));
    let mode = match choice {
        None | Some(Value::Null) => {
            if has_tools {
                ToolMode::Auto
            } else {
                ToolMode::Off
            }
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolMode::Off,
            "auto" if has_tools => ToolMode::Auto,
            "auto" => ToolMode::Off,
            "required" if has_tools => ToolMode::Required,
            "required" => return Err(need_tools()),
            other => {
                return Err(ApiError::invalid(
                    format!("`tool_choice` must be none, auto, required or a named function, not `{other}`"),
                    Some("tool_choice"),
                ));
            }
        },
        Some(value) => match (value["type"].as_str(), value["function"]["name"].as_str()) {
            (Some("function"), Some(name)) if names.iter().any(|n| n == name) => ToolMode::Named(name.to_string()),
            (Some("function"), Some(name)) => {
                return Err(ApiError::invalid(
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                    Some("tool_choice"),
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    "`tool_choice` must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
                    Some("tool_choice"),
                ));
            }
        },
    };
    Ok(mode)
}

/// The chat as the template's (role, content) turns.
fn chat_messages(messages: &[WireMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    let mut last_was_tool = false;
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let text = content_text(&m.content, &param)?;
        let is_tool = m.role == "tool";
        match m.role.as_str() {
            "system" | "developer" => out.push(ChatMessage::new("system", &text)),
            "user" => out.push(ChatMessage::new("user", &text)),
            "assistant" => {
                let mut body = text;
                for call in m.tool_calls.iter().flatten() {
                    let arguments = match &call.function.arguments {
                        Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
                            ApiError::invalid(format!("tool call arguments are not JSON: {e}"), Some(&param))
                        })?,
                        Value::Null => json!({}),
                        other => other.clone(),
                    };
                    let hermes = ToolCall { name: call.function.name.clone(), arguments }.to_hermes();
                    body = if body.is_empty() { hermes } else { format!("{body}\n{hermes}") };
                }
                out.push(ChatMessage::new("assistant", &body));
            }
            "tool" => {
                let block = format!("<tool_response>\n{text}\n</tool_response>");
                match out.last_mut() {
                    // Results of several calls of one turn share one user turn.
                    Some(prev) if last_was_tool => prev.content = format!("{}\n{block}", prev.content),
                    _ => out.push(ChatMessage::new("user", &block)),
                }
            }
            other => {
                return Err(ApiError::invalid(
                    format!("unknown role `{other}` (system, developer, user, assistant or tool)"),
                    Some(&param),
                ));
            }
        }
        last_was_tool = is_tool;
    }
    Ok(out)
}

pub fn plan(
    tokenizer: &Tokenizer,
    messages: &[WireMessage],
    tools: &[Value],
    mode: &ToolMode,
) -> Result<Plan, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("`messages` must not be empty", Some("messages")));
    }
    let mut chat = chat_messages(messages)?;
    if *mode != ToolMode::Off {
        match chat.first_mut() {
            Some(first) if first.role == "system" => first.content = system_with_tools(&first.content, tools),
            _ => chat.insert(0, ChatMessage::new("system", &system_with_tools("", tools))),
        }
    }
    let forced_json = match mode {
        ToolMode::Required => Some(String::new()),
        ToolMode::Named(name) => Some(format!("{{\"name\": {}, \"arguments\": ", json!(name))),
        _ => None,
    };
    let forced = forced_json.as_ref().map(|j| format!("{CALL_OPEN}\n{j}")).unwrap_or_default();
    let mut text =
        tokenizer.render_chat(&chat, true).map_err(|e| ApiError::internal(format!("the chat template failed: {e}")))?;
    text.push_str(&forced);
    let tokens =
        tokenizer.encode(&text).map_err(|e| ApiError::internal(format!("tokenizing the prompt failed: {e}")))?;
    Ok(Plan { tokens, forced_json, forced, tools_on: *mode != ToolMode::Off })
}

/// A finished reply: text before any tool call, and the calls as (name, arguments JSON text).
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub content: Option<String>,
    pub calls: Vec<(String, String)>,
}

/// Reads the reply text (the forced opening included): with tools on, valid `<tool_call>` blocks become calls
/// and the text before the first is the content; a reply whose blocks are all malformed stays text.
pub fn parse_reply(text: &str, tools_on: bool) -> Reply {
    if tools_on {
        let parsed = parse_hermes(text);
        if !parsed.calls.is_empty() {
            let before = text.find(CALL_OPEN).map_or(text, |i| &text[..i]).trim();
            return Reply {
                content: (!before.is_empty()).then(|| before.to_string()),
                calls: parsed.calls.into_iter().map(|c| (c.name, c.arguments.to_string())).collect(),
            };
        }
    }
    Reply { content: Some(text.to_string()), calls: Vec::new() }
}

/// Streams content deltas out of the growing reply text: text after a stop string is never sent, text from a
/// `<tool_call>` on is held for the final parse, and a tail that could be the start of either is held back
/// until the next token tells.
pub struct Deltas {
    stops: Vec<String>,
    tools_on: bool,
    sent: usize,
}

/// What one step of [`Deltas`] found.
pub struct Step {
    pub delta: String,
    /// The text up to the first stop string, when one appeared: the reply ends there.
    pub stopped_at: Option<usize>,
}

impl Deltas {
    pub fn new(stops: Vec<String>, tools_on: bool) -> Deltas {
        Deltas { stops, tools_on, sent: 0 }
    }

    pub fn has_stops(&self) -> bool {
        !self.stops.is_empty()
    }

    /// Where the reply text ends: at the first stop string, if any.
    pub fn stop_at(&self, text: &str) -> Option<usize> {
        self.stops.iter().filter_map(|s| text.find(s.as_str())).min()
    }

    /// `text` is the whole reply so far (the forced opening included); `last` says no more text will come.
    pub fn step(&mut self, text: &str, last: bool) -> Step {
        let stopped_at = self.stop_at(text);
        let visible = &text[..stopped_at.unwrap_or(text.len())];
        let call = if self.tools_on { visible.find(CALL_OPEN) } else { None };
        let mut end = call.unwrap_or(visible.len());
        if call.is_none() && stopped_at.is_none() && !last {
            let markers = self.stops.iter().map(String::as_str).chain(self.tools_on.then_some(CALL_OPEN));
            let held = markers.map(|m| partial_suffix(visible, m)).max().unwrap_or(0);
            end = visible.len() - held;
        }
        while end > self.sent && !visible.is_char_boundary(end) {
            end -= 1;
        }
        let delta = if end > self.sent { visible[self.sent..end].to_string() } else { String::new() };
        self.sent = self.sent.max(end);
        Step { delta, stopped_at }
    }

    /// Text not yet sent up to `end` (for a reply whose `<tool_call>` turned out not to be a call).
    pub fn rest(&mut self, text: &str, end: usize) -> String {
        let end = end.min(text.len());
        let out = if end > self.sent && text.is_char_boundary(self.sent) {
            text[self.sent..end].to_string()
        } else {
            String::new()
        };
        self.sent = self.sent.max(end);
        out
    }
}

/// The length of the longest end of `text` that is a proper start of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&n| {
            text.len() >= n && text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}
