//! The LLM user: any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp server, OpenAI, userrl's own
//! `/v1`) playing a gym's user or judge.
//!
//! `LlmClient` does the transport: several base URLs balanced by fewest requests in flight, a global
//! concurrency limit, a per-call timeout, retries with exponential backoff on timeouts, connection errors,
//! 429 and 5xx, optional `<think>` stripping, and a response cache keyed by a hash of the prompt (on by
//! default at temperature 0, where the answer is a function of the prompt). `LlmUser` asks the gym's
//! `Protocol` for the prompt, parses the answer, and falls back to the gym's default reply when every try
//! fails or the text cannot be read; both are logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::user::{User, UserError, UserKind, UserQuery, UserReply};

/// A two-message chat prompt (system, user), as the original gyms send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    /// Overrides the client's default `max_tokens` (the original uses 512 for the search judge).
    pub max_tokens: Option<u32>,
}

impl Prompt {
    pub fn new(system: impl Into<String>, user: impl Into<String>) -> Prompt {
        Prompt { system: system.into(), user: user.into(), max_tokens: None }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// One or more base URLs ending before `/chat/completions`, e.g. `http://localhost:8000/v1`.
    pub base_urls: Vec<String>,
    /// Never stored in configs: read from the environment (`USERRL_LLM_API_KEY`, else `OPENAI_API_KEY`).
    #[serde(skip)]
    pub api_key: Option<String>,
    pub model: String,
    pub temperature: f32,
    pub max_tokens: u32,
    pub timeout_ms: u64,
    /// Tries per request, the first included.
    pub max_tries: u32,
    /// The first backoff; each retry doubles it.
    pub backoff_ms: u64,
    /// Requests in flight across all endpoints.
    pub concurrency: usize,
    pub strip_think: bool,
    /// `None`: cache when `temperature == 0`.
    pub cache: Option<bool>,
    /// Ask for `response_format: {"type": "json_object"}` (every gym prompt wants JSON): servers that support it
    /// (OpenAI, vLLM, llama.cpp, userrl's /v1) then constrain the reply to JSON, which small models need.
    pub json_mode: bool,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_urls: Vec::new(),
            api_key: None,
            model: "gpt-4o".into(),
            temperature: 0.0,
            max_tokens: 2048,
            timeout_ms: 10_000,
            max_tries: 3,
            backoff_ms: 500,
            concurrency: 256,
            strip_think: true,
            cache: None,
            json_mode: false,
        }
    }
}

impl LlmConfig {
    /// Reads `USERRL_LLM_URL` (comma-separated for several servers; else `OPENAI_BASE_URL`), `USERRL_LLM_MODEL`
    /// and the key variables. Values already set in `self` are kept.
    pub fn with_env(mut self) -> LlmConfig {
        if self.base_urls.is_empty() {
            let urls =
                std::env::var("USERRL_LLM_URL").or_else(|_| std::env::var("OPENAI_BASE_URL")).unwrap_or_default();
            self.base_urls = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
        }
        if let Ok(model) = std::env::var("USERRL_LLM_MODEL")
            && !model.trim().is_empty()
        {
            self.model = model.trim().to_string();
        }
        if self.api_key.is_none() {
            self.api_key = std::env::var("USERRL_LLM_API_KEY").or_else(|_| std::env::var("OPENAI_API_KEY")).ok();
        }
        self
    }

