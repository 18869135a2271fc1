//! A local OpenAI-compatible chat server whose every answer is scripted: for the LLM-user tests (retries,
//! timeouts, garbage, `<think>` blocks, balancing, concurrency limits) and for `userrl bench llm`, which
//! measures the latency our client adds. It is a test double at the network boundary, never a product path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// A normal completion whose message content is this text.
    Reply(String),
    /// An HTTP error status with a short body.
    Status(u16),
    /// A 200 response whose body is not JSON.
    Garbage,
    /// Waits, then behaves as the inner behaviour.
    Delay(Duration, Box<Behavior>),
}

/// Decides the behaviour from the request's index (0-based, in arrival order) and its JSON body.
pub type Script = Arc<dyn Fn(usize, &Value) -> Behavior + Send + Sync>;

struct Shared {
    script: Script,
    received: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A running server. It stops when the runtime that started it shuts down.
pub struct MockLlm {
    /// The base URL to give the client (ends in `/v1`).
    pub base_url: String,
    shared: Arc<Shared>,
}

impl MockLlm {
    /// Requests received so far.
    pub fn received(&self) -> usize {
        self.shared.received.load(Ordering::SeqCst)
    }
    /// The most requests that were being handled at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Starts a server on a free local port.
pub async fn start(script: Script) -> std::io::Result<MockLlm> {
    let shared = Arc::new(Shared {
        script,
        received: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    });
    let app = axum::Router::new().route("/v1/chat/completions", post(handle)).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "mock LLM server stopped");
        }
    });
    Ok(MockLlm { base_url: format!("http://{addr}/v1"), shared })
}

/// Starts a server on its own runtime, so that its work is not scheduled among the
/// client's tasks (the benchmark measures the client). The server lives until the process exits.
pub fn start_detached(script: Script) -> std::io::Result<MockLlm> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("mock-llm".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = sender.send(Err(e));
                return;
            }
        };
        runtime.block_on(async move {
            let started = start(script).await;
            let ok = started.is_ok();
            let _ = sender.send(started);
            if ok {
                std::future::pending::<()>().await;
            }
        });
    })?;
    receiver.recv().map_err(std::io::Error::other)?
}

/// A script that answers every request with `text`.
pub fn always(text: &str) -> Script {
    let text = text.to_string();
    Arc::new(move |_, _| Behavior::Reply(text.clone()))
}

async fn handle(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let index = shared.received.fetch_add(1, Ordering::SeqCst);
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let mut behavior = (shared.script)(index, &body);
    while let Behavior::Delay(wait, inner) = behavior {
        tokio::time::sleep(wait).await;
        behavior = *inner;
    }
    let response = match behavior {
        Behavior::Reply(text) => Json(json!({
            "id": format!("mock-{index}"),
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        }))
        .into_response(),
        Behavior::Status(code) => {
            (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "scripted failure")
                .into_response()
        }
        Behavior::Garbage => (StatusCode::OK, "<html>not json</html>").into_response(),
        Behavior::Delay(..) => (StatusCode::INTERNAL_SERVER_ERROR, "unreachable").into_response(),
    };
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}
