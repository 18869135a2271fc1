//! What the `userrl serve` command mounts: the app context (store and run launcher), the site options, and
//! one axum router with the pages (SSR), the server functions, the static site files (`/pkg/...`), the live
//! stream of a run (`/api/runs/{id}/live`, Server-Sent Events), per-chart CSV/JSON export and checkpoint
//! downloads, and the admin sign-in endpoints, all behind the auth guard (`crate::auth`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{AxumRouteListing, LeptosRoutes, file_and_error_handler_with_context, generate_route_list};
use serde::Deserialize;
use tokio::sync::broadcast;
use userrl_store::{Store, StoreEvent};
use userrl_types::{CheckpointRow, RunStatus};

use crate::app::{App, shell};
use crate::auth::Auth;
use crate::hosts::{ChatHost, LiveEpisodes};
use crate::model::{CheckpointFiles, LiveEvent};

/// A rejected run config: `field` names the TOML key at fault (`grpo.lr`), when one is.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct LaunchError {
    pub field: Option<String>,
    pub message: String,
}

/// Starts, cancels and resumes runs; implemented by the server's job manager.
#[async_trait::async_trait]
pub trait RunLauncher: Send + Sync {
    /// The preset configs offered by "New run": (name, TOML text).
    fn presets(&self) -> Vec<(String, String)>;
    /// Validates and starts a run; returns its id.
    async fn launch(&self, config_toml: &str) -> Result<i64, LaunchError>;
    async fn cancel(&self, run_id: i64) -> Result<(), String>;
    async fn resume(&self, run_id: i64) -> Result<(), String>;
}

/// Everything a request handler needs; provided as Leptos context to pages and server functions.
#[derive(Clone)]
pub struct AppContext {
    pub store: Store,
    pub launcher: Arc<dyn RunLauncher>,
    /// Live episodes with a person as the user (`crate::hosts`).
    pub episodes: Arc<dyn LiveEpisodes>,
    /// The chat page's models and replies (`crate::hosts`).
    pub chat: Arc<dyn ChatHost>,
    /// Admin sessions, CSRF and rate limits: `site_router` puts its guard in front of every route (see
    /// `crate::auth`).
    pub auth: Auth,
    /// The crowd-study portal (worker sessions and live episodes); `None` where studies are not served.
    pub crowd: Option<Arc<crate::crowd::service::Crowd>>,
}

/// The router's state: the Leptos options plus the app context.
#[derive(Clone)]
struct SiteState {
    options: LeptosOptions,
    ctx: AppContext,
}

impl FromRef<SiteState> for AppContext {
    fn from_ref(state: &SiteState) -> AppContext {
        state.ctx.clone()
    }
}

impl FromRef<SiteState> for LeptosOptions {
    fn from_ref(state: &SiteState) -> LeptosOptions {
        state.options.clone()
    }
}

/// The name `scripts/build-site` gives the bundle: `/pkg/userrl.js`, `/pkg/userrl_bg.wasm`, `/pkg/userrl.css`.
pub const OUTPUT_NAME: &str = "userrl";

/// Site settings from the environment, with defaults that work from any working directory:
/// - `LEPTOS_SITE_ROOT`: the folder `scripts/build-site` wrote; default: the `site` folder beside the
///   executable or up to two levels above it (`target/release/userrl` -> `target/release/site`, the bundle
///   built in the same mode; test binaries in `target/debug/deps` find `target/debug/site`), else
///   `./target/site`.
/// - `LEPTOS_SITE_ADDR`: where to listen; default `127.0.0.1:3000` (the serve command may override it).
/// - `LEPTOS_SITE_PKG_DIR` (default `pkg`) and `LEPTOS_ENV` (`DEV` | `PROD`, default `PROD`).
pub fn site_options() -> LeptosOptions {
    let site_root = std::env::var("LEPTOS_SITE_ROOT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default_site_root().to_string_lossy().into_owned());
    let site_addr = std::env::var("LEPTOS_SITE_ADDR")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 3000)));
    let pkg = std::env::var("LEPTOS_SITE_PKG_DIR").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "pkg".into());
    let env = match std::env::var("LEPTOS_ENV").map(|s| s.to_ascii_lowercase()) {
        Ok(s) if s == "dev" || s == "development" => leptos::config::Env::DEV,
        _ => leptos::config::Env::PROD,
    };
    LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(site_root)
        .site_pkg_dir(pkg)
        .site_addr(site_addr)
        .env(env)
        .build()
}