    fn caches(&self) -> bool {
        self.cache.unwrap_or(self.temperature == 0.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("no LLM endpoint configured: set USERRL_LLM_URL (or OPENAI_BASE_URL) or `base_urls` in the config")]
    NoEndpoint,
    #[error("could not build the HTTP client: {0}")]
    Client(String),
    #[error("the request timed out after {0} ms")]
    Timeout(u64),
    #[error("HTTP {status} from {url}: {body}")]
    Status { status: u16, url: String, body: String },
    #[error("transport error talking to {url}: {message}")]
    Transport { url: String, message: String },
    #[error("the response is not a chat completion: {0}")]
    BadResponse(String),
}

impl LlmError {
    fn retryable(&self) -> bool {
        match self {
            LlmError::Timeout(_) | LlmError::Transport { .. } => true,
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

struct Endpoint {
    url: String,
    in_flight: AtomicUsize,
}

/// Counters a caller can read (and the benchmark reports).
#[derive(Debug, Default)]
pub struct LlmStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    pub cache_hits: AtomicU64,
}

pub struct LlmClient {
    config: LlmConfig,
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    permits: tokio::sync::Semaphore,
    cache: Mutex<HashMap<[u8; 32], String>>,
    next: AtomicUsize,
    pub stats: LlmStats,
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<LlmClient, LlmError> {
        if config.base_urls.is_empty() {
            return Err(LlmError::NoEndpoint);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .pool_max_idle_per_host(config.concurrency.max(1))
            .build()
            .map_err(|e| LlmError::Client(e.to_string()))?;
        let endpoints = config
            .base_urls
            .iter()
            .map(|u| Endpoint {
                url: format!("{}/chat/completions", u.trim_end_matches('/')),
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        Ok(LlmClient {
            permits: tokio::sync::Semaphore::new(config.concurrency.max(1)),
            config,
            http,
            endpoints,
            cache: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            stats: LlmStats::default(),
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    fn cache_key(&self, prompt: &Prompt) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [self.config.model.as_str(), &prompt.system, &prompt.user] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(prompt.max_tokens.unwrap_or(self.config.max_tokens).to_le_bytes());
        h.update(self.config.temperature.to_le_bytes());
        h.finalize().into()
    }

    /// The endpoint with the fewest requests in flight; ties go round-robin.
    fn pick(&self) -> &Endpoint {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.endpoints.len();
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .min_by_key(|e| e.in_flight.load(Ordering::Relaxed))
            .unwrap_or(&self.endpoints[0])
    }

    /// Sends the prompt (with retries) and returns the reply text, thinking stripped when configured. A reply
    /// for which `accept` is true is cached when caching is on; a cached reply is returned without a request.
    pub async fn complete(&self, prompt: &Prompt, accept: &(dyn Fn(&str) -> bool + Sync)) -> Result<String, LlmError> {
        let key = self.config.caches().then(|| self.cache_key(prompt));
        if let Some(key) = &key
            && let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(key).cloned())
        {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let mut body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "temperature": self.config.temperature,
            "max_tokens": prompt.max_tokens.unwrap_or(self.config.max_tokens),
        });
        if self.config.json_mode {
            body["response_format"] = json!({"type": "json_object"});
        }
        let message = self.request(&body).await?;
        // Servers with a reasoning parser put the thinking in its own field; the answer is `content`.
        let Some(text) = message["content"].as_str() else {
            return Err(LlmError::BadResponse("no choices[0].message.content".into()));
        };
        let text = if self.config.strip_think { strip_think(text) } else { text.to_string() };
        if let Some(key) = key
            && accept(&text)
            && let Ok(mut cache) = self.cache.lock()
        {
            cache.insert(key, text.clone());
        }
        Ok(text)
    }

    /// A chat completion with a full message list and optional tools (the agent side); returns the reply's
    /// `choices[0].message` object. Retries like `complete`; never cached.
    pub async fn chat(&self, messages: &[Value], tools: Option<&Value>) -> Result<Value, LlmError> {
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        });
        if let Some(tools) = tools {
            body["tools"] = tools.clone();
            body["tool_choice"] = json!("auto");
        }
        self.request(&body).await
    }

    /// Posts `body` with retries and exponential backoff; returns `choices[0].message`.
    async fn request(&self, body: &Value) -> Result<Value, LlmError> {
        let mut backoff = Duration::from_millis(self.config.backoff_ms);
        let mut last_error = LlmError::NoEndpoint;
        for attempt in 0..self.config.max_tries.max(1) {
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            match self.send_once(body).await {
                Ok(message) => return Ok(message),
                Err(e) if e.retryable() => {
                    tracing::debug!(attempt, error = %e, "LLM request failed, will retry");
                    last_error = e;
                }
                Err(e) => {
                    last_error = e;
                    break;
                }
            }
        }
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        Err(last_error)
    }

    async fn send_once(&self, body: &Value) -> Result<Value, LlmError> {
        let _permit = self.permits.acquire().await.map_err(|e| LlmError::Client(e.to_string()))?;
        let endpoint = self.pick();
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.post(endpoint, body).await;
        endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn post(&self, endpoint: &Endpoint, body: &Value) -> Result<Value, LlmError> {
        let mut request = self.http.post(&endpoint.url).json(body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let timeout = Duration::from_millis(self.config.timeout_ms.max(1));
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                LlmError::Timeout(self.config.timeout_ms)
            } else {
                LlmError::Transport { url: endpoint.url.clone(), message: e.to_string() }
            }
        };
        let exchange = async {
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            let text = response.text().await.map_err(transport)?;
            if !status.is_success() {
                return Err(LlmError::Status {
                    status: status.as_u16(),
                    url: endpoint.url.clone(),
                    body: text.chars().take(200).collect(),
                });
            }
            Ok(text)
        };
        let text =
            tokio::time::timeout(timeout, exchange).await.map_err(|_| LlmError::Timeout(self.config.timeout_ms))??;
        let mut value: Value = serde_json::from_str(&text)
            .map_err(|e| LlmError::BadResponse(format!("{e}: {}", text.chars().take(120).collect::<String>())))?;
        match value.pointer_mut("/choices/0/message") {
            Some(message) if message.is_object() => Ok(message.take()),
            _ => Err(LlmError::BadResponse("no choices[0].message".into())),
        }
    }
}

/// Removes `<think>…</think>` blocks; text before a lone `</think>` (a template that opened the block in the
/// prompt) goes too, and an unclosed `<think>` drops the rest.
pub fn strip_think(text: &str) -> String {
    let mut text = text;
    if let (Some(close), None) = (text.find("</think>"), text.find("<think>")) {
        text = &text[close + "</think>".len()..];
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("<think>") {
        out.push_str(&rest[..open]);
        match rest[open..].find("</think>") {
            Some(close) => rest = &rest[open + close + "</think>".len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// Finds a JSON object in model text: the whole text, a fenced block, or the outermost `{…}`; then retries
/// with Python-literal spellings (single quotes, True/False/None) that models sometimes write.
pub fn extract_json(text: &str) -> Option<Value> {
    let text = text.trim();
    let mut candidates: Vec<&str> = vec![text];
    if let Some(start) = text.find("```") {
        let after = &text[start + 3..];
        let after = after.strip_prefix("json").unwrap_or(after);
        if let Some(end) = after.find("```") {
            candidates.push(after[..end].trim());
        }
    }
    if let (Some(open), Some(close)) = (text.find('{'), text.rfind('}'))
        && open < close
    {
        candidates.push(&text[open..=close]);
    }
    for candidate in &candidates {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(candidate) {
            return Some(v);
        }
    }
    for candidate in &candidates {
        let repaired = python_literal_to_json(candidate);
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&repaired) {
            return Some(v);
        }
    }
    None
}

fn python_literal_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "True" => "true",
            "False" => "false",
            "None" => "null",
            w => w,
        });
        word.clear();
    };
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        if next == '\'' {
                            out.push('\'');
                        } else {
                            out.push('\\');
                            out.push(next);
                        }
                    }
                }
                c if c == q => {
                    out.push('"');
                    quote = None;
                }
                '"' => out.push_str("\\\""),
                c => out.push(c),
            },
            None => {
                if c.is_alphanumeric() || c == '_' {
                    word.push(c);
                    continue;
                }
                flush(&mut word, &mut out);
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    out.push('"');
                } else {
                    out.push(c);
                }
            }
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A gym's user played by an LLM.
pub struct LlmUser {
    client: Arc<LlmClient>,
}

impl LlmUser {
    pub fn new(client: Arc<LlmClient>) -> LlmUser {
        LlmUser { client }
    }
    pub fn client(&self) -> &Arc<LlmClient> {
        &self.client
    }
}

#[async_trait::async_trait]
impl User for LlmUser {
    fn kind(&self) -> UserKind {
        UserKind::Llm
    }

