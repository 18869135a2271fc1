//! The OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions` (plain or streamed as SSE, with
//! tools) over our own models, each served by a continuous-batching engine (`userrl_nn::engine`) so concurrent
//! requests share its batched forward passes. `router` builds the axum routes over an [`OpenAiState`]; `mount`
//! adds them, with the `--model` files loaded, to the server's router. With `USERRL_API_KEY` set every route
//! needs `Authorization: Bearer <key>`.

mod json;
mod prompt;
mod wire;

pub use wire::ApiError;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use userrl_nn::checkpoint::load_model;
use userrl_nn::engine::{
    Constraint, Engine, EngineConfig, EngineError, Event, FinishReason, Generator, Request as EngineRequest, Stream,
};
use userrl_nn::generate::Sampling;
use userrl_nn::model::{Llama, Precision};
use userrl_nn::tokenizer::Tokenizer;
use userrl_nn::wgpu::{Device, WgpuLlama};

use prompt::{Deltas, Plan};
use wire::ChatRequest;

/// One model the API serves.
pub struct ServedModel {
    pub name: String,
    /// Where it was loaded from (a `.gguf` file or a checkpoint directory), or how it was made.
    pub source: String,
    /// The continuous-batching engine, on the CPU or a GPU ([`serving_device`]).
    pub engine: Box<dyn Generator>,
    /// "cpu", or the wgpu adapter it decodes on.
    pub device: String,
    pub tokenizer: Tokenizer,
    /// Ids that end a reply: EOS and the ChatML end-of-turn / end-of-text tokens.
    pub stop: Vec<u32>,
    pub created: u64,
    /// Each token's bytes, for constrained (JSON) decoding.
    token_bytes: Arc<Vec<Option<Vec<u8>>>>,
}

struct Inner {
    models: RwLock<BTreeMap<String, Arc<ServedModel>>>,
    /// Where models added later decode (`None`: the CPU).
    device: Option<Device>,
    /// A model the GPU cannot run (shapes its kernels refuse, too little memory) is served on the CPU instead of
    /// refused (`USERRL_SERVE_DEVICE=auto`).
    cpu_fallback: bool,
    api_key: Option<String>,
    next_id: AtomicU64,
}

/// The models the API serves and its key. Cheap to clone (shared).
#[derive(Clone)]
pub struct OpenAiState {
    inner: Arc<Inner>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `name=path` or a bare path, whose name is the file stem (`.gguf`) or the directory name (checkpoint).
fn parse_model_arg(arg: &str) -> (String, PathBuf) {
    if let Some((name, path)) = arg.split_once('=')
        && !name.is_empty()
        && !name.contains('/')
    {
        return (name.to_string(), PathBuf::from(path));
    }
    let path = PathBuf::from(arg);
    let named = if path.file_name().is_some_and(|n| n == "model.safetensors") { path.parent() } else { Some(&*path) };
    let name = named
        .and_then(|p| if p.extension().is_some_and(|e| e == "gguf") { p.file_stem() } else { p.file_name() })
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_string());
    (name, path)
}

impl OpenAiState {
    /// An empty state serving on the CPU; `api_key` `None` (or empty) leaves the routes open.
    pub fn new(api_key: Option<String>) -> OpenAiState {
        OpenAiState::serving_on(api_key, ServingDevice { device: None, cpu_fallback: false })
    }

