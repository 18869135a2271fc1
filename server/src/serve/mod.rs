//! `userrl serve`: one process that serves the web app (Leptos SSR + hydration), the JSON API and the /v1
//! endpoint, and runs training and evaluation jobs on their own threads. Local-first: it binds 127.0.0.1 by
//! default; every route sits behind the auth guard (`userrl_app::auth`: admin sessions, CSRF, rate limits).
//! Run controls need the admin once one exists (`USERRL_ADMIN_PASSWORD` or the first-run `/admin/setup`).

pub mod api;
pub mod bench;
pub mod evaljob;
pub mod jobs;
pub mod paths;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use userrl_app::auth::{Auth, AuthConfig};
use userrl_app::{AppContext, RunLauncher};
use userrl_store::Store;

use crate::chat::Chat;
use crate::episodes::{EpisodeOptions, EpisodeRegistry};

pub use jobs::{JobManager, JobOptions};

/// Everything `userrl serve` needs to start.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// `sqlite://PATH` or `postgres://...`; default `sqlite://<project root>/data/userrl.db`.
    pub database: Option<String>,
    pub demo: bool,
    /// Models served on /v1 (GGUF files or checkpoint directories).
    pub models: Vec<String>,
    /// Default `<project root>/runs`.
    pub runs_dir: Option<PathBuf>,
    pub max_jobs: usize,
}

/// The default database: `data/userrl.db` under the project root, so that the same database opens whatever
/// folder the server starts from.
pub fn default_database_url() -> String {
    format!("sqlite://{}", paths::project_root().join("data").join("userrl.db").display())
}

/// The whole site: the web app (pages, server functions, /pkg, SSE, exports, sign-in, chat and live
/// episodes), the JSON API and the OpenAI-compatible /v1 endpoint (serving `models`; always mounted, with no
/// models it lists none; `USERRL_API_KEY` guards it), with the admin settings from the environment
/// ([`AuthConfig::from_env`]). The chat page and live episodes use the /v1 models in-process.
pub async fn app(store: Store, manager: JobManager, models: &[String]) -> Result<Router> {
    let config = AuthConfig::from_env().context("reading the admin settings")?;
    let auth = Auth::new(store.clone(), config);
    app_with_auth(store, manager, models, auth).await
}

/// [`app`] with the given auth state (tests set their own password and limits). The guard runs in front of
/// every route, /v1 included (its bearer key needs no CSRF token, but the per-IP limits apply).
pub async fn app_with_auth(store: Store, manager: JobManager, models: &[String], auth: Auth) -> Result<Router> {
    let models = models.to_vec();
    let openai = tokio::task::spawn_blocking(move || crate::openai::OpenAiState::load(&models))
        .await?
        .context("loading the /v1 models")?;
    let catalog = tokio::task::spawn_blocking(|| userrl_gym::Catalog::builtin(&userrl_gym::GymKind::ALL))
        .await?
        .context("loading the gyms for live episodes and studies")?;
    let catalog = Arc::new(catalog);
    let crowd = Some(Arc::new(crowd(store.clone(), catalog.clone())));
    Ok(app_with(store, manager, openai, catalog, EpisodeOptions::default(), auth, crowd))
}