    async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
        let prompt = query.prompt();
        let accept = |text: &str| query.parse_llm(text).is_some();
        match self.client.complete(&prompt, &accept).await {
            Ok(text) => match query.parse_llm(&text) {
                Some(reply) => Ok(reply),
                None => {
                    tracing::warn!(reply = %text.chars().take(200).collect::<String>(), "LLM user reply not understood; using the fallback");
                    Ok(query.fallback())
                }
            },
            Err(error) => {
                tracing::warn!(%error, "LLM user failed; using the fallback");
                Ok(query.fallback())
            }
        }
    }
}

/// An agent played by any OpenAI-compatible chat model calling the tool (GPT-4o, a vLLM-served Qwen3…), as
/// the paper's evaluation does: the first tool call of each reply is used, a reply without one ends the
/// episode, and a server's separate reasoning field is put back as `<think>…</think>` in the history.
pub struct LlmAgent {
    client: Arc<LlmClient>,
}

impl LlmAgent {
    pub fn new(client: Arc<LlmClient>) -> LlmAgent {
        LlmAgent { client }
    }
}

/// The conversation in the OpenAI messages format; each call gets an id that its tool response refers to.
pub fn openai_messages(conversation: &[crate::agent::Message]) -> Vec<Value> {
    use crate::agent::Role;
    let mut out = Vec::with_capacity(conversation.len());
    let mut pending_call: Option<String> = None;
    for (i, m) in conversation.iter().enumerate() {
        match (m.role, &m.call) {
            (Role::System, _) => out.push(json!({"role": "system", "content": m.content})),
            (Role::User, _) => out.push(json!({"role": "user", "content": m.content})),
            (Role::Assistant, Some((choice, content))) => {
                let id = format!("call_{i}");
                let arguments = json!({"choice": choice.name(), "content": content}).to_string();
                out.push(json!({
                    "role": "assistant",
                    "content": m.content,
                    "tool_calls": [{"id": id, "type": "function", "function": {"name": crate::tool::TOOL_NAME, "arguments": arguments}}],
                }));
                pending_call = Some(id);
            }
            (Role::Assistant, None) => out.push(json!({"role": "assistant", "content": m.content})),
            (Role::Tool, _) => match pending_call.take() {
                Some(id) => out.push(json!({"role": "tool", "tool_call_id": id, "content": m.content})),
                // The answer to a call that could not be read: shown as the environment's message.
                None => out.push(json!({"role": "user", "content": m.content})),
            },
        }
    }
    out
}

