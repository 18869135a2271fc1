//! The JSON API under `/api`: runs, their metrics (bucketed for charts), transcripts, checkpoints and eval
//! rows, plus launching, cancelling and resuming runs. Every rejection (unknown run, malformed TOML, a body
//! over the limit, bad query parameters, a wrong content type) is a 4xx with `{"error": "..."}` — a 5xx
//! means the server itself failed (the database), never the caller's input.
//!
//! Launching, cancelling and resuming need an operator (`userrl_app::auth::Operator`: the signed-in admin, or
//! anyone on this machine while no admin exists) and, like every mutation, a CSRF token; reading is public.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use userrl_app::auth::{Auth, Operator};
use userrl_store::{Store, StoreError, TranscriptFilter};
use userrl_types::{MetricSeries, RunRow};

/// The largest run config accepted (a config is a few KiB; this leaves room for comments).
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;
/// Chart widths are pixels: more buckets than this is a mistake, not a chart.
pub const MAX_BUCKETS: usize = 10_000;
pub const DEFAULT_BUCKETS: usize = 800;
pub const MAX_TRANSCRIPTS: i64 = 1_000;

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub jobs: super::JobManager,
    /// The router installs this guard itself, so it is protected even when mounted alone.
    pub auth: Auth,
}

/// A failed request: the status and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), field: None }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "API request failed");
        }
        let mut body = json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found("not found"),
            StoreError::Invalid(message) => ApiError::bad_request(message),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("database error: {other}")),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        // A path that does not parse (`/api/runs/abc`) names no resource: 404 would hide the typo, 400 says it.
        ApiError::new(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(status, format!("the body is over the limit of {MAX_CONFIG_BYTES} bytes"));
        }
        ApiError::new(if status.is_client_error() { status } else { StatusCode::BAD_REQUEST }, r.body_text())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The `/api` routes, with JSON 404/405 answers for paths and methods it does not know. Full paths and no
/// router fallback, so it merges with the web app's router (which owns the fallback and `/api/runs/{id}/live`).
pub fn router(state: ApiState) -> Router {
    let auth = state.auth.clone();
    let router = Router::new()
        .route("/api/runs", get(list_runs).post(launch_run))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/resume", post(resume_run))
        .route("/api/runs/{id}/metrics", get(metric_keys))
        .route("/api/runs/{id}/metrics/{*key}", get(metric_series))
        .route("/api/runs/{id}/transcripts", get(list_transcripts))
        .route("/api/runs/{id}/checkpoints", get(list_checkpoints))
        .route("/api/runs/{id}/health", get(rollout_health))
        .route("/api/transcripts/{id}", get(get_transcript))
        .route("/api/evals", get(list_evals))
        .route("/api/presets", get(list_presets))
        .route("/api/{*rest}", any(|| async { ApiError::not_found("no such API route") }))
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(MAX_CONFIG_BYTES))
        .with_state(state);
    userrl_app::auth::protect(router, &auth)
}

async fn existing_run(store: &Store, id: i64) -> Result<RunRow, ApiError> {
    store.run(id).await?.ok_or_else(|| ApiError::not_found(format!("no run {id}")))
}

async fn list_runs(State(s): State<ApiState>) -> ApiResult<Vec<RunRow>> {
    Ok(Json(s.store.runs().await?))
}

async fn get_run(State(s): State<ApiState>, id: Result<Path<i64>, PathRejection>) -> ApiResult<RunRow> {
    let Path(id) = id?;
    Ok(Json(existing_run(&s.store, id).await?))
}

/// Content types a TOML body may come with (browsers' `fetch` of a string sends text/plain).
fn is_toml_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let mime = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(mime.as_str(), "application/toml" | "text/toml" | "text/x-toml" | "text/plain")
}

#[derive(Serialize)]
struct Launched {
    id: i64,
}

async fn launch_run(
    State(s): State<ApiState>,
    _operator: Operator,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Launched>), ApiError> {
    if !is_toml_content_type(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the run config as TOML (Content-Type: application/toml)",
        ));
    }
    let body = body?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("the config is not UTF-8 text"))?;
    match s.jobs.launch(text).await {
        Ok(id) => Ok((StatusCode::CREATED, Json(Launched { id }))),
        Err(e) => Err(ApiError { status: StatusCode::BAD_REQUEST, message: e.message, field: e.field }),
    }
}