    /// [`OpenAiState::new`] whose models decode where `serving` says.
    pub fn serving_on(api_key: Option<String>, serving: ServingDevice) -> OpenAiState {
        OpenAiState {
            inner: Arc::new(Inner {
                models: RwLock::new(BTreeMap::new()),
                device: serving.device,
                cpu_fallback: serving.cpu_fallback,
                api_key: api_key.filter(|k| !k.is_empty()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Loads every model (`path` or `name=path`, each a `.gguf` or a checkpoint directory), with the key from
    /// `USERRL_API_KEY`, on the device `USERRL_SERVE_DEVICE` names. Blocking: run it off the async workers.
    pub fn load(models: &[String]) -> Result<OpenAiState> {
        let state = OpenAiState::serving_on(std::env::var("USERRL_API_KEY").ok(), serving_device()?);
        for arg in models {
            let (name, path) = parse_model_arg(arg);
            state.add_model(&name, &path)?;
        }
        Ok(state)
    }

    /// Loads a model from a `.gguf` file or a checkpoint directory and serves it as `name` (the web app's
    /// "load checkpoint"). Blocking. A name already served is an error. On the CPU, decoding reads 16-bit copies
    /// of the weights ([`serving_precision`]); a GPU decodes with the f32 weights.
    pub fn add_model(&self, name: &str, path: &Path) -> Result<()> {
        // Read first, so that a bad setting is refused on a GPU too, before a model is loaded.
        let precision = serving_precision()?;
        let loaded = load_model(path).with_context(|| format!("loading the model {}", path.display()))?;
        let model = match self.inner.device {
            None => loaded.model.with_precision(precision),
            Some(_) => loaded.model,
        };
        self.add_loaded(name, model, loaded.tokenizer, &path.display().to_string())
    }

    /// Serves a model already in memory.
    pub fn add_loaded(&self, name: &str, model: Llama, tokenizer: Tokenizer, source: &str) -> Result<()> {
        anyhow::ensure!(!name.trim().is_empty(), "a model needs a name");
        anyhow::ensure!(
            tokenizer.vocab_size() <= model.config.vocab,
            "the tokenizer has {} tokens but the model's vocabulary is {}",
            tokenizer.vocab_size(),
            model.config.vocab
        );
        let mut stop = vec![tokenizer.eos];
        for special in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_id(special).filter(|id| !stop.contains(id)) {
                stop.push(id);
            }
        }
        let cpu = |model: Llama| -> Result<(Box<dyn Generator>, String)> {
            Ok((Box::new(Engine::new(Arc::new(model), EngineConfig::default())?), "cpu".into()))
        };
        let (engine, device) = match &self.inner.device {
            None => cpu(model)?,
            Some(device) => match WgpuLlama::new(device, &model) {
                Ok(gpu) => {
                    let info = device.info();
                    let described = format!("{} ({:?})", info.name, info.backend);
                    (Box::new(Engine::new(Arc::new(gpu), EngineConfig::default())?) as Box<dyn Generator>, described)
                }
                Err(e) if self.inner.cpu_fallback => {
                    tracing::warn!(model = name, error = %e, "the GPU cannot run this model; serving it on the CPU");
                    cpu(model.with_precision(serving_precision()?))?
                }
                Err(e) => return Err(e).context("uploading the model to the GPU"),
            },
        };
        tracing::info!(model = name, device = %device, "serving");
        let served = ServedModel {
            name: name.to_string(),
            source: source.to_string(),
            engine,
            device,
            token_bytes: json::token_bytes(&tokenizer),
            tokenizer,
            stop,
            created: now(),
        };
        let mut models = self.inner.models.write().map_err(|_| anyhow::anyhow!("the model table is poisoned"))?;
        anyhow::ensure!(!models.contains_key(name), "a model named `{name}` is already served");
        models.insert(name.to_string(), Arc::new(served));
        Ok(())
    }

    /// Stops serving `name` (its engine stops once the requests in flight are done with it).
    pub fn remove_model(&self, name: &str) -> bool {
        self.inner.models.write().map(|mut m| m.remove(name).is_some()).unwrap_or(false)
    }

    pub fn model(&self, name: &str) -> Option<Arc<ServedModel>> {
        self.inner.models.read().ok()?.get(name).cloned()
    }

    pub fn model_names(&self) -> Vec<String> {
        self.inner.models.read().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The /v1 routes over `state`.
pub fn router(state: OpenAiState) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .with_state(state)
}

/// The weights served models decode with: `USERRL_SERVE_WEIGHTS` (`f32`, `f16` or `bf16`); by default bf16 on a
/// CPU that multiplies bf16 in hardware (AVX512-BF16), else f16. The 16-bit copies halve the bytes a decoding
/// step streams (batch 1 is bound by them: ~2x the f32 tokens/s). bf16 is SmolLM2's own training precision and
/// with `vdpbf16ps` the fastest at every batch size (2 Zen 4 cores: one stream 87-93 tokens/s, eight 352-435,
/// against f16's 79-89 and 291-353; `bench/README.md`); it moves log-probs ~2e-2 from the f32 trainer's on
/// average (f16 ~3e-3): a chat does not see it, and training does not go through this setting (rollouts decode
/// with the training model's own weights). f32 serves the trainer's own numbers.
pub fn serving_precision() -> Result<Precision> {
    match std::env::var("USERRL_SERVE_WEIGHTS") {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse::<Precision>().map_err(|e| anyhow::anyhow!("USERRL_SERVE_WEIGHTS: {e}"))
        }
        _ if userrl_nn::skinny::bf16_dot() => Ok(Precision::Bf16),
        _ => Ok(Precision::F16),
    }
}

/// Where served models decode (see [`serving_device`]).
pub struct ServingDevice {
    /// `None`: the CPU.
    pub device: Option<Device>,
    /// Serve a model the GPU cannot run on the CPU instead of refusing it.
    pub cpu_fallback: bool,
}

/// Where served models decode: `USERRL_SERVE_DEVICE` = `cpu` (the default), `wgpu` (a wgpu adapter, software
/// ones included; an error when there is none, or when a model does not fit it) or `auto` (a hardware GPU when
/// wgpu finds one, else the CPU; a model the GPU cannot run goes to the CPU too). On a GPU every served model's
/// engine runs `WgpuLlama` (f32 weights on the device, decode steps of all its sequences in one forward).
pub fn serving_device() -> Result<ServingDevice> {
    match std::env::var("USERRL_SERVE_DEVICE") {
        Ok(value) => parse_serving_device(&value),
        Err(std::env::VarError::NotPresent) => parse_serving_device(""),
        Err(e) => anyhow::bail!("USERRL_SERVE_DEVICE: {e}"),
    }
}

fn parse_serving_device(value: &str) -> Result<ServingDevice> {
    let (device, cpu_fallback) = match value.trim() {
        "" | "cpu" => (None, false),
        "auto" => (Device::auto(), true),
        "wgpu" => (Some(Device::wgpu().context("USERRL_SERVE_DEVICE=wgpu: opening a wgpu device")?), false),
        other => anyhow::bail!("USERRL_SERVE_DEVICE is `{other}`; it takes cpu, wgpu or auto"),
    };
    Ok(ServingDevice { device, cpu_fallback })
}

/// Loads `models` (see [`OpenAiState::load`]) and adds the /v1 routes to `router` (what `userrl serve --model`
/// calls).
pub async fn mount(router: Router, models: &[String]) -> Result<Router> {
    let models = models.to_vec();
    let state = tokio::task::spawn_blocking(move || OpenAiState::load(&models)).await??;
    Ok(router.merge(self::router(state)))
}

/// Compares in time that does not depend on where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(state): State<OpenAiState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.inner.api_key {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

fn model_object(m: &ServedModel) -> Value {
    json!({"id": m.name, "object": "model", "created": m.created, "owned_by": "userrl", "device": m.device})
}

async fn list_models(State(state): State<OpenAiState>) -> Json<Value> {
    let models = state.inner.models.read().map(|m| m.values().map(|m| model_object(m)).collect()).unwrap_or_default();
    Json(json!({"object": "list", "data": Value::Array(models)}))
}

async fn get_model(State(state): State<OpenAiState>, UrlPath(id): UrlPath<String>) -> Response {
    match state.model(&id) {
        Some(m) => Json(model_object(&m)).into_response(),
        None => ApiError::unknown_model(&id, &state.model_names()).into_response(),
    }
}

/// Everything one completion needs once the request is validated.
struct Job {
    id: String,
    created: u64,
    model: Arc<ServedModel>,
    plan: Plan,
    deltas: Deltas,
    include_usage: bool,
    streamed: bool,
    stream: Stream,
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::ContextOverflow { .. } => ApiError::context(e.to_string()),
        EngineError::EmptyPrompt | EngineError::BadToken { .. } => ApiError::invalid(e.to_string(), Some("messages")),
        other => ApiError::internal(other.to_string()),
    }
}

/// `response_format`: text (the default) or a JSON object (decoding constrained to one).
fn json_mode(format: &Option<Value>) -> Result<bool, ApiError> {
    match format.as_ref().map(|f| f["type"].as_str()) {
        None | Some(Some("text")) => Ok(false),
        Some(Some("json_object")) => Ok(true),
        Some(Some("json_schema")) => Err(ApiError::invalid(
            "`json_schema` is not supported; use {\"type\": \"json_object\"}",
            Some("response_format"),
        )),
        Some(_) => {
            Err(ApiError::invalid("`response_format.type` must be text or json_object", Some("response_format")))
        }
    }
}

fn int_param(value: Option<i64>, name: &str, min: i64) -> Result<Option<i64>, ApiError> {
    match value {
        Some(v) if v < min => Err(ApiError::invalid(format!("`{name}` must be at least {min}"), Some(name))),
        other => Ok(other),
    }
}

fn start(state: &OpenAiState, body: &[u8]) -> Result<Job, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("We could not parse the JSON body of your request: {e}"), None))?;
    let name = req.model.as_deref().ok_or_else(|| ApiError::invalid("`model` is required", Some("model")))?;
    let model = state.model(name).ok_or_else(|| ApiError::unknown_model(name, &state.model_names()))?;
    let messages =
        req.messages.as_deref().ok_or_else(|| ApiError::invalid("`messages` is required", Some("messages")))?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only `n` = 1 is supported", Some("n")));
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("`temperature` must be between 0 and 2", Some("temperature")));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("`top_p` must be in (0, 1]", Some("top_p")));
    }
    let top_k = int_param(req.top_k, "top_k", 0)?.unwrap_or(0) as usize;
    let max_tokens = int_param(req.max_completion_tokens.or(req.max_tokens), "max_tokens", 1)?;
    let stops = wire::stop_strings(&req.stop)?;
    let tools = req.tools.clone().unwrap_or_default();
    let mode = prompt::tool_mode(&tools, &req.tool_choice)?;
    let plan = prompt::plan(&model.tokenizer, messages, &tools, &mode)?;

    let context = model.engine.config().context;
    let prompt_len = plan.tokens.len();
    if prompt_len >= context {
        return Err(ApiError::context(format!(
            "This model's maximum context length is {context} tokens, and the messages take {prompt_len}."
        )));
    }
    let room = context - prompt_len;
    let max_new_tokens = match max_tokens {
        Some(m) if m as usize > room => {
            return Err(ApiError::context(format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens \
                 ({prompt_len} in the messages, {m} in the completion).",
                prompt_len + m as usize
            )));
        }
        Some(m) => m as usize,
        None => room,
    };
    let seed = match req.seed {
        Some(s) => s as u64,
        None => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64) ^ state.next_id(),
    };
    let stop = if req.ignore_eos.unwrap_or(false) { Vec::new() } else { model.stop.clone() };
    let sampling = Sampling { temperature, top_k, top_p, seed, max_new_tokens };
    let json_start = match (&plan.forced_json, json_mode(&req.response_format)?) {
        (Some(start), _) => Some(start.as_str()),
        (None, true) => Some(""),
        (None, false) => None,
    };
    let constraint: Option<Box<dyn Constraint>> = match json_start {
        Some(start) => Some(Box::new(
            json::JsonConstraint::new(model.token_bytes.clone(), start)
                .ok_or_else(|| ApiError::internal("the forced tool call is not a JSON prefix"))?,
        )),
        None => None,
    };
    let request = EngineRequest { tokens: plan.tokens.clone(), stop, sampling, constraint };
    let stream = model.engine.generate(request).map_err(engine_error)?;
    let include_usage = req.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok(Job {
        id: format!("chatcmpl-{:x}{:06x}", now(), state.next_id()),
        created: now(),
        deltas: Deltas::new(stops, plan.tools_on),
        model,
        plan,
        include_usage,
        streamed: req.stream.unwrap_or(false),
        stream,
    })
}