/// [`app_with_auth`] over models and gyms already loaded (tests use a tiny model and one gym).
pub fn app_with(
    store: Store,
    manager: JobManager,
    openai: crate::openai::OpenAiState,
    catalog: Arc<userrl_gym::Catalog>,
    episodes: EpisodeOptions,
    auth: Auth,
    crowd: Option<Arc<userrl_app::crowd::service::Crowd>>,
) -> Router {
    let launcher: Arc<dyn RunLauncher> = Arc::new(manager.clone());
    let registry = EpisodeRegistry::new(openai.clone(), store.clone(), catalog, episodes);
    let chat = Chat::new(openai.clone(), store.clone(), MAX_LOADED_CHECKPOINTS);
    let ctx = AppContext {
        store: store.clone(),
        launcher,
        auth: auth.clone(),
        crowd,
        episodes: Arc::new(registry),
        chat: Arc::new(chat),
    };
    let site = userrl_app::site_router(ctx, userrl_app::site_options());
    let router = api::router(api::ApiState { store, jobs: manager, auth: auth.clone() }).merge(site);
    let router = userrl_app::auth::protect(router.merge(crate::openai::router(openai)), &auth);
    router.layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Tokens an agent model may write per turn in a crowd study, and its temperature (greedy, as in evaluation).
const STUDY_AGENT_TOKENS: usize = 512;
const STUDY_AGENT_TEMPERATURE: f32 = 0.0;

/// The crowd-study portal: episodes of the embedded gyms, with `expert`, `random`, or a local model (a
/// checkpoint folder or a GGUF file, loaded once on first use) as the agent; the gyms are the catalog the live
/// episodes use (loaded once).
pub fn crowd(store: Store, catalog: Arc<userrl_gym::Catalog>) -> userrl_app::crowd::service::Crowd {
    use userrl_app::crowd::service::{AgentResolver, Crowd, GymPlayer};
    let resolve: AgentResolver = Arc::new(|model: &str| {
        crate::commands::eval::local_agent(model, STUDY_AGENT_TOKENS, STUDY_AGENT_TEMPERATURE)
            .map_err(|e| format!("{e:#}"))
    });
    Crowd::new(store, Arc::new(GymPlayer::new(catalog, Some(resolve))))
}

/// Most run checkpoints the chat page may load at once (each is a whole model in memory).
const MAX_LOADED_CHECKPOINTS: usize = 4;

/// Connects the store, marks runs left over by a previous process as interrupted, builds the job manager.
pub async fn open(options: &ServeOptions) -> Result<(Store, JobManager)> {
    let url = options.database.clone().unwrap_or_else(default_database_url);
    let store = Store::connect(&url).await.with_context(|| format!("opening the database {url}"))?;
    let interrupted = store.mark_interrupted().await.context("marking leftover runs interrupted")?;
    if interrupted > 0 {
        tracing::info!(runs = interrupted, "runs from the previous process are interrupted (resume them)");
    }
    let root = paths::project_root();
    let manager = JobManager::new(
        store.clone(),
        JobOptions {
            runs_dir: options.runs_dir.clone().unwrap_or_else(|| root.join("runs")),
            root,
            configs_dir: paths::configs_dir(),
            max_jobs: options.max_jobs,
        },
    );
    Ok((store, manager))
}

/// Runs the server until Ctrl-C or SIGTERM, then stops the jobs (marked interrupted, resumable) and closes.
pub async fn run(options: ServeOptions) -> Result<()> {
    let (store, manager) = open(&options).await?;
    let config = AuthConfig::from_env().context("reading the admin settings")?;
    let auth = Auth::new(store.clone(), config);
    let router = app_with_auth(store.clone(), manager.clone(), &options.models, auth.clone()).await?;
    let listener =
        tokio::net::TcpListener::bind(options.addr).await.with_context(|| format!("binding {}", options.addr))?;
    let addr = listener.local_addr()?;
    let listener = no_delay(listener);
    tracing::info!(%addr, database = store.dialect(), "serving http://{addr}");
    eprintln!("userrl: serving http://{addr}");
    match auth.admin_exists().await {
        Ok(true) => {}
        Ok(false) if addr.ip().is_loopback() => eprintln!(
            "userrl: no admin yet: run controls work from this machine only; set USERRL_ADMIN_PASSWORD or open \
             http://{addr}/admin/setup"
        ),
        Ok(false) => tracing::warn!(
            "no admin is set up and the server listens beyond this machine: run controls only accept local \
             requests until USERRL_ADMIN_PASSWORD is set or /admin/setup is done from this machine"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot check for an admin"),
    }
    if options.demo {
        match manager.launch_demo_if_empty().await {
            Ok(Some(id)) => tracing::info!(run = id, "the database had no runs: started the quickstart demo"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "no demo run"),
        }
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // The peer address feeds the per-IP limits and the loopback-only setup page.
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    shutdown_signal().await;
    tracing::info!("shutting down: stopping jobs");
    let _ = stop.send(());
    manager.shutdown(Duration::from_secs(30)).await;
    // Live-update streams (SSE) never end on their own: give requests a moment, then close regardless.
    match tokio::time::timeout(Duration::from_secs(3), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
        Err(_) => tracing::info!("closing the connections still open"),
    }
    store.close().await;
    Ok(())
}

/// Sends small writes at once: SSR streams its HTML in pieces, and with Nagle's algorithm each response
/// waited ~40 ms for the client's delayed ACK (measured: 42 ms p50 for the runs page on one connection).
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn set(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    }
    listener.tap_io(set as fn(&mut tokio::net::TcpStream))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// The dotted key a TOML error points at, found from its span in `text`: the `[table]` header above the
/// offending line plus the line's own key (`grpo.clip`), or the header alone when the error is on it.
pub(crate) fn toml_error_key(text: &str, error: &toml::de::Error) -> Option<String> {
    // An unknown field names itself; prefer it to the span, which points at the table that holds it.
    let message = error.message();
    let named =
        message.strip_prefix("unknown field `").and_then(|rest| rest.split_once('`')).map(|(name, _)| name.to_string());
    let span = error.span()?;
    let before = text.get(..span.start.min(text.len()))?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..].find('\n').map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let own = if line.starts_with('[') {
        None
    } else {
        line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string()).filter(|k| !k.is_empty())
    };
    let (table, key) = if line.starts_with('[') {
        (Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_string()), named)
    } else {
        (header, named.or(own))
    };
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> Option<String> {
        toml_error_key(text, &toml::from_str::<T>(text).unwrap_err())
    }

    #[test]
    fn toml_errors_name_their_dotted_key() {
        let text = "name = \"x\"\n[grpo]\nsteps = 10\nclip = \"wide\"\n";
        assert_eq!(key_of::<userrl_rl::config::RunConfig>(text).as_deref(), Some("grpo.clip"));
        let text = "name = \"x\"\n[model]\npath = \"m\"\n[data]\ngyms = [\"intention\"]\n[grpo]\nstepz = 1\n";
        assert_eq!(key_of::<userrl_rl::config::RunConfig>(text).as_deref(), Some("grpo.stepz"));
        let text = "seed = \"zero\"\n";
        assert_eq!(key_of::<userrl_rl::config::RunConfig>(text).as_deref(), Some("seed"));
    }
}