/// The nearest `site` folder (with a `pkg` inside) beside the executable or up to two levels above it.
fn default_site_root() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        // target/<profile>/userrl, or target/<profile>/deps/<test binary>
        exe.ancestors().skip(1).take(3).map(|dir| dir.join("site")).find(|site| site.join("pkg").is_dir())
    });
    from_exe.unwrap_or_else(|| PathBuf::from("target/site"))
}

/// The app's page routes, listed once per process.
///
/// Listing them renders the app with leptos_server's `SuppressResourceLoad` held, and that is one process-wide
/// flag: every `Resource` whose future is first polled while it is set, on any thread, parks on a future that
/// never wakes (leptos checks the flag once, at the first poll). A page rendering meanwhile never finishes its
/// stream and its connection hangs, idle, for good. Listing the routes once, before the first router exists,
/// keeps that window away from every render, however many routers the process builds later (tests, benches,
/// several sites in one process).
fn app_routes() -> Vec<AxumRouteListing> {
    static ROUTES: OnceLock<Vec<AxumRouteListing>> = OnceLock::new();
    ROUTES.get_or_init(|| generate_route_list(App)).clone()
}

/// The whole web app as one router (pages, server functions, static files, live stream, exports, sign-in),
/// behind the auth guard. Safe to call while other routers of this process serve pages (see [`app_routes`]).
pub fn site_router(ctx: AppContext, options: LeptosOptions) -> Router {
    let routes = app_routes();
    let state = SiteState { options: options.clone(), ctx: ctx.clone() };
    let page_ctx = ctx.clone();
    let auth = ctx.auth.clone();
    let crowd = ctx.crowd.clone();
    let fallback_ctx = ctx;
    let router = Router::new()
        .route("/api/runs/{id}/live", get(live))
        .route("/api/runs/{id}/export", get(export))
        .route("/api/runs/{run}/checkpoints/{checkpoint}/{file}", get(checkpoint_file))
        .route("/api/episodes/{id}/events", get(crate::hosts::episode_events))
        .route("/api/chat/{id}/stream", get(crate::hosts::chat_stream))
        .merge(crate::auth::routes())
        .leptos_routes_with_context(&state, routes, move || provide_context(page_ctx.clone()), {
            let options = options.clone();
            move || shell(options.clone())
        })
        .fallback(file_and_error_handler_with_context::<SiteState, _>(
            move || provide_context(fallback_ctx.clone()),
            shell,
        ))
        .layer(axum::middleware::from_fn(bad_arguments_are_client_errors))
        .with_state(state);
    let router = match crowd {
        Some(crowd) => router.merge(crate::crowd::admin::router(crowd)),
        None => router,
    };
    crate::auth::protect(router, &auth)
}

/// Leptos answers a server-function call whose arguments do not parse with a 500; it is the caller's
/// mistake, so it becomes a 400 with the same message.
async fn bad_arguments_are_client_errors(req: Request, next: axum::middleware::Next) -> Response {
    let is_call = req.method() == axum::http::Method::POST && req.uri().path().starts_with("/api/");
    let res = next.run(req).await;
    if !is_call || res.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "server function failed");
    };
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim_start_matches('"');
    if text.starts_with("Args|") || text.starts_with("Deserialization|") {
        parts.status = StatusCode::BAD_REQUEST;
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.into()).into_response()
}