async fn chat_completions(State(state): State<OpenAiState>, body: Bytes) -> Response {
    let job = match start(&state, &body) {
        Ok(job) => job,
        Err(e) => return e.into_response(),
    };
    if job.streamed { sse(job).into_response() } else { complete(job).await.into_response() }
}

/// The reply so far: generated ids (stop ids left out of the text) and their count.
struct Progress {
    ids: Vec<u32>,
    generated: usize,
}

impl Progress {
    /// The reply's text so far, the opening the prompt forced included.
    fn full_text(&self, job: &Job) -> String {
        format!("{}{}", job.plan.forced, job.model.tokenizer.decode(&self.ids).unwrap_or_default())
    }
}

fn usage(job: &Job, generated: usize) -> Value {
    usage_json(job.plan.tokens.len(), generated, job.stream.cached_tokens())
}

/// OpenAI's usage object; `cached_tokens` are the prompt tokens the engine's prefix store supplied.
fn usage_json(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached}})
}

fn tool_calls_json(calls: &[(String, String)], id: &str) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            json!({"id": format!("call_{}_{i}", &id[id.len().saturating_sub(8)..]), "type": "function",
                   "function": {"name": name, "arguments": arguments}})
        })
        .collect()
}

fn finish_name(reason: FinishReason, calls: bool) -> &'static str {
    match (reason, calls) {
        (_, true) => "tool_calls",
        (FinishReason::Length, false) => "length",
        _ => "stop",
    }
}