/// Reads an assistant message (OpenAI format) as an agent turn.
pub fn agent_turn_from_message(message: &Value) -> crate::agent::AgentTurn {
    use crate::agent::AgentTurn;
    use crate::tool::{TOOL_NAME, ToolError};
    let content = message["content"].as_str().unwrap_or_default();
    let thought = match message["reasoning_content"].as_str().or_else(|| message["reasoning"].as_str()) {
        Some(reasoning) if !reasoning.is_empty() => format!("<think>{reasoning}</think>\n{content}"),
        _ => content.to_string(),
    };
    let call = message["tool_calls"].as_array().and_then(|calls| calls.first()).map(|c| {
        let name = c["function"]["name"].as_str().unwrap_or_default().to_string();
        let arguments = match &c["function"]["arguments"] {
            Value::String(text) => {
                serde_json::from_str::<Value>(text).map_err(|e| ToolError::InvalidJson(e.to_string()))
            }
            other => Ok(other.clone()),
        };
        (name, arguments)
    });
    // Servers without a tool parser leave Hermes blocks in the text.
    let call =
        call.or_else(|| crate::tool::parse_hermes(content).calls.into_iter().next().map(|c| (c.name, Ok(c.arguments))));
    match call {
        Some((name, _)) if name != TOOL_NAME => {
            AgentTurn::Invalid { thought, error: ToolError::UnknownTool(name.chars().take(60).collect()) }
        }
        Some((_, Ok(arguments))) => AgentTurn::Call { thought, arguments },
        Some((_, Err(error))) => AgentTurn::Invalid { thought, error },
        None => AgentTurn::Text(thought),
    }
}

