//! Server functions: what the pages load and do. Their bodies run on the server (feature `ssr`) against the
//! store and the run launcher from `AppContext`; in the browser build they become HTTP calls to
//! `POST /api/fn/<name>` (JSON). The names are fixed, not hashed from the source path, so a bundle and a
//! server built from different checkouts of the same code still agree. Launching, cancelling and resuming
//! runs need an operator (`crate::auth::require_operator`); reading is public.

use leptos::prelude::*;
use leptos::server_fn::codec::Json;
use userrl_types::{EvalRow, MetricSeries, TranscriptSummary};

use crate::model::{LaunchOutcome, RunInfo, RunList, TranscriptQuery, TranscriptView};

/// Most runs one chart compares, and most buckets one series may ask for.
pub const MAX_COMPARE: usize = 8;
pub const MAX_BUCKETS: usize = 4000;

#[cfg(feature = "ssr")]
mod backend {
    use leptos::prelude::*;

    use crate::server::AppContext;

    pub fn ctx() -> Result<AppContext, ServerFnError> {
        use_context::<AppContext>().ok_or_else(|| ServerFnError::new("the app context is missing (server bug)"))
    }

    pub fn store_err(e: userrl_store::StoreError) -> ServerFnError {
        ServerFnError::new(e.to_string())
    }

    pub fn not_found(what: &str) -> ServerFnError {
        if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(axum::http::StatusCode::NOT_FOUND);
        }
        ServerFnError::new(format!("{what} not found"))
    }

    pub fn bad_request(message: impl Into<String>) -> ServerFnError {
        if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(axum::http::StatusCode::BAD_REQUEST);
        }
        ServerFnError::new(message.into())
    }

    pub fn now_ms() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

#[server(input = Json, prefix = "/api/fn", endpoint = "list_runs")]
pub async fn list_runs() -> Result<RunList, ServerFnError> {
    let ctx = backend::ctx()?;
    let runs = ctx.store.runs().await.map_err(backend::store_err)?;
    Ok(RunList { runs, now: backend::now_ms() })
}

#[server(input = Json, prefix = "/api/fn", endpoint = "run_overview")]
pub async fn run_overview(id: i64) -> Result<RunInfo, ServerFnError> {
    let ctx = backend::ctx()?;
    let run = ctx.store.run(id).await.map_err(backend::store_err)?.ok_or_else(|| backend::not_found("run"))?;
    let mut keys = ctx.store.metric_keys(id).await.map_err(backend::store_err)?;
    keys.sort();
    let checkpoints = ctx.store.checkpoints(id).await.map_err(backend::store_err)?;
    let checkpoints = checkpoints.into_iter().map(crate::server::checkpoint_files).collect();
    let health = ctx.store.rollout_health(id).await.map_err(backend::store_err)?;
    Ok(RunInfo { run, keys, checkpoints, health, now: backend::now_ms() })
}

/// One metric of several runs, each bucketed to `buckets` buckets.
#[server(input = Json, prefix = "/api/fn", endpoint = "chart_series")]
pub async fn chart_series(run_ids: Vec<i64>, key: String, buckets: usize) -> Result<Vec<MetricSeries>, ServerFnError> {
    if run_ids.is_empty() || run_ids.len() > MAX_COMPARE {
        return Err(backend::bad_request(format!("compare 1 to {MAX_COMPARE} runs")));
    }
    if buckets == 0 || buckets > MAX_BUCKETS {
        return Err(backend::bad_request(format!("buckets must be 1..={MAX_BUCKETS}")));
    }
    let ctx = backend::ctx()?;
    let mut out = Vec::with_capacity(run_ids.len());
    for run_id in run_ids {
        let b = ctx.store.metric_buckets(run_id, &key, buckets, None).await.map_err(backend::store_err)?;
        out.push(MetricSeries { run_id, key: key.clone(), buckets: b });
    }
    Ok(out)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "list_transcripts")]
pub async fn list_transcripts(run_id: i64, query: TranscriptQuery) -> Result<Vec<TranscriptSummary>, ServerFnError> {
    if let (Some(lo), Some(hi)) = (query.min_reward, query.max_reward)
        && lo > hi
    {
        return Err(backend::bad_request("the minimum reward is above the maximum"));
    }
    let ctx = backend::ctx()?;
    let filter = userrl_store::TranscriptFilter {
        gym: query.gym.filter(|s| !s.is_empty()),
        step: query.step,
        min_reward: query.min_reward,
        max_reward: query.max_reward,
        termination: query.termination.filter(|s| !s.is_empty()),
        validate: query.validate,
        limit: crate::model::TRANSCRIPT_PAGE,
        offset: query.offset.max(0),
    };
    ctx.store.transcripts(run_id, &filter).await.map_err(backend::store_err)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "get_transcript")]
pub async fn get_transcript(id: i64) -> Result<TranscriptView, ServerFnError> {
    let ctx = backend::ctx()?;
    let (summary, record) =
        ctx.store.transcript(id).await.map_err(backend::store_err)?.ok_or_else(|| backend::not_found("transcript"))?;
    Ok(TranscriptView { summary, record })
}

/// A GRPO group's rollouts (the same task, sampled `n` times at one step).
#[server(input = Json, prefix = "/api/fn", endpoint = "get_group")]
pub async fn get_group(run_id: i64, step: i64, group: i64) -> Result<Vec<TranscriptView>, ServerFnError> {
    let ctx = backend::ctx()?;
    let rows = ctx.store.group(run_id, step, group).await.map_err(backend::store_err)?;
    if rows.is_empty() {
        return Err(backend::not_found("group"));
    }
    Ok(rows.into_iter().map(|(summary, record)| TranscriptView { summary, record }).collect())
}

#[server(input = Json, prefix = "/api/fn", endpoint = "list_evals")]
pub async fn list_evals() -> Result<Vec<EvalRow>, ServerFnError> {
    backend::ctx()?.store.evals().await.map_err(backend::store_err)
}

/// The preset run configs: (name, TOML).
#[server(input = Json, prefix = "/api/fn", endpoint = "presets")]
pub async fn presets() -> Result<Vec<(String, String)>, ServerFnError> {
    Ok(backend::ctx()?.launcher.presets())
}

#[server(input = Json, prefix = "/api/fn", endpoint = "launch_run")]
pub async fn launch_run(config: String) -> Result<LaunchOutcome, ServerFnError> {
    crate::auth::require_operator().await?;
    if config.trim().is_empty() {
        return Ok(LaunchOutcome::Invalid { field: None, message: "the config is empty".into() });
    }
    match backend::ctx()?.launcher.launch(&config).await {
        Ok(id) => Ok(LaunchOutcome::Launched(id)),
        Err(e) => Ok(LaunchOutcome::Invalid { field: e.field, message: e.message }),
    }
}

#[server(input = Json, prefix = "/api/fn", endpoint = "cancel_run")]
pub async fn cancel_run(id: i64) -> Result<(), ServerFnError> {
    crate::auth::require_operator().await?;
    backend::ctx()?.launcher.cancel(id).await.map_err(backend::bad_request)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "resume_run")]
pub async fn resume_run(id: i64) -> Result<(), ServerFnError> {
    crate::auth::require_operator().await?;
    backend::ctx()?.launcher.resume(id).await.map_err(backend::bad_request)
}
