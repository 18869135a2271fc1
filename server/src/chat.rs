//! The chat page's server side ([`ChatHost`]): the models it offers (served on /v1, and the runs' checkpoints,
//! which it loads into /v1 on request) and its streamed replies, built as an OpenAI request and answered by the
//! /v1 generation path (`openai::start_reply` / `openai::pieces`), so the page and the API behave alike. The
//! browser never holds the API key: the page talks to the web app, which calls the engine in-process.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use userrl_app::ChatHost;
use userrl_store::Store;
use userrl_types::chat::{ChatEvent, ChatRequest, MAX_CHAT_CHARS, MAX_CHAT_MESSAGES, ModelChoice};

use crate::episodes::call_view;
use crate::openai::{OpenAiState, Piece, pieces, start_reply};

/// Most runs whose checkpoints the model list shows (the newest).
const LISTED_RUNS: usize = 50;

/// The chat page's models and replies over the /v1 models.
#[derive(Clone)]
pub struct Chat {
    openai: OpenAiState,
    store: Store,
    /// Most checkpoints loaded from the UI at once (each holds a whole model in memory).
    max_loaded: usize,
    /// Serialises loads, so two clicks on one checkpoint load it once.
    loading: Arc<tokio::sync::Mutex<()>>,
}

impl Chat {
    pub fn new(openai: OpenAiState, store: Store, max_loaded: usize) -> Chat {
        Chat { openai, store, max_loaded, loading: Arc::new(tokio::sync::Mutex::new(())) }
    }
}

/// The /v1 name a run's checkpoint is served under.
pub fn checkpoint_model_name(run_id: i64, step: i64) -> String {
    format!("run{run_id}-step{step}")
}

/// The chat as an OpenAI request body (tool calls as the assistant's `tool_calls`; the gym tool when asked).
fn wire_body(request: &ChatRequest) -> Result<Value, String> {
    if request.messages.is_empty() {
        return Err("the chat has no messages".into());
    }
    if request.messages.len() > MAX_CHAT_MESSAGES {
        return Err(format!("a chat may hold at most {MAX_CHAT_MESSAGES} messages; reset it"));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(format!("message {i}: unknown role `{}`", m.role));
        }
        let chars = m.content.chars().count();
        if chars > MAX_CHAT_CHARS {
            return Err(format!("message {i} is {chars} characters long; at most {MAX_CHAT_CHARS} are allowed"));
        }
        let mut wire = json!({"role": m.role, "content": m.content});
        if !m.tool_calls.is_empty() {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    json!({"id": format!("call_{i}_{k}"), "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            wire["tool_calls"] = Value::Array(calls);
        }
        messages.push(wire);
    }
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "stream": true,
    });
    if request.tools {
        body["tools"] = json!([userrl_gym::tool::schema()]);
    }
    Ok(body)
}

#[async_trait::async_trait]
impl ChatHost for Chat {
    async fn models(&self) -> Vec<ModelChoice> {
        let mut out: Vec<ModelChoice> = self
            .openai
            .model_names()
            .into_iter()
            .filter_map(|name| self.openai.model(&name))
            .map(|m| ModelChoice {
                name: m.name.clone(),
                source: m.source.clone(),
                loaded: true,
                run_id: None,
                checkpoint_id: None,
                step: None,
            })
            .collect();
        let runs = match self.store.runs().await {
            Ok(runs) => runs,
            Err(e) => {
                tracing::warn!(error = %e, "listing runs for the chat page");
                return out;
            }
        };
        for run in runs.iter().take(LISTED_RUNS) {
            let Ok(checkpoints) = self.store.checkpoints(run.id).await else { continue };
            for c in checkpoints {
                let name = checkpoint_model_name(run.id, c.step);
                if let Some(served) = out.iter_mut().find(|m| m.name == name) {
                    (served.run_id, served.checkpoint_id, served.step) = (Some(run.id), Some(c.id), Some(c.step));
                    continue;
                }
                out.push(ModelChoice {
                    name,
                    source: c.path.clone(),
                    loaded: false,
                    run_id: Some(run.id),
                    checkpoint_id: Some(c.id),
                    step: Some(c.step),
                });
            }
        }
        out
    }

    async fn load_checkpoint(&self, run_id: i64, checkpoint_id: i64) -> Result<String, String> {
        let checkpoints = self.store.checkpoints(run_id).await.map_err(|e| e.to_string())?;
        let row = checkpoints
            .into_iter()
            .find(|c| c.id == checkpoint_id)
            .ok_or_else(|| format!("run {run_id} has no checkpoint {checkpoint_id}"))?;
        let name = checkpoint_model_name(run_id, row.step);
        let _one_at_a_time = self.loading.lock().await;
        if self.openai.model(&name).is_some() {
            return Ok(name);
        }
        let loaded = self.openai.model_names().iter().filter(|n| n.starts_with("run") && n.contains("-step")).count();
        if loaded >= self.max_loaded {
            return Err(format!(
                "{loaded} checkpoints are loaded already (the limit is {}); restart the server to free them",
                self.max_loaded
            ));
        }
        let (openai, path, model_name) = (self.openai.clone(), std::path::PathBuf::from(&row.path), name.clone());
        tokio::task::spawn_blocking(move || openai.add_model(&model_name, &path))
            .await
            .map_err(|e| format!("loading failed: {e}"))?
            .map_err(|e| format!("{e:#}"))?;
        tracing::info!(model = %name, path = %row.path, "checkpoint loaded for /v1 and the chat page");
        Ok(name)
    }

    fn chat(&self, request: ChatRequest) -> Result<BoxStream<'static, ChatEvent>, String> {
        let body = wire_body(&request)?;
        let reply = start_reply(&self.openai, body.to_string().as_bytes()).map_err(|e| e.message.clone())?;
        let events = pieces(reply).map(|piece| match piece {
            Piece::Content(text) => ChatEvent::Delta { text },
            Piece::Calls(calls) => ChatEvent::ToolCalls {
                calls: calls
                    .iter()
                    .map(|(name, arguments)| {
                        let parsed = serde_json::from_str(arguments).unwrap_or(Value::String(arguments.clone()));
                        call_view(name, &parsed)
                    })
                    .collect(),
            },
            Piece::Finish { reason, completion_tokens, .. } => {
                ChatEvent::Done { finish_reason: reason.to_string(), completion_tokens }
            }
            Piece::Failed(e) => ChatEvent::Error { message: e.message.clone() },
        });
        Ok(events.boxed())
    }
}
