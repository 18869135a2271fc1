//! What the web app asks of the server for people in the loop, as traits in `AppContext` (implemented by the
//! server crate, like `RunLauncher`): [`LiveEpisodes`] runs gym episodes where our policy model is the agent and
//! a person in the browser is the user; [`ChatHost`] lists and loads models and streams chat replies from the
//! /v1 generation path. Also the two SSE routes that push an episode's state and a chat reply's tokens.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use userrl_types::chat::{ChatEvent, ChatRequest, ModelChoice};
use userrl_types::human::{EpisodeSpec, EpisodeState, GymTasks, HumanAnswer, Shown};

use crate::server::AppContext;

/// Why an episode request was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum EpisodeError {
    #[error("no live episode `{0}` (it ended long ago or never existed)")]
    NotFound(String),
    /// A bad spec or an answer that does not fit the open prompt (the prompt stays open).
    #[error("{0}")]
    Invalid(String),
    /// The prompt is not the open one: already answered, expired or never asked. Nothing is replayed.
    #[error("prompt {0} is not open (already answered, expired, or never asked)")]
    NotOpen(u64),
    /// The server cannot start one now (too many live episodes, the model is not served).
    #[error("{0}")]
    Unavailable(String),
}

/// Live episodes with a person as the user. Ids are unguessable: holding one is what lets a browser answer.
///
/// For other features (crowd studies): `start` with an `EpisodeSpec` (its `origin` is stored with the
/// episode, e.g. `study:<slug>`), show it with `pages::episode::HumanEpisodeView`, and read the outcome
/// (`EpisodeState::outcome`, with `stored_id` = the `Store::episode` row once written) from `state`/`watch`.
#[async_trait::async_trait]
pub trait LiveEpisodes: Send + Sync {
    /// The gyms and their tasks.
    fn gyms(&self) -> Vec<GymTasks>;
    /// What the person will play in a task (shown before it starts).
    fn briefing(&self, gym: &str, task_id: &str) -> Result<Vec<Shown>, EpisodeError>;
    /// Starts an episode; the agent begins its first turn at once.
    async fn start(&self, spec: EpisodeSpec) -> Result<EpisodeState, EpisodeError>;
    /// The current state; `None` for an unknown id (or one forgotten a while after it ended).
    fn state(&self, id: &str) -> Option<EpisodeState>;
    /// Every change of the state (a slow reader sees the latest); `None` for an unknown id.
    fn watch(&self, id: &str) -> Option<tokio::sync::watch::Receiver<EpisodeState>>;
    /// Answers the open prompt `prompt_id`. Accepted once; a bad answer is refused and the prompt stays open.
    fn answer(&self, id: &str, prompt_id: u64, answer: &HumanAnswer) -> Result<EpisodeState, EpisodeError>;
    /// The person leaves: the episode ends as `abandoned` (and is stored).
    fn abandon(&self, id: &str) -> Result<(), EpisodeError>;
}

/// The chat page's server side: models and streamed replies on the same engines as /v1.
#[async_trait::async_trait]
pub trait ChatHost: Send + Sync {
    /// The models served on /v1, then the runs' checkpoints (loaded or not).
    async fn models(&self) -> Vec<ModelChoice>;
    /// Loads checkpoint `checkpoint_id` of run `run_id` into /v1 (a no-op when it is served already) and returns
    /// its model name.
    async fn load_checkpoint(&self, run_id: i64, checkpoint_id: i64) -> Result<String, String>;
    /// Starts a reply: generation begins at once; dropping the stream stops it.
    fn chat(&self, request: ChatRequest) -> Result<BoxStream<'static, ChatEvent>, String>;
}

/// How long a started chat reply waits for its browser to connect before it is dropped (and stops).
const PARKED_FOR: Duration = Duration::from_secs(30);