fn store_error(e: userrl_store::StoreError) -> Response {
    match e {
        userrl_store::StoreError::NotFound => error(StatusCode::NOT_FOUND, "not found"),
        userrl_store::StoreError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        other => {
            tracing::error!("store: {other}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "database error")
        }
    }
}

/// How often the live stream looks at the database for points written by other processes (a `userrl
/// train` sharing the SQLite file): the in-process broadcast covers this server's own runs at once.
const POLL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct LiveQuery {
    /// Runs compared with this one (`2,3`): their new points come as `compared` events on the same stream,
    /// so a page with several runs holds one connection (browsers allow about six per host).
    #[serde(default)]
    compare: Option<String>,
}

/// `GET /api/runs/{id}/live[?compare=2,3]`: the run's new metrics, status and progress changes, transcripts
/// and checkpoints as they happen, and the compared runs' new metrics, one JSON `LiveEvent` per SSE message.
async fn live(State(state): State<SiteState>, UrlPath(id): UrlPath<i64>, Query(q): Query<LiveQuery>) -> Response {
    let store = state.ctx.store.clone();
    let run = match store.run(id).await {
        Ok(Some(run)) => run,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Err(e) => return store_error(e),
    };
    // Subscribe before reading the high-water marks, so nothing committed in between is missed.
    let events = store.subscribe();
    let mut runs = vec![(id, run.step)];
    for other in crate::pages::run::parse_compare(q.compare.as_deref().unwrap_or(""), id) {
        // Unknown runs are left out, as the charts leave them out.
        if let Ok(Some(row)) = store.run(other).await {
            runs.push((other, row.step));
        }
    }
    let mut seen = HashMap::new();
    for &(run_id, _) in &runs {
        if let Ok(keys) = store.metric_keys(run_id).await {
            for key in keys {
                if let Ok(Some((_, hi))) = store.step_range(run_id, &key).await {
                    seen.insert((run_id, key), hi);
                }
            }
        }
    }
    let watch = Watch {
        store,
        run_id: id,
        steps: runs.into_iter().collect(),
        events,
        seen,
        status: run.status,
        progress: (run.phase, run.phase_step, run.phase_total),
        recheck: 0,
    };
    Sse::new(live_stream(watch)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// The state of one live stream: per run and metric key, the last step already sent.
struct Watch {
    store: Store,
    /// The page's run; `steps` has it and the compared runs, each with its last known step.
    run_id: i64,
    steps: HashMap<i64, i64>,
    events: broadcast::Receiver<StoreEvent>,
    seen: HashMap<(i64, String), i64>,
    status: RunStatus,
    progress: (String, i64, i64),
    /// Polls left that re-read every key (points of one step may land in more than one write).
    recheck: u8,
}

impl Watch {
    /// Marks metric values as sent, dropping those at or below what the stream already sent.
    fn fresh(&mut self, run_id: i64, step: i64, values: Vec<(String, f64)>) -> Vec<(String, f64)> {
        values
            .into_iter()
            .filter(|(key, _)| {
                let last = self.seen.entry((run_id, key.clone())).or_insert(i64::MIN);
                if step >= *last {
                    *last = step;
                    true
                } else {
                    false
                }
            })
            .collect()
    }

    fn metrics_event(&self, run_id: i64, step: i64, values: Vec<(String, f64)>) -> LiveEvent {
        if run_id == self.run_id {
            LiveEvent::Metrics { step, values }
        } else {
            LiveEvent::Compared { run_id, step, values }
        }
    }

    async fn next_events(&mut self) -> Vec<LiveEvent> {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                received = self.events.recv() => match received {
                    Ok(StoreEvent::Metrics { run_id, step, values, .. }) if self.steps.contains_key(&run_id) => {
                        let values = self.fresh(run_id, step, values);
                        if let Some(last) = self.steps.get_mut(&run_id) {
                            *last = (*last).max(step);
                        }
                        if !values.is_empty() {
                            return vec![self.metrics_event(run_id, step, values)];
                        }
                    }
                    Ok(StoreEvent::Status { run_id, status, message }) if run_id == self.run_id => {
                        self.status = status;
                        return vec![LiveEvent::Status { status, message }];
                    }
                    Ok(StoreEvent::Progress { run_id, phase, step, total }) if run_id == self.run_id => {
                        self.progress = (phase.clone(), step, total);
                        return vec![LiveEvent::Progress { phase, step, total }];
                    }
                    Ok(StoreEvent::Transcript { run_id, step, .. }) if run_id == self.run_id => {
                        return vec![LiveEvent::Transcript { step }];
                    }
                    Ok(StoreEvent::Checkpoint { run_id, step, .. }) if run_id == self.run_id => {
                        return vec![LiveEvent::Checkpoint { step }];
                    }
                    Ok(_) => {}
                    // Fell behind the broadcast: the database has everything, read it on the next poll.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.recheck = 2,
                    Err(broadcast::error::RecvError::Closed) => {
                        poll.tick().await;
                        let out = self.poll().await;
                        if !out.is_empty() {
                            return out;
                        }
                    }
                },
                _ = poll.tick() => {
                    let out = self.poll().await;
                    if !out.is_empty() {
                        return out;
                    }
                }
            }
        }
    }

    /// Reads what other processes wrote since the last look.
    async fn poll(&mut self) -> Vec<LiveEvent> {
        let mut out = Vec::new();
        let mut ids: Vec<i64> = self.steps.keys().copied().collect();
        ids.sort_unstable();
        for &run_id in &ids {
            let Ok(Some(run)) = self.store.run(run_id).await else { continue };
            if run_id == self.run_id {
                if run.status != self.status {
                    self.status = run.status;
                    out.push(LiveEvent::Status { status: run.status, message: run.message.clone() });
                }
                let progress = (run.phase.clone(), run.phase_step, run.phase_total);
                if progress != self.progress {
                    self.progress = progress;
                    out.push(LiveEvent::Progress { phase: run.phase, step: run.phase_step, total: run.phase_total });
                    self.recheck = 2;
                }
            }
            if self.steps.get(&run_id) != Some(&run.step) {
                self.steps.insert(run_id, run.step);
                self.recheck = 2;
            }
        }
        if self.recheck == 0 {
            return out;
        }
        self.recheck -= 1;
        for run_id in ids {
            let Ok(keys) = self.store.metric_keys(run_id).await else { continue };
            let mut by_step: std::collections::BTreeMap<i64, Vec<(String, f64)>> = Default::default();
            for key in keys {
                let after = self.seen.get(&(run_id, key.clone())).copied();
                let Ok(points) = self.store.metric_points(run_id, &key, after).await else { continue };
                if let Some(last) = points.last() {
                    self.seen.insert((run_id, key.clone()), last.step);
                }
                for p in points {
                    by_step.entry(p.step).or_default().push((key.clone(), p.value));
                }
            }
            out.extend(by_step.into_iter().map(|(step, values)| self.metrics_event(run_id, step, values)));
        }
        out
    }
}

fn live_stream(watch: Watch) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold((watch, Vec::<LiveEvent>::new()), |(mut watch, mut queue)| async move {
        while queue.is_empty() {
            queue = watch.next_events().await;
            queue.reverse();
        }
        let event = queue.pop()?;
        let data = serde_json::to_string(&event).unwrap_or_default();
        Some((Ok(Event::default().data(data)), (watch, queue)))
    })
}

