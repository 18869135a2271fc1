//! The admin side of crowd studies: creating a study from the form (each error names its field), the study
//! list and page data (live progress, sessions, episodes, flags), one episode's transcript, exclusions, and
//! the exports. The JSON API under `/api/admin/studies` and the admin pages' server functions both call the
//! functions here; every route takes the admin check (`AdminSession`) as an argument, so none forgets it.
//!
//! Exports: `export.csv` has one line per episode (session, platform ids, consent, completion, exclusion,
//! task, model, score, success, termination, turns, answer times); every cell is quoted as RFC 4180 asks and
//! cells starting with `=`, `+`, `-` or `@` are prefixed with `'` (no formula runs when a spreadsheet opens
//! it). `export.jsonl` has one JSON object per episode with its full transcript and the worker's answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use userrl_store::{StoreError, validate_spec};
use userrl_types::study::{Platform, StudySpec, StudyStatus, StudyTask};

use super::service::{Crowd, CrowdError};
use super::{CreateOutcome, StudyDetail, StudyEpisodeView, StudyForm, StudySummary, csv_line, worker_link};
use crate::auth::AdminSession;

/// Most tasks one study may list.
pub const MAX_TASKS: usize = 2_000;

/// Parses and checks the creation form. `Err((field, message))` names the first field at fault.
pub fn spec_from_form(form: &StudyForm, crowd: &Crowd) -> Result<StudySpec, (String, String)> {
    let err = |field: &str, message: String| Err((field.to_string(), message));
    let number = |field: &str, text: &str| -> Result<i64, (String, String)> {
        text.trim().parse::<i64>().map_err(|_| (field.to_string(), format!("{:?} is not a whole number", text.trim())))
    };
    let split = if form.split.trim().is_empty() { "test".to_string() } else { form.split.trim().to_lowercase() };
    if split != "test" && split != "train" {
        return err("split", "test or train".into());
    }
    let player = crowd.player();
    let mut tasks: Vec<StudyTask> = Vec::new();
    let gyms: Vec<String> =
        form.gyms.split([',', '\n']).map(|g| g.trim().to_lowercase()).filter(|g| !g.is_empty()).collect();
    let listed: Vec<&str> = form.tasks.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if listed.is_empty() {
        if gyms.is_empty() {
            return err("gyms", "name at least one gym, or list tasks as gym/task_id".into());
        }
        for gym in &gyms {
            let ids = player.task_ids(gym, &split).map_err(|m| ("gyms".to_string(), m))?;
            if ids.is_empty() {
                return err("gyms", format!("{gym} has no {split} tasks"));
            }
            tasks.extend(ids.into_iter().map(|task_id| StudyTask { gym: gym.clone(), task_id }));
        }
    } else {
        let mut known: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in listed {
            let Some((gym, task_id)) = line.split_once('/') else {
                return err("tasks", format!("{line:?}: write gym/task_id"));
            };
            let gym = gym.trim().to_lowercase();
            let ids = match known.get(&gym) {
                Some(ids) => ids,
                None => {
                    let ids = player.task_ids(&gym, &split).map_err(|m| ("tasks".to_string(), m))?;
                    known.entry(gym.clone()).or_insert(ids)
                }
            };
            if !ids.iter().any(|id| id == task_id.trim()) {
                return err("tasks", format!("{gym} has no {split} task {:?}", task_id.trim()));
            }
            tasks.push(StudyTask { gym, task_id: task_id.trim().to_string() });
        }
    }
    tasks.sort();
    tasks.dedup();
    if tasks.len() > MAX_TASKS {
        return err("tasks", format!("at most {MAX_TASKS} tasks (got {})", tasks.len()));
    }
    let models: Vec<String> = form.models.lines().map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect();
    for model in &models {
        player.check_model(model).map_err(|m| ("models".to_string(), m))?;
    }
    let platform = Platform::parse(form.platform.trim())
        .ok_or_else(|| ("platform".to_string(), "prolific, mturk or direct".to_string()))?;
    let completion_url = match (platform, form.completion_url.trim()) {
        (Platform::Prolific, "") => super::PROLIFIC_COMPLETE.to_string(),
        (_, url) => url.to_string(),
    };
    let time_limit_min = number("time_limit_min", &form.time_limit_min)?;
    let spec = StudySpec {
        name: form.name.trim().to_string(),
        slug: form.slug.trim().to_string(),
        tasks,
        split,
        models,
        episodes_per_worker: number("episodes_per_worker", &form.episodes_per_worker)?,
        time_limit_s: time_limit_min.saturating_mul(60),
        max_turns: number("max_turns", &form.max_turns)?,
        pay_note: form.pay_note.trim().to_string(),
        instructions: form.instructions.trim().to_string(),
        consent_text: form.consent_text.trim().to_string(),
        consent_version: form.consent_version.trim().to_string(),
        platform,
        completion_url,
        completion_code: form.completion_code.trim().to_string(),
    };
    validate_spec(&spec).map_err(|(field, message)| {
        // The form asks for minutes.
        if field == "time_limit_s" {
            ("time_limit_min".to_string(), "between 1 and 1440 minutes".to_string())
        } else {
            (field, message)
        }
    })?;
    Ok(spec)
}

