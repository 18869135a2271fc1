//! Live episodes end to end: a scripted person answers through the web app's HTTP API (server functions and
//! the SSE state stream) and drives a real TelepathyGym episode, played by a real engine, to the gym's reward;
//! a replayed or malformed answer is refused; an unanswered question abandons the episode; the chat stream
//! answers through the /v1 generation path.
//!
//! The agent is a one-layer model wired as a bigram table (attention and MLP outputs zeroed, one-hot
//! embeddings, a hand-set LM head) over a byte tokenizer with one extra token holding a whole tool call: after
//! the assistant header's newline it greedily emits that call, then `<|im_end|>`. So every turn makes the same
//! guess and the test knows exactly what the person is asked.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value as Json, json};
use tower::ServiceExt;
use userrl_nn::checkpoint::random_model;
use userrl_nn::model::{Llama, LlamaConfig};
use userrl_nn::tokenizer::Tokenizer;

use super::*;

const GUESS: &str = "a tiger";
const MODEL: &str = "scripted";

fn call_text() -> String {
    format!(
        "<tool_call>\n{{\"name\": \"interact_with_env\", \"arguments\": {{\"choice\": \"answer\", \"content\": \"{GUESS}\"}}}}\n</tool_call>"
    )
}

/// ChatML specials, the 256 byte symbols, and the whole tool call as one user-defined token.
fn tokenizer() -> Tokenizer {
    crate::test_support::byte_tokenizer(&[call_text()])
}

/// Greedy next token = `next[current]`: one layer whose attention and MLP add nothing, so the last position's
/// logits are the LM head applied to the (normalised) one-hot embedding of the current token.
fn bigram_model(tok: &Tokenizer) -> Llama {
    let vocab = tok.vocab_size();
    let hidden = vocab.div_ceil(4) * 4;
    let config = LlamaConfig {
        vocab,
        hidden,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        ffn: 8,
        rope_theta: 10_000.0,
        eps: 1e-5,
        context: 8192,
    };
    let mut model = random_model(config, false, 3);
    for layer in &mut model.layers {
        layer.wo.fill(0.0);
        layer.w_down.fill(0.0);
    }
    model.embed.fill(0.0);
    for t in 0..vocab {
        model.embed[t * hidden + t] = 1.0;
    }
    model.norm.fill(1.0);
    let mut head = vec![0.0f32; vocab * hidden];
    let newline = tok.encode("\n").unwrap()[0] as usize;
    let call = tok.token_id(&call_text()).unwrap() as usize;
    let im_end = tok.token_id("<|im_end|>").unwrap() as usize;
    head[call * hidden + newline] = 10.0;
    head[im_end * hidden + call] = 10.0;
    model.lm_head = Some(head);
    model
}

fn openai() -> OpenAiState {
    let state = OpenAiState::new(None);
    let tok = tokenizer();
    state.add_loaded(MODEL, bigram_model(&tok), tok, "bigram test model").unwrap();
    state
}

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::builtin(&[GymKind::Telepathy]).unwrap())
}

fn spec(task_id: &str) -> EpisodeSpec {
    EpisodeSpec {
        gym: "telepathy".into(),
        task_id: task_id.into(),
        model: MODEL.into(),
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens: 16,
        seed: Some(1),
        origin: "test".into(),
    }
}

fn first_task() -> String {
    catalog().get(GymKind::Telepathy).unwrap().task_ids(None)[0].clone()
}