async fn complete(mut job: Job) -> Result<Json<Value>, ApiError> {
    let mut progress = Progress { ids: Vec::new(), generated: 0 };
    let check_stops = job.deltas.has_stops();
    let mut reason = FinishReason::Stop;
    let mut cut = None;
    while let Some(event) = job.stream.next().await {
        match event {
            Event::Token { id, .. } => {
                progress.generated += 1;
                if !job.model.stop.contains(&id) {
                    progress.ids.push(id);
                }
                if check_stops && let Some(at) = job.deltas.stop_at(&progress.full_text(&job)) {
                    cut = Some(at);
                    break;
                }
            }
            Event::Finished(r) => reason = r,
            Event::Failed(e) => return Err(engine_error(e)),
        }
    }
    let mut text = progress.full_text(&job);
    if let Some(at) = cut {
        text.truncate(at);
        reason = FinishReason::Stop;
    }
    let reply = prompt::parse_reply(&text, job.plan.tools_on);
    let mut message = json!({"role": "assistant", "content": reply.content});
    if !reply.calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls_json(&reply.calls, &job.id));
    }
    Ok(Json(json!({
        "id": job.id,
        "object": "chat.completion",
        "created": job.created,
        "model": job.model.name,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": finish_name(reason, !reply.calls.is_empty())}],
        "usage": usage(&job, progress.generated),
    })))
}