/// Creates a study from the form.
pub async fn create(crowd: &Crowd, form: &StudyForm) -> Result<CreateOutcome, CrowdError> {
    let spec = match spec_from_form(form, crowd) {
        Ok(spec) => spec,
        Err((field, message)) => return Ok(CreateOutcome::Invalid { field, message }),
    };
    let status = if form.open { StudyStatus::Open } else { StudyStatus::Draft };
    match crowd.store.create_study(&spec, status).await {
        Ok(id) => Ok(CreateOutcome::Created { id, slug: spec.slug }),
        Err(StoreError::Invalid(m)) => {
            let (field, message) =
                m.split_once(": ").map(|(f, m)| (f.to_string(), m.to_string())).unwrap_or(("name".into(), m));
            Ok(CreateOutcome::Invalid { field, message })
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn list(crowd: &Crowd) -> Result<Vec<StudySummary>, CrowdError> {
    let mut out = Vec::new();
    for study in crowd.store.studies().await? {
        let progress = crowd.store.study_progress(study.id).await?;
        out.push(StudySummary { study, progress });
    }
    Ok(out)
}

pub async fn detail(crowd: &Crowd, id: i64, base_url: &str) -> Result<StudyDetail, CrowdError> {
    let study = crowd.store.study(id).await?.ok_or_else(|| CrowdError::NotFound(format!("study {id}")))?;
    Ok(StudyDetail {
        link: worker_link(base_url, &study.spec),
        progress: crowd.store.study_progress(id).await?,
        sessions: crowd.store.worker_sessions(id).await?,
        episodes: crowd.store.study_episodes(id).await?,
        flags: crowd.store.study_flags(id).await?,
        study,
    })
}

pub async fn episode(crowd: &Crowd, study_id: i64, episode_id: i64) -> Result<StudyEpisodeView, CrowdError> {
    match crowd.store.study_episode(episode_id).await? {
        Some((episode, record)) if episode.study_id == study_id => Ok(StudyEpisodeView { episode, record }),
        _ => Err(CrowdError::NotFound(format!("episode {episode_id} of study {study_id}"))),
    }
}

pub async fn set_status(crowd: &Crowd, id: i64, status: &str) -> Result<(), CrowdError> {
    let status =
        StudyStatus::parse(status).ok_or_else(|| CrowdError::Invalid("status: draft, open or closed".into()))?;
    crowd.store.set_study_status(id, status).await?;
    Ok(())
}

/// Excludes a session of study `study_id` from the scores (or takes it back); the worker is not rejected.
pub async fn exclude(
    crowd: &Crowd,
    study_id: i64,
    session_id: i64,
    excluded: bool,
    reason: &str,
) -> Result<(), CrowdError> {
    if reason.chars().count() > 1_000 {
        return Err(CrowdError::Invalid("the reason is over 1,000 characters".into()));
    }
    match crowd.store.worker_session(session_id).await? {
        Some(s) if s.study_id == study_id => {}
        _ => return Err(CrowdError::NotFound(format!("session {session_id} of study {study_id}"))),
    }
    crowd.store.set_excluded(session_id, excluded, reason).await?;
    Ok(())
}

const CSV_HEADER: [&str; 26] = [
    "study",
    "session_id",
    "platform",
    "worker_id",
    "study_ref",
    "session_ref",
    "session_state",
    "consent_at",
    "consent_version",
    "completion_code",
    "excluded",
    "exclusion_reason",
    "flags",
    "episode_id",
    "index",
    "gym",
    "task_id",
    "model",
    "episode_state",
    "score",
    "normalized",
    "success",
    "termination",
    "turns",
    "answer_ms",
    "finished_at",
];

/// The code the worker was given: the study's fixed code, else the session's own (empty until handed out).
/// The session's random code is kept in either case (the JSONL's `session.completion_code`).
fn shown_code(spec: &StudySpec, s: &userrl_types::study::SessionRow) -> String {
    match &s.completion_code {
        Some(_) if !spec.completion_code.is_empty() => spec.completion_code.clone(),
        Some(code) => code.clone(),
        None => String::new(),
    }
}

fn number_text(v: f64) -> String {
    if v.is_nan() { String::new() } else { v.to_string() }
}

/// The CSV export: one line per episode (see the module comment).
pub async fn export_csv(crowd: &Crowd, id: i64) -> Result<String, CrowdError> {
    let d = detail(crowd, id, "").await?;
    let sessions: BTreeMap<i64, &userrl_types::study::SessionRow> = d.sessions.iter().map(|s| (s.id, s)).collect();
    let mut flags: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for f in &d.flags {
        let names = flags.entry(f.session_id()).or_default();
        if !names.contains(&f.name()) {
            names.push(f.name());
        }
    }
    let mut out = csv_line(&CSV_HEADER);
    for e in &d.episodes {
        let Some(s) = sessions.get(&e.session_id) else { continue };
        let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        out.push_str(&csv_line(&[
            d.study.spec.slug.clone(),
            s.id.to_string(),
            s.platform.as_str().to_string(),
            s.ids.worker_id.clone(),
            s.ids.study_ref.clone(),
            s.ids.session_ref.clone(),
            s.state.as_str().to_string(),
            opt(s.consent_at),
            s.consent_version.clone().unwrap_or_default(),
            shown_code(&d.study.spec, s),
            s.excluded.to_string(),
            s.exclusion_reason.clone(),
            flags.get(&s.id).map(|f| f.join(" ")).unwrap_or_default(),
            e.id.to_string(),
            e.index.to_string(),
            e.gym.clone(),
            e.task_id.clone(),
            e.model.clone(),
            e.state.as_str().to_string(),
            number_text(e.score),
            number_text(e.normalized),
            e.success.to_string(),
            e.termination.clone(),
            e.turns.to_string(),
            e.answer_ms.iter().map(|ms| ms.to_string()).collect::<Vec<_>>().join(" "),
            opt(e.finished_at),
        ]));
    }
    Ok(out)
}

/// The JSONL export: one object per episode with its session, transcript and answers.
pub async fn export_jsonl(crowd: &Crowd, id: i64) -> Result<String, CrowdError> {
    let d = detail(crowd, id, "").await?;
    let mut answers: BTreeMap<i64, Vec<serde_json::Value>> = BTreeMap::new();
    for (_, a) in crowd.store.study_answers(id).await? {
        let values: serde_json::Value = serde_json::from_str(&a.answer).unwrap_or(serde_json::Value::String(a.answer));
        answers.entry(a.episode_id).or_default().push(json!({
            "prompt_id": a.prompt_id, "answer": values, "elapsed_ms": a.elapsed_ms, "at": a.created_at,
        }));
    }
    let mut out = String::new();
    for e in &d.episodes {
        let session = d.sessions.iter().find(|s| s.id == e.session_id);
        let record = crowd.store.study_episode(e.id).await?.and_then(|(_, r)| r);
        let line = json!({
            "study": d.study.spec.slug,
            "session": session,
            "episode": e,
            "transcript": record,
            "answers": answers.remove(&e.id).unwrap_or_default(),
        });
        // serde_json escapes control characters and quotes: one object stays on one line.
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(out)
}

fn error_response(e: CrowdError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "study admin request failed");
    }
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

/// The value as JSON, or the error's status with its message.
fn respond<T: serde::Serialize>(result: Result<T, CrowdError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => error_response(e),
    }
}

/// `{"ok": true}`, or the error's status with its message.
fn done(result: Result<(), CrowdError>) -> Response {
    respond(result.map(|()| json!({ "ok": true })))
}

/// An export as a file download, or the error's status with its message.
fn download(result: Result<String, CrowdError>, mime: &'static str, filename: String) -> Response {
    let body = match result {
        Ok(body) => body,
        Err(e) => return error_response(e),
    };
    let mut res = (StatusCode::OK, [(header::CONTENT_TYPE, mime)], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

type Shared = Arc<Crowd>;

/// `/api/admin/studies/...`: list and create, one study, its status, one episode, exclusions, exports.
pub fn router(crowd: Shared) -> Router {
    Router::new()
        .route("/api/admin/studies", get(list_route).post(create_route))
        .route("/api/admin/studies/{id}", get(detail_route))
        .route("/api/admin/studies/{id}/status", post(status_route))
        .route("/api/admin/studies/{id}/episodes/{episode}", get(episode_route))
        .route("/api/admin/studies/{id}/sessions/{session}/exclude", post(exclude_route))
        .route("/api/admin/studies/{id}/export.csv", get(csv_route))
        .route("/api/admin/studies/{id}/export.jsonl", get(jsonl_route))
        .with_state(crowd)
}

async fn list_route(_: AdminSession, State(crowd): State<Shared>) -> Response {
    respond(list(&crowd).await)
}

async fn create_route(_: AdminSession, State(crowd): State<Shared>, Json(form): Json<StudyForm>) -> Response {
    match create(&crowd, &form).await {
        Ok(outcome @ CreateOutcome::Created { .. }) => (StatusCode::CREATED, Json(outcome)).into_response(),
        Ok(CreateOutcome::Invalid { field, message }) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": message, "field": field }))).into_response()
        }
        Err(e) => error_response(e),
    }
}

async fn detail_route(_: AdminSession, State(crowd): State<Shared>, Path(id): Path<i64>) -> Response {
    respond(detail(&crowd, id, "").await)
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

async fn status_route(
    _: AdminSession,
    State(crowd): State<Shared>,
    Path(id): Path<i64>,
    Json(body): Json<StatusBody>,
) -> Response {
    done(set_status(&crowd, id, &body.status).await)
}

async fn episode_route(
    _: AdminSession,
    State(crowd): State<Shared>,
    Path((id, episode_id)): Path<(i64, i64)>,
) -> Response {
    respond(episode(&crowd, id, episode_id).await)
}

#[derive(Deserialize)]
struct ExcludeBody {
    excluded: bool,
    #[serde(default)]
    reason: String,
}

async fn exclude_route(
    _: AdminSession,
    State(crowd): State<Shared>,
    Path((id, session_id)): Path<(i64, i64)>,
    Json(body): Json<ExcludeBody>,
) -> Response {
    done(exclude(&crowd, id, session_id, body.excluded, &body.reason).await)
}

async fn csv_route(_: AdminSession, State(crowd): State<Shared>, Path(id): Path<i64>) -> Response {
    download(export_csv(&crowd, id).await, "text/csv; charset=utf-8", format!("study{id}.csv"))
}

async fn jsonl_route(_: AdminSession, State(crowd): State<Shared>, Path(id): Path<i64>) -> Response {
    download(export_jsonl(&crowd, id).await, "application/jsonl; charset=utf-8", format!("study{id}.jsonl"))
}