#[async_trait::async_trait]
impl crate::agent::Agent for LlmAgent {
    async fn act(&mut self, conversation: &[crate::agent::Message]) -> crate::agent::AgentTurn {
        let messages = openai_messages(conversation);
        match self.client.chat(&messages, Some(&json!([crate::tool::schema()]))).await {
            Ok(message) => agent_turn_from_message(&message),
            Err(error) => crate::agent::AgentTurn::Failed(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_blocks_are_stripped() {
        assert_eq!(strip_think("<think>secret</think>\nYes"), "Yes");
        assert_eq!(strip_think("reasoning</think> No"), "No");
        assert_eq!(strip_think("a<think>x</think>b<think>y</think>c"), "abc");
        assert_eq!(strip_think("ok <think>never closed"), "ok");
    }

    #[test]
    fn json_is_found_in_messy_text() {
        assert_eq!(extract_json("{\"a\": 1}").unwrap()["a"], 1);
        assert_eq!(extract_json("```json\n{\"a\": 2}\n```").unwrap()["a"], 2);
        assert_eq!(extract_json("Sure! Here it is: {\"a\": 3} hope that helps").unwrap()["a"], 3);
        let v = extract_json("{'thought': 'it\\'s fine', 'ok': True, 'x': None}").unwrap();
        assert_eq!(v["thought"], "it's fine");
        assert_eq!(v["ok"], true);
        assert!(v["x"].is_null());
        assert!(extract_json("no json here").is_none());
        assert!(extract_json("[1, 2]").is_none());
    }

    use crate::testserver::{self, Behavior};
    use std::time::Instant;

    fn config(urls: Vec<String>) -> LlmConfig {
        LlmConfig { base_urls: urls, timeout_ms: 2_000, backoff_ms: 10, ..LlmConfig::default() }
    }

    fn any(_: &str) -> bool {
        true
    }

    #[tokio::test]
    async fn retries_5xx_and_429_then_succeeds() {
        let server = testserver::start(Arc::new(|i, _| match i {
            0 => Behavior::Status(503),
            1 => Behavior::Status(429),
            _ => Behavior::Reply("fine".into()),
        }))
        .await
        .unwrap();
        let client = LlmClient::new(config(vec![server.base_url.clone()])).unwrap();
        assert_eq!(client.complete(&Prompt::new("s", "u"), &any).await.unwrap(), "fine");
        assert_eq!(server.received(), 3);
        assert_eq!(client.stats.retries.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let server = testserver::start(Arc::new(|_, _| Behavior::Status(400))).await.unwrap();
        let client = LlmClient::new(config(vec![server.base_url.clone()])).unwrap();
        let err = client.complete(&Prompt::new("s", "u"), &any).await.unwrap_err();
        assert!(matches!(err, LlmError::Status { status: 400, .. }), "{err}");
        assert_eq!(server.received(), 1);
    }

    #[tokio::test]
    async fn slow_endpoint_times_out_within_budget() {
        let server = testserver::start(Arc::new(|_, _| {
            Behavior::Delay(Duration::from_secs(5), Box::new(Behavior::Reply("late".into())))
        }))
        .await
        .unwrap();
        let cfg = LlmConfig { timeout_ms: 150, max_tries: 2, ..config(vec![server.base_url.clone()]) };
        let client = LlmClient::new(cfg).unwrap();
        let start = Instant::now();
        let err = client.complete(&Prompt::new("s", "u"), &any).await.unwrap_err();
        assert!(matches!(err, LlmError::Timeout(150)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
        assert_eq!(server.received(), 2);
    }

    #[tokio::test]
    async fn dead_endpoint_and_garbage_are_errors() {
        // A port nobody listens on: bind, read the port, drop the listener.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = LlmConfig { max_tries: 2, ..config(vec![format!("http://127.0.0.1:{port}/v1")]) };
        let client = LlmClient::new(cfg).unwrap();
        assert!(matches!(client.complete(&Prompt::new("s", "u"), &any).await, Err(LlmError::Transport { .. })));
        let server = testserver::start(Arc::new(|_, _| Behavior::Garbage)).await.unwrap();
        let client = LlmClient::new(config(vec![server.base_url.clone()])).unwrap();
        assert!(matches!(client.complete(&Prompt::new("s", "u"), &any).await, Err(LlmError::BadResponse(_))));
        assert!(matches!(LlmClient::new(LlmConfig::default()), Err(LlmError::NoEndpoint)));
    }

    #[tokio::test]
    async fn thinking_is_stripped_and_replies_cached_at_temperature_zero() {
        let server =
            testserver::start(testserver::always("<think>let me see</think>\n{\"response\": \"Yes\"}")).await.unwrap();
        let client = LlmClient::new(config(vec![server.base_url.clone()])).unwrap();
        let prompt = Prompt::new("judge", "is it?");
        assert_eq!(client.complete(&prompt, &any).await.unwrap(), "{\"response\": \"Yes\"}");
        assert_eq!(client.complete(&prompt, &any).await.unwrap(), "{\"response\": \"Yes\"}");
        assert_eq!(server.received(), 1);
        assert_eq!(client.stats.cache_hits.load(Ordering::Relaxed), 1);
        // A reply the caller rejects is not cached; sampling temperatures do not cache at all.
        let reject = |_: &str| false;
        let other = Prompt::new("judge", "another");
        client.complete(&other, &reject).await.unwrap();
        client.complete(&other, &reject).await.unwrap();
        assert_eq!(server.received(), 3);
        let hot = LlmClient::new(LlmConfig { temperature: 0.7, ..config(vec![server.base_url.clone()]) }).unwrap();
        hot.complete(&prompt, &any).await.unwrap();
        hot.complete(&prompt, &any).await.unwrap();
        assert_eq!(server.received(), 5);
    }

    #[tokio::test]
    async fn endpoints_are_balanced_and_concurrency_is_limited() {
        let slow = || {
            Arc::new(|_: usize, _: &Value| {
                Behavior::Delay(Duration::from_millis(40), Box::new(Behavior::Reply("ok".into())))
            })
        };
        let a = testserver::start(slow()).await.unwrap();
        let b = testserver::start(slow()).await.unwrap();
        let cfg =
            LlmConfig { concurrency: 6, cache: Some(false), ..config(vec![a.base_url.clone(), b.base_url.clone()]) };
        let client = Arc::new(LlmClient::new(cfg).unwrap());
        let jobs: Vec<_> = (0..40)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { client.complete(&Prompt::new("s", format!("q{i}")), &any).await })
            })
            .collect();
        for job in jobs {
            assert_eq!(job.await.unwrap().unwrap(), "ok");
        }
        assert_eq!(a.received() + b.received(), 40);
        assert!(a.received() >= 14 && b.received() >= 14, "unbalanced: {} vs {}", a.received(), b.received());
        assert!(a.max_in_flight() + b.max_in_flight() <= 6 + 1, "limit exceeded");
        assert!(a.max_in_flight() <= 6 && b.max_in_flight() <= 6);
    }

    /// Runs against a real OpenAI-compatible endpoint when `USERRL_TEST_LLM_URL` is set (and
    /// `USERRL_TEST_LLM_MODEL`, optionally `USERRL_LLM_API_KEY`); without it there is nothing to reach.
    #[tokio::test]
    async fn real_endpoint_when_configured() {
        let Ok(url) = std::env::var("USERRL_TEST_LLM_URL") else {
            eprintln!("USERRL_TEST_LLM_URL not set: real-endpoint check not run");
            return;
        };
        let model = std::env::var("USERRL_TEST_LLM_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
        let cfg = LlmConfig { base_urls: vec![url], model, timeout_ms: 60_000, ..LlmConfig::default() }.with_env();
        let client = LlmClient::new(cfg).unwrap();
        let text = client
            .complete(&Prompt::new("Answer with a JSON object {\"response\": \"Yes\"} and nothing else.", "Go."), &any)
            .await
            .unwrap();
        assert_eq!(extract_json(&text).unwrap()["response"], "Yes");
    }

    /// The whole LLM-user path on a real gym: prompt -> local server -> think stripping -> fenced JSON ->
    /// typed reply -> the gym's reward rule; then a dead endpoint and garbage give the gym's fallback in time.
    #[tokio::test]
    async fn llm_user_drives_a_gym_and_falls_back() {
        use crate::env::{EnvConfig, Episode};
        use crate::gyms::{Catalog, GymKind};
        use crate::split::Split;
        use crate::tool::Action;

        let catalog = Catalog::builtin(&[GymKind::Telepathy]).unwrap();
        let gym = catalog.get(GymKind::Telepathy).unwrap().clone();
        let task = gym.task_ids(Some(Split::Test))[0].clone();
        let title = gym.export_tasks().into_iter().find(|t| t["id"] == task.as_str()).unwrap()["title"]
            .as_str()
            .unwrap()
            .to_string();
        let server = testserver::start(Arc::new(|i, _| match i {
            0 => Behavior::Reply(
                "<think>The entity is a person.</think>\n```json\n{\"thought\": \"yes\", \"response\": \"Yes\"}\n```"
                    .into(),
            ),
            _ => Behavior::Reply(
                "Sure: {\"thought\": \"same\", \"judgment\": \"Yes\", \"feedback\": \"Correct.\"}".into(),
            ),
        }))
        .await
        .unwrap();
        let user = Arc::new(LlmUser::new(Arc::new(LlmClient::new(config(vec![server.base_url.clone()])).unwrap())));
        let env_config = EnvConfig::default();
        let mut episode = Episode::new(gym.new_env(&task, &env_config, user).unwrap(), env_config.clone());
        let out = episode.step(Ok(Action::Action("Is it a person?".into()))).await;
        assert_eq!((out.feedback.as_str(), out.reward), ("Yes", 0.0));
        let out = episode.step(Ok(Action::Answer(title))).await;
        assert_eq!((out.reward, out.terminated), (1.0, true));

        // A dead endpoint: the fallback reply, within the tries' timeouts.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dead = LlmConfig { max_tries: 2, timeout_ms: 300, ..config_for(format!("http://127.0.0.1:{port}/v1")) };
        let user = Arc::new(LlmUser::new(Arc::new(LlmClient::new(dead).unwrap())));
        let mut episode = Episode::new(gym.new_env(&task, &env_config, user).unwrap(), env_config.clone());
        let start = Instant::now();
        let out = episode.step(Ok(Action::Action("Is it alive?".into()))).await;
        assert_eq!((out.feedback.as_str(), out.reward), ("Unable to respond to your question right now.", 0.0));
        assert!(start.elapsed() < Duration::from_secs(2));

        // Garbage and unparseable replies: the fallback too.
        for script in [Behavior::Garbage, Behavior::Reply("I refuse to answer in JSON.".into())] {
            let server = testserver::start(Arc::new(move |_, _| script.clone())).await.unwrap();
            let user = Arc::new(LlmUser::new(Arc::new(LlmClient::new(config(vec![server.base_url.clone()])).unwrap())));
            let mut episode = Episode::new(gym.new_env(&task, &env_config, user).unwrap(), env_config.clone());
            let out = episode.step(Ok(Action::Answer("Nobody".into()))).await;
            assert_eq!((out.feedback.as_str(), out.reward), ("Unable to evaluate your guess right now.", 0.0));
        }
    }

    fn config_for(url: String) -> LlmConfig {
        config(vec![url])
    }

    #[test]
    fn assistant_messages_become_turns() {
        use crate::agent::AgentTurn;
        let call = |args: Value| json!({"content": "", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "interact_with_env", "arguments": args}}]});
        let turn = agent_turn_from_message(&call(json!("{\"choice\": \"answer\", \"content\": \"7\"}")));
        assert!(matches!(turn, AgentTurn::Call { ref arguments, .. } if arguments["content"] == "7"));
        assert!(matches!(agent_turn_from_message(&call(json!("{oops"))), AgentTurn::Invalid { .. }));
        let wrong = json!({"content": "", "tool_calls": [{"function": {"name": "search_web", "arguments": "{}"}}]});
        assert!(matches!(
            agent_turn_from_message(&wrong),
            AgentTurn::Invalid { error: crate::tool::ToolError::UnknownTool(_), .. }
        ));
        let hermes = json!({"content": "<tool_call>{\"name\": \"interact_with_env\", \"arguments\": {\"choice\": \"search\", \"content\": \"test\"}}</tool_call>"});
        assert!(matches!(agent_turn_from_message(&hermes), AgentTurn::Call { .. }));
        let thinking = json!({"content": "done", "reasoning_content": "hmm"});
        assert_eq!(agent_turn_from_message(&thinking), AgentTurn::Text("<think>hmm</think>\ndone".into()));
    }

    /// An OpenAI-compatible model as the agent, end to end on FunctionGym against the local test server: the
    /// request carries the tool and the history with call ids; the reply's call drives the gym.
    #[tokio::test]
    async fn llm_agent_plays_through_the_tool() {
        use crate::agent::Agent;
        use crate::env::EnvConfig;
        use crate::eval::run_episode;
        use crate::gyms::{Catalog, GymKind};
        use crate::user::ScriptedUser;
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let gym = catalog.get(GymKind::Function).unwrap().clone();
        let task = gym.task_ids(None)[0].clone();
        let expected = gym.export_tasks()[0]["expected"].as_f64().unwrap();
        let server = testserver::start(Arc::new(move |i, body: &Value| {
            assert_eq!(body["tools"][0]["function"]["name"], "interact_with_env");
            let last = body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
            if i > 0 {
                assert_eq!(last["role"], "tool");
                assert_eq!(last["tool_call_id"], format!("call_{}", 2 * i));
            }
            let (choice, content) = match i {
                0 => ("search", "test".to_string()),
                _ => ("answer", expected.to_string()),
            };
            Behavior::Reply(format!(
                "<tool_call>{{\"name\": \"interact_with_env\", \"arguments\": {{\"choice\": \"{choice}\", \"content\": \"{content}\"}}}}</tool_call>"
            ))
        }))
        .await
        .unwrap();
        let mut agent = LlmAgent::new(Arc::new(LlmClient::new(config(vec![server.base_url.clone()])).unwrap()));
        let t = run_episode(
            gym.as_ref(),
            &task,
            &mut agent as &mut dyn Agent,
            Arc::new(ScriptedUser),
            &EnvConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!((t.score, t.turns.len()), (1.0, 2));
    }
}