/// What a streamed chunk names besides its delta.
#[derive(Clone)]
struct Meta {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    prompt_tokens: usize,
}

impl Meta {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        let body = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        SseEvent::default().data(body.to_string())
    }
}

/// One piece of a reply as it is generated: what the /v1 stream and the chat page both send.
#[derive(Debug)]
pub enum Piece {
    /// More text of the reply (never text after a stop string or inside a tool call).
    Content(String),
    /// The reply's tool calls as (name, arguments JSON), at the end.
    Calls(Vec<(String, String)>),
    /// The reply is over: OpenAI's finish reason, how many tokens were generated and how many prompt tokens
    /// came from the engine's prefix store.
    Finish { reason: &'static str, completion_tokens: usize, cached_tokens: usize },
    /// The engine failed; nothing follows.
    Failed(ApiError),
}

/// A validated request whose generation has started (see [`start_reply`]).
pub struct Reply {
    job: Job,
}

impl Reply {
    pub fn model(&self) -> &str {
        &self.job.model.name
    }
    pub fn id(&self) -> &str {
        &self.job.id
    }
}

/// Validates an OpenAI chat request (the JSON body) and starts its generation on the model's engine: the
/// path /v1 uses, for other callers (the chat page). Dropping the reply or its piece stream stops it.
pub fn start_reply(state: &OpenAiState, body: &[u8]) -> Result<Reply, ApiError> {
    start(state, body).map(|job| Reply { job })
}

/// The reply's pieces as tokens arrive: content deltas, then tool calls, then the finish (or a failure).
pub fn pieces(reply: Reply) -> impl futures::Stream<Item = Piece> + Send + 'static {
    struct St {
        job: Job,
        progress: Progress,
        queue: std::collections::VecDeque<Piece>,
        over: bool,
    }
    let st = St {
        job: reply.job,
        progress: Progress { ids: Vec::new(), generated: 0 },
        queue: std::collections::VecDeque::new(),
        over: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(piece) = st.queue.pop_front() {
                return Some((piece, st));
            }
            if st.over {
                return None;
            }
            let finish = match st.job.stream.next().await {
                Some(Event::Token { id, .. }) => {
                    st.progress.generated += 1;
                    if st.job.model.stop.contains(&id) {
                        continue;
                    }
                    st.progress.ids.push(id);
                    let text = st.progress.full_text(&st.job);
                    if text.ends_with('\u{FFFD}') {
                        continue; // a character split across tokens: wait for the rest
                    }
                    let step = st.job.deltas.step(&text, false);
                    if !step.delta.is_empty() {
                        st.queue.push_back(Piece::Content(step.delta));
                    }
                    match step.stopped_at {
                        Some(_) => FinishReason::Stop,
                        None => continue,
                    }
                }
                Some(Event::Finished(reason)) => reason,
                Some(Event::Failed(e)) => {
                    st.over = true;
                    st.queue.push_back(Piece::Failed(engine_error(e)));
                    continue;
                }
                None => {
                    st.over = true;
                    continue;
                }
            };
            st.over = true;
            let text = st.progress.full_text(&st.job);
            let end = st.job.deltas.stop_at(&text).unwrap_or(text.len());
            let reply = prompt::parse_reply(&text[..end], st.job.plan.tools_on);
            if reply.calls.is_empty() {
                let rest = st.job.deltas.rest(&text, end);
                if !rest.is_empty() {
                    st.queue.push_back(Piece::Content(rest));
                }
            } else {
                st.queue.push_back(Piece::Calls(reply.calls.clone()));
            }
            st.queue.push_back(Piece::Finish {
                reason: finish_name(finish, !reply.calls.is_empty()),
                completion_tokens: st.progress.generated,
                cached_tokens: st.job.stream.cached_tokens(),
            });
        }
    })
}