#[derive(Deserialize)]
struct ExportQuery {
    key: String,
    #[serde(default)]
    format: Option<String>,
}

/// `GET /api/runs/{id}/export?key=reward&format=csv|json`: every raw point of one metric of one run.
async fn export(State(state): State<SiteState>, UrlPath(id): UrlPath<i64>, Query(q): Query<ExportQuery>) -> Response {
    let store = &state.ctx.store;
    match store.run(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Err(e) => return store_error(e),
    }
    let points = match store.metric_points(id, &q.key, None).await {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    let stem: String =
        q.key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let (body, mime, ext) = match q.format.as_deref().unwrap_or("csv") {
        "csv" => {
            let mut csv = String::from("step,wall_time,value\n");
            for p in &points {
                csv.push_str(&format!("{},{},{}\n", p.step, p.wall_time, p.value));
            }
            (csv, "text/csv; charset=utf-8", "csv")
        }
        "json" => {
            let json = serde_json::json!({ "run_id": id, "key": q.key, "points": points });
            (json.to_string(), "application/json", "json")
        }
        other => return error(StatusCode::BAD_REQUEST, format!("unknown format {other:?}: use csv or json")),
    };
    let disposition = format!("attachment; filename=\"run{id}-{stem}.{ext}\"");
    let mut res = (StatusCode::OK, [(header::CONTENT_TYPE, mime)], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// The downloadable files of a checkpoint: the file itself, or the plain files directly inside its folder.
pub fn checkpoint_files(checkpoint: CheckpointRow) -> CheckpointFiles {
    let path = Path::new(&checkpoint.path);
    let mut files = Vec::new();
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_file() {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                files.push((name.to_string(), meta.len()));
            }
        } else if let Ok(dir) = std::fs::read_dir(path) {
            for entry in dir.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if let (true, Some(name)) = (meta.is_file(), entry.file_name().to_str()) {
                    files.push((name.to_string(), meta.len()));
                }
            }
        }
    }
    files.sort();
    CheckpointFiles { checkpoint, files }
}

/// `GET /api/runs/{run}/checkpoints/{checkpoint}/{file}`: one file of a checkpoint, only among those
/// `checkpoint_files` lists (never a path from the URL).
async fn checkpoint_file(
    State(state): State<SiteState>,
    UrlPath((run, checkpoint, file)): UrlPath<(i64, i64, String)>,
    req: Request,
) -> Response {
    let rows = match state.ctx.store.checkpoints(run).await {
        Ok(rows) => rows,
        Err(e) => return store_error(e),
    };
    let Some(row) = rows.into_iter().find(|c| c.id == checkpoint) else {
        return error(StatusCode::NOT_FOUND, format!("checkpoint {checkpoint} of run {run} not found"));
    };
    let base = PathBuf::from(&row.path);
    let listed = checkpoint_files(row);
    if !listed.files.iter().any(|(name, _)| *name == file) {
        return error(StatusCode::NOT_FOUND, format!("no file {file:?} in this checkpoint"));
    }
    let path = if base.is_file() { base } else { base.join(&file) };
    use tower::ServiceExt;
    let mut res = match tower_http::services::ServeFile::new(&path).oneshot(req).await {
        Ok(res) => res.map(Body::new).into_response(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file.replace('"', ""))) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    res
}