async fn cancel_run(
    State(s): State<ApiState>,
    _operator: Operator,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<serde_json::Value> {
    let Path(id) = id?;
    existing_run(&s.store, id).await?;
    s.jobs.cancel(id).await.map_err(|m| ApiError::new(StatusCode::CONFLICT, m))?;
    Ok(Json(json!({ "ok": true })))
}

async fn resume_run(
    State(s): State<ApiState>,
    _operator: Operator,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<serde_json::Value> {
    let Path(id) = id?;
    existing_run(&s.store, id).await?;
    s.jobs.resume(id).await.map_err(|m| ApiError::new(StatusCode::CONFLICT, m))?;
    Ok(Json(json!({ "ok": true })))
}

async fn metric_keys(State(s): State<ApiState>, id: Result<Path<i64>, PathRejection>) -> ApiResult<Vec<String>> {
    let Path(id) = id?;
    existing_run(&s.store, id).await?;
    Ok(Json(s.store.metric_keys(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    buckets: Option<usize>,
    from: Option<i64>,
    to: Option<i64>,
}

async fn metric_series(
    State(s): State<ApiState>,
    path: Result<Path<(i64, String)>, PathRejection>,
    query: Result<Query<SeriesQuery>, QueryRejection>,
) -> ApiResult<MetricSeries> {
    let Path((id, key)) = path?;
    let Query(q) = query?;
    let buckets = q.buckets.unwrap_or(DEFAULT_BUCKETS);
    if buckets == 0 || buckets > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!("`buckets` must be in 1..={MAX_BUCKETS}")));
    }
    let steps = match (q.from, q.to) {
        (None, None) => None,
        (Some(from), Some(to)) if from <= to => Some((from, to)),
        (Some(_), Some(_)) => return Err(ApiError::bad_request("`from` must not exceed `to`")),
        (Some(from), None) => Some((from, i64::MAX)),
        (None, Some(to)) => Some((i64::MIN, to)),
    };
    existing_run(&s.store, id).await?;
    let buckets = s.store.metric_buckets(id, &key, buckets, steps).await?;
    Ok(Json(MetricSeries { run_id: id, key, buckets }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TranscriptQuery {
    gym: Option<String>,
    step: Option<i64>,
    min_reward: Option<f64>,
    max_reward: Option<f64>,
    termination: Option<String>,
    validate: Option<bool>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list_transcripts(
    State(s): State<ApiState>,
    id: Result<Path<i64>, PathRejection>,
    query: Result<Query<TranscriptQuery>, QueryRejection>,
) -> ApiResult<Vec<userrl_types::TranscriptSummary>> {
    let Path(id) = id?;
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_TRANSCRIPTS).contains(&limit) {
        return Err(ApiError::bad_request(format!("`limit` must be in 1..={MAX_TRANSCRIPTS}")));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request("`offset` must be >= 0"));
    }
    if q.min_reward.zip(q.max_reward).is_some_and(|(lo, hi)| lo > hi) {
        return Err(ApiError::bad_request("`min_reward` must not exceed `max_reward`"));
    }
    if [q.min_reward, q.max_reward].into_iter().flatten().any(|r| !r.is_finite()) {
        return Err(ApiError::bad_request("reward bounds must be finite numbers"));
    }
    existing_run(&s.store, id).await?;
    let filter = TranscriptFilter {
        gym: q.gym.filter(|g| !g.is_empty()),
        step: q.step,
        min_reward: q.min_reward,
        max_reward: q.max_reward,
        termination: q.termination.filter(|t| !t.is_empty()),
        validate: q.validate,
        limit,
        offset,
    };
    Ok(Json(s.store.transcripts(id, &filter).await?))
}

async fn get_transcript(
    State(s): State<ApiState>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<serde_json::Value> {
    let Path(id) = id?;
    let (summary, record) =
        s.store.transcript(id).await?.ok_or_else(|| ApiError::not_found(format!("no transcript {id}")))?;
    Ok(Json(json!({ "summary": summary, "record": record })))
}

async fn list_checkpoints(
    State(s): State<ApiState>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Vec<userrl_types::CheckpointRow>> {
    let Path(id) = id?;
    existing_run(&s.store, id).await?;
    Ok(Json(s.store.checkpoints(id).await?))
}

async fn rollout_health(
    State(s): State<ApiState>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<userrl_types::RolloutHealth> {
    let Path(id) = id?;
    existing_run(&s.store, id).await?;
    Ok(Json(s.store.rollout_health(id).await?))
}

async fn list_evals(State(s): State<ApiState>) -> ApiResult<Vec<userrl_types::EvalRow>> {
    Ok(Json(s.store.evals().await?))
}

async fn list_presets(State(s): State<ApiState>) -> ApiResult<serde_json::Value> {
    let presets: Vec<_> =
        s.jobs.presets().into_iter().map(|(name, config)| json!({ "name": name, "config": config })).collect();
    Ok(Json(json!(presets)))
}