/// The streamed reply: a role delta, content deltas as tokens arrive, tool-call deltas and the finish reason
/// at the end, a usage chunk when asked for, then `[DONE]`. Dropping the response (a client that left) drops the
/// engine stream, which cancels the sequence.
fn sse(job: Job) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    use futures::StreamExt;
    let meta = Meta {
        id: job.id.clone(),
        created: job.created,
        model: job.model.name.clone(),
        include_usage: job.include_usage,
        prompt_tokens: job.plan.tokens.len(),
    };
    let first = meta.chunk(json!({"role": "assistant", "content": ""}), None);
    let rest = pieces(Reply { job }).flat_map(move |piece| {
        let events: Vec<SseEvent> = match piece {
            Piece::Content(text) => vec![meta.chunk(json!({"content": text}), None)],
            Piece::Calls(calls) => {
                let calls: Vec<Value> = tool_calls_json(&calls, &meta.id)
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut c)| {
                        c["index"] = json!(i);
                        c
                    })
                    .collect();
                vec![meta.chunk(json!({"tool_calls": calls}), None)]
            }
            Piece::Finish { reason, completion_tokens, cached_tokens } => {
                let mut out = vec![meta.chunk(json!({}), Some(reason))];
                if meta.include_usage {
                    let body = json!({
                        "id": meta.id, "object": "chat.completion.chunk", "created": meta.created,
                        "model": meta.model, "choices": [],
                        "usage": usage_json(meta.prompt_tokens, completion_tokens, cached_tokens),
                    });
                    out.push(SseEvent::default().data(body.to_string()));
                }
                out.push(SseEvent::default().data("[DONE]"));
                out
            }
            Piece::Failed(e) => {
                vec![SseEvent::default().data(e.body().to_string()), SseEvent::default().data("[DONE]")]
            }
        };
        futures::stream::iter(events.into_iter().map(Ok))
    });
    let events = futures::stream::once(async move { Ok(first) }).chain(rest);
    Sse::new(events).keep_alive(KeepAlive::default())
}