/// Waits (up to 20 s) for a state that satisfies `done`.
async fn wait_for(
    rx: &mut watch::Receiver<EpisodeState>,
    what: &str,
    done: impl Fn(&EpisodeState) -> bool,
) -> EpisodeState {
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            {
                let state = rx.borrow_and_update();
                if done(&state) {
                    return state.clone();
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    match waited {
        Ok(state) => state,
        Err(_) => panic!("timed out waiting for {what}: {:#?}", rx.borrow()),
    }
}

async fn store() -> Store {
    Store::connect("sqlite::memory:").await.unwrap()
}

struct Site {
    router: axum::Router,
    store: Store,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn site(name: &str, idle: Duration) -> Site {
    let dir = std::env::temp_dir().join(format!("userrl-episodes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.join("db.sqlite").display())).await.unwrap();
    let manager = crate::serve::JobManager::new(
        store.clone(),
        crate::serve::JobOptions {
            runs_dir: dir.join("runs"),
            root: dir.clone(),
            configs_dir: Some(dir.join("configs")),
            max_jobs: 1,
        },
    );
    let options = EpisodeOptions { idle_timeout: idle, ..EpisodeOptions::default() };
    let auth = userrl_app::auth::Auth::new(store.clone(), userrl_app::auth::AuthConfig::default());
    let router = crate::serve::app_with(store.clone(), manager, openai(), catalog(), options, auth, None);
    Site { router, store, _dir: tempdir::Dir(dir) }
}

/// A browser's visitor secret (cookie) and a loopback peer: what the auth guard needs to accept a request.
const VISITOR: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn browser(mut req: Request<Body>) -> Request<Body> {
    let cookie = format!("{}={VISITOR}", userrl_app::auth::VISITOR_COOKIE);
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 40000))));
    req
}

fn get(uri: String) -> Request<Body> {
    browser(Request::get(uri).body(Body::empty()).unwrap())
}

/// Calls a server function as the page does (visitor cookie and CSRF header); returns the status and the JSON
/// (or text) answer.
async fn call(router: &axum::Router, name: &str, args: Json) -> (StatusCode, Json) {
    let req = Request::post(format!("/api/fn/{name}"))
        .header("content-type", "application/json")
        .header(userrl_app::auth::CSRF_HEADER, userrl_app::auth::csrf_for(VISITOR))
        .body(Body::from(args.to_string()))
        .unwrap();
    let res = router.clone().oneshot(browser(req)).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (status, serde_json::from_str(&text).unwrap_or(Json::String(text)))
}

/// Reads the episode's SSE stream until a state satisfies `done` (20 s at most).
async fn next_state(
    events: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    buffer: &mut String,
    what: &str,
    done: impl Fn(&EpisodeState) -> bool,
) -> EpisodeState {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if data.is_empty() {
                    continue;
                }
                let state: EpisodeState = serde_json::from_str(&data).unwrap();
                if done(&state) {
                    return state;
                }
            }
            let chunk = events.next().await.expect("the state stream ended early").unwrap();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_answering_through_the_api_drives_an_episode_to_the_gyms_reward() {
    let site = site("play", Duration::from_secs(60)).await;
    let task = first_task();
    let (status, started) = call(&site.router, "start_episode", json!({"spec": spec(&task)})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let started: EpisodeState = serde_json::from_value(started).unwrap();
    assert_eq!(started.spec.origin, "chat", "the chat page's episodes are always `chat`");
    assert!(!started.briefing.is_empty());
    let id = started.id.clone();
    assert_eq!(id.len(), 32);

    let res = site.router.clone().oneshot(get(format!("/api/episodes/{id}/events"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut events = res.into_body().into_data_stream();
    let mut buffer = String::new();

    // Turn 1: the agent guesses; the person is asked to judge it and says it is wrong.
    let first = next_state(&mut events, &mut buffer, "the first question", |s| s.prompt.is_some()).await;
    assert_eq!(first.status, EpisodeStatus::Waiting);
    let prompt = first.prompt.clone().unwrap();
    assert_eq!(prompt.message, GUESS);
    assert!(prompt.controls.iter().any(|c| c.name() == "verdict"));
    let agent_turn = first.items.iter().find_map(|i| match i {
        EpisodeItem::Agent { call, .. } => call.clone(),
        _ => None,
    });
    let call_card = agent_turn.expect("the agent's turn is listed with its tool call");
    assert_eq!((call_card.choice.as_deref(), call_card.content.as_deref()), (Some("answer"), Some(GUESS)));

    // A bad answer is refused and the question stays open.
    let bad = json!({"id": id, "prompt_id": prompt.id, "answer": {"values": {"verdict": "perhaps"}}});
    let (status, body) = call(&site.router, "answer_episode", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let wrong = json!({"id": id, "prompt_id": prompt.id, "answer": {"values": {"verdict": "wrong"}}});
    let (status, body) = call(&site.router, "answer_episode", wrong.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same answer again (a replay) is refused: the prompt is answered.
    let (status, body) = call(&site.router, "answer_episode", wrong).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Turn 2: the same guess; this time the person says it is right and the gym rewards it.
    let second = next_state(&mut events, &mut buffer, "the second question", |s| {
        s.prompt.as_ref().is_some_and(|p| p.id != prompt.id)
    })
    .await;
    let prompt2 = second.prompt.clone().unwrap();
    let right = json!({"id": id, "prompt_id": prompt2.id, "answer": {"values": {"verdict": "right"}}});
    let (status, body) = call(&site.router, "answer_episode", right).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let done = next_state(&mut events, &mut buffer, "the end", |s| s.status == EpisodeStatus::Done).await;
    let outcome = done.outcome.clone().unwrap();
    assert_eq!(outcome.termination, "terminated", "{outcome:?}");
    assert!(outcome.success);
    assert_eq!(outcome.turn_rewards.len(), 2);
    assert_eq!(outcome.turn_rewards[0], 0.0);
    assert!(outcome.turn_rewards[1] > 0.0, "{outcome:?}");
    assert_eq!(done.turn_rewards, outcome.turn_rewards);
    let humans: Vec<&str> = done
        .items
        .iter()
        .filter_map(|i| match i {
            EpisodeItem::Human { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(humans.len(), 2);
    assert!(humans[0].contains("wrong") && humans[1].contains("right"), "{humans:?}");
    // Answer before feedback within each turn.
    let kinds: Vec<&str> = done
        .items
        .iter()
        .map(|i| match i {
            EpisodeItem::Opening { .. } => "opening",
            EpisodeItem::Agent { .. } => "agent",
            EpisodeItem::Human { .. } => "human",
            EpisodeItem::Feedback { .. } => "feedback",
        })
        .collect();
    assert_eq!(kinds, ["opening", "agent", "human", "feedback", "agent", "human", "feedback"]);

    // Stored as a run-less episode with the gym's rewards.
    let stored = outcome.stored_id.expect("stored");
    let (summary, record) = site.store.episode(stored).await.unwrap().unwrap();
    assert_eq!(
        (summary.origin.as_str(), summary.gym.as_str(), summary.user_kind.as_str()),
        ("chat", "telepathy", "human")
    );
    assert_eq!(summary.termination, "terminated");
    assert!(summary.success);
    assert_eq!(record.turn_rewards, outcome.turn_rewards);
    assert!(record.messages.iter().any(|m| m.speaker == userrl_types::Speaker::Assistant && m.text.contains(GUESS)));

    // After the end nothing can be answered or abandoned into a second outcome.
    let late = json!({"id": id, "prompt_id": prompt2.id + 1, "answer": {"values": {"verdict": "right"}}});
    assert_eq!(call(&site.router, "answer_episode", late).await.0, StatusCode::CONFLICT);
    let unknown = json!({"id": "nope", "prompt_id": 1, "answer": {"values": {}}});
    assert_eq!(call(&site.router, "answer_episode", unknown).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_question_abandons_the_episode_after_the_idle_timeout() {
    let registry = EpisodeRegistry::new(
        openai(),
        store().await,
        catalog(),
        EpisodeOptions { idle_timeout: Duration::from_millis(300), ..EpisodeOptions::default() },
    );
    let state = registry.start(spec(&first_task())).await.unwrap();
    let mut rx = registry.watch(&state.id).unwrap();
    wait_for(&mut rx, "the question", |s| s.prompt.is_some()).await;
    let done = wait_for(&mut rx, "the timeout", |s| s.status == EpisodeStatus::Done).await;
    let outcome = done.outcome.unwrap();
    assert_eq!(outcome.termination, "abandoned");
    assert!(!outcome.success);
    assert!(outcome.stored_id.is_some());
    assert!(done.prompt.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_ends_the_episode_as_abandoned_and_bad_specs_are_refused() {
    let registry = EpisodeRegistry::new(openai(), store().await, catalog(), EpisodeOptions::default());
    let state = registry.start(spec(&first_task())).await.unwrap();
    let mut rx = registry.watch(&state.id).unwrap();
    wait_for(&mut rx, "the question", |s| s.prompt.is_some()).await;
    registry.abandon(&state.id).unwrap();
    let done = wait_for(&mut rx, "the end", |s| s.status == EpisodeStatus::Done).await;
    assert_eq!(done.outcome.unwrap().termination, "abandoned");

    let refused = |e: Result<EpisodeState, EpisodeError>| e.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused(registry.start(EpisodeSpec { gym: "nope".into(), ..spec("x") }).await).contains("unknown gym"));
    assert!(refused(registry.start(spec("no-such-task")).await).contains("no task"));
    assert!(
        refused(registry.start(EpisodeSpec { model: "absent".into(), ..spec(&first_task()) }).await)
            .contains("not loaded")
    );
    assert!(
        refused(registry.start(EpisodeSpec { temperature: 9.0, ..spec(&first_task()) }).await).contains("temperature")
    );
    assert!(
        refused(registry.start(EpisodeSpec { max_new_tokens: 0, ..spec(&first_task()) }).await)
            .contains("max new tokens")
    );
    assert!(matches!(registry.abandon("nope"), Err(EpisodeError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_stream_answers_through_the_v1_generation_path() {
    let site = site("chat", Duration::from_secs(60)).await;
    let request = json!({"request": {
        "model": MODEL, "tools": true, "temperature": 0.0, "top_p": 1.0, "max_tokens": 8,
        "messages": [{"role": "user", "content": "<script>alert(1)</script>"}]
    }});
    let (status, id) = call(&site.router, "chat_start", request).await;
    assert_eq!(status, StatusCode::OK, "{id}");
    let id = id.as_str().unwrap().to_string();
    let res = site.router.clone().oneshot(get(format!("/api/chat/{id}/stream"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let events: Vec<userrl_types::chat::ChatEvent> = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim_start()).unwrap())
        .collect();
    use userrl_types::chat::ChatEvent;
    // The bigram model answers the user turn's header with the tool call: it comes back as a call card.
    let calls = events.iter().find_map(|e| match e {
        ChatEvent::ToolCalls { calls } => Some(calls.clone()),
        _ => None,
    });
    let calls = calls.expect("a tool call");
    assert_eq!((calls[0].name.as_str(), calls[0].content.as_deref()), ("interact_with_env", Some(GUESS)));
    assert!(
        matches!(events.last(), Some(ChatEvent::Done { finish_reason, .. }) if finish_reason == "tool_calls"),
        "{events:?}"
    );
    // A stream is handed out once.
    let again = site.router.clone().oneshot(get(format!("/api/chat/{id}/stream"))).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    // Bad requests are refused before anything is generated.
    let unknown = json!({"request": {"model": "absent", "tools": false, "temperature": 0.0, "top_p": 1.0,
        "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}});
    let (status, body) = call(&site.router, "chat_start", unknown).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let long = json!({"request": {"model": MODEL, "tools": false, "temperature": 0.0, "top_p": 1.0,
        "max_tokens": 8, "messages": [{"role": "user", "content": "x".repeat(5000)}]}});
    assert_eq!(call(&site.router, "chat_start", long).await.0, StatusCode::BAD_REQUEST);
    let (status, models) = call(&site.router, "chat_models", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models[0]["name"], MODEL);
}