type Parked = HashMap<String, (Instant, BoxStream<'static, ChatEvent>)>;

/// Replies started by `chat_start` and not yet picked up by their SSE request.
fn parked() -> &'static Mutex<Parked> {
    static PARKED: OnceLock<Mutex<Parked>> = OnceLock::new();
    PARKED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A random 128-bit id in hex (the OS generator through std's hasher keys, mixed with the time and a counter).
pub fn random_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let word = || {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    };
    format!("{:016x}{:016x}", word(), word())
}

/// Keeps a started reply until its SSE request takes it; returns its id.
pub fn park_chat(stream: BoxStream<'static, ChatEvent>) -> String {
    let id = random_id();
    let mut map = parked().lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, (at, _)| at.elapsed() < PARKED_FOR);
    map.insert(id.clone(), (Instant::now(), stream));
    id
}

fn json_event<T: Serialize>(value: &T) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

/// `GET /api/chat/{id}/stream`: the reply `chat_start` began, one JSON `ChatEvent` per message. Closing the
/// connection stops the generation.
pub async fn chat_stream(UrlPath(id): UrlPath<String>) -> Response {
    let taken = parked().lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    match taken {
        Some((_, stream)) => {
            let events = stream.map(|e| Ok::<_, Infallible>(json_event(&e)));
            Sse::new(events).keep_alive(KeepAlive::default()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such reply (it was taken already or expired)").into_response(),
    }
}

/// `GET /api/episodes/{id}/events`: the episode's state as JSON on every change (tokens included), ending after
/// the final state.
pub async fn episode_events(State(ctx): State<AppContext>, UrlPath(id): UrlPath<String>) -> Response {
    match ctx.episodes.watch(&id) {
        Some(rx) => Sse::new(state_stream(rx)).keep_alive(KeepAlive::default()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no live episode `{id}`")).into_response(),
    }
}

fn state_stream(
    rx: tokio::sync::watch::Receiver<EpisodeState>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    futures::stream::unfold((rx, true, false), |(mut rx, first, over)| async move {
        if over {
            return None;
        }
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let state = rx.borrow_and_update().clone();
        let done = state.outcome.as_ref().is_some_and(|o| o.stored_id.is_some() || o.error.is_some());
        Some((Ok(json_event(&state)), (rx, false, done)))
    })
}

/// For processes that serve the pages without models or gyms (benchmarks, page tests): every episode and chat
/// request is refused with a clear message; the model list is empty.
pub struct Disabled;

const DISABLED: &str = "live episodes and chat are not available in this process";

#[async_trait::async_trait]
impl LiveEpisodes for Disabled {
    fn gyms(&self) -> Vec<GymTasks> {
        Vec::new()
    }
    fn briefing(&self, _gym: &str, _task_id: &str) -> Result<Vec<Shown>, EpisodeError> {
        Err(EpisodeError::Unavailable(DISABLED.into()))
    }
    async fn start(&self, _spec: EpisodeSpec) -> Result<EpisodeState, EpisodeError> {
        Err(EpisodeError::Unavailable(DISABLED.into()))
    }
    fn state(&self, _id: &str) -> Option<EpisodeState> {
        None
    }
    fn watch(&self, _id: &str) -> Option<tokio::sync::watch::Receiver<EpisodeState>> {
        None
    }
    fn answer(&self, id: &str, _prompt_id: u64, _answer: &HumanAnswer) -> Result<EpisodeState, EpisodeError> {
        Err(EpisodeError::NotFound(id.to_string()))
    }
    fn abandon(&self, id: &str) -> Result<(), EpisodeError> {
        Err(EpisodeError::NotFound(id.to_string()))
    }
}

#[async_trait::async_trait]
impl ChatHost for Disabled {
    async fn models(&self) -> Vec<ModelChoice> {
        Vec::new()
    }
    async fn load_checkpoint(&self, _run_id: i64, _checkpoint_id: i64) -> Result<String, String> {
        Err(DISABLED.into())
    }
    fn chat(&self, _request: ChatRequest) -> Result<BoxStream<'static, ChatEvent>, String> {
        Err(DISABLED.into())
    }
}
