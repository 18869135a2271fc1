//! Server functions of the study pages (`POST /api/fn/<name>`, JSON). The worker's calls carry no worker id:
//! the session comes from the `x-study-token` header (the page's copy of the token, for MTurk's cross-site
//! iframe where cookies are not sent), else from the study's `HttpOnly` cookie; only `study_enter` makes
//! one (it sets the cookie and hands the new token to the page once). The admin's calls
//! start with `require_admin()` (401 without an admin session). Errors set the HTTP status of their kind
//! (400 bad input, 401 no session, 403 refused, 404, 409 wrong state, 429 too many) with a message.

use std::collections::BTreeMap;

use leptos::prelude::*;
use leptos::server_fn::codec::Json;

use super::{
    AnswerView, Completion, CreateOutcome, Entry, StudyDetail, StudyEpisodeView, StudyForm, StudySummary, WorkerView,
};

#[cfg(feature = "ssr")]
mod backend {
    use std::sync::Arc;

    use axum::http::request::Parts;
    use axum::http::{HeaderValue, StatusCode, header};
    use leptos::prelude::*;

    use crate::auth::STUDY_TOKEN_HEADER;
    use crate::crowd::service::{Crowd, CrowdError, session_cookie, token_from_cookies};

    pub fn crowd() -> Result<Arc<Crowd>, ServerFnError> {
        use_context::<crate::server::AppContext>()
            .and_then(|ctx| ctx.crowd)
            .ok_or_else(|| ServerFnError::new("crowd studies are not enabled on this server"))
    }

    fn parts() -> Option<Parts> {
        use_context::<Parts>()
    }

    /// The study's session token: the header the page sends (the auth guard checked its CSRF token), else
    /// the study's cookie.
    pub fn token(slug: &str) -> Option<String> {
        let parts = parts()?;
        if let Some(header) = parts.headers.get(STUDY_TOKEN_HEADER) {
            return header.to_str().ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        }
        let cookies = parts.headers.get_all(header::COOKIE);
        cookies.iter().filter_map(|v| v.to_str().ok()).find_map(|h| token_from_cookies(h, slug))
    }

    /// The client's address as the auth guard saw it (proxy headers only where configured).
    pub fn ip() -> String {
        parts()
            .and_then(|p| p.extensions.get::<crate::auth::RequestAuth>().map(|a| a.ip_text()))
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }

    fn secure() -> bool {
        parts().and_then(|p| p.extensions.get::<crate::auth::RequestAuth>().map(|a| a.secure)).unwrap_or(false)
    }

    pub fn set_cookie(slug: &str, token: &str, max_age_s: i64) {
        if let (Some(res), Ok(value)) = (
            use_context::<leptos_axum::ResponseOptions>(),
            HeaderValue::from_str(&session_cookie(slug, token, secure(), max_age_s)),
        ) {
            res.append_header(header::SET_COOKIE, value);
        }
    }

    /// The site's own origin, for the worker link (`http(s)://host`).
    pub fn base_url() -> String {
        let Some(parts) = parts() else { return String::new() };
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let scheme = if secure() { "https" } else { "http" };
        format!("{scheme}://{host}")
    }

    pub fn fail(e: CrowdError) -> ServerFnError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(status);
            if let CrowdError::TooMany(secs) = &e
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                res.insert_header(header::RETRY_AFTER, v);
            }
        }
        if status.is_server_error() {
            tracing::error!(error = %e, "study request failed");
        }
        ServerFnError::new(e.to_string())
    }
}

/// Opening the study link with the platform's parameters: a session (new: the cookie is set) or, for an
/// MTurk preview, the study's description only.
#[server(input = Json, prefix = "/api/fn", endpoint = "study_enter")]
pub async fn study_enter(slug: String, params: BTreeMap<String, String>) -> Result<Entry, ServerFnError> {
    let crowd = backend::crowd()?;
    let token = backend::token(&slug);
    let (mut entry, new_token) =
        crowd.enter(&slug, &params, token.as_deref(), &backend::ip()).await.map_err(backend::fail)?;
    if let (Some(token), Entry::Session { view, access }) = (new_token, &mut entry) {
        // The cookie outlives the time limit a little, so a late reload still shows how the session ended.
        backend::set_cookie(&slug, &token, view.study.time_limit_s + 3600);
        *access = Some(super::WorkerAccess { csrf: crate::auth::csrf_for(&token), token });
    }
    Ok(entry)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "study_view")]
pub async fn study_view(slug: String) -> Result<WorkerView, ServerFnError> {
    let crowd = backend::crowd()?;
    crowd.view(&slug, backend::token(&slug).as_deref()).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "study_consent")]
pub async fn study_consent(slug: String, version: String) -> Result<WorkerView, ServerFnError> {
    let crowd = backend::crowd()?;
    crowd.consent(&slug, backend::token(&slug).as_deref(), &version).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "study_begin")]
pub async fn study_begin(slug: String) -> Result<WorkerView, ServerFnError> {
    let crowd = backend::crowd()?;
    crowd.begin(&slug, backend::token(&slug).as_deref()).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "study_answer")]
pub async fn study_answer(slug: String, prompt_id: u64, answer: AnswerView) -> Result<WorkerView, ServerFnError> {
    let crowd = backend::crowd()?;
    crowd.answer(&slug, backend::token(&slug).as_deref(), prompt_id, &answer).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "study_next")]
pub async fn study_next(slug: String) -> Result<WorkerView, ServerFnError> {
    let crowd = backend::crowd()?;
    crowd.next(&slug, backend::token(&slug).as_deref()).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "study_leave")]
pub async fn study_leave(slug: String) -> Result<WorkerView, ServerFnError> {
    let crowd = backend::crowd()?;
    crowd.leave(&slug, backend::token(&slug).as_deref()).await.map_err(backend::fail)
}

/// The completion code, once.
#[server(input = Json, prefix = "/api/fn", endpoint = "study_complete")]
pub async fn study_complete(slug: String) -> Result<Completion, ServerFnError> {
    let crowd = backend::crowd()?;
    crowd.complete(&slug, backend::token(&slug).as_deref()).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "admin_studies")]
pub async fn admin_studies() -> Result<Vec<StudySummary>, ServerFnError> {
    crate::auth::require_admin().await?;
    let crowd = backend::crowd()?;
    super::admin::list(&crowd).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "admin_study")]
pub async fn admin_study(id: i64) -> Result<StudyDetail, ServerFnError> {
    crate::auth::require_admin().await?;
    let crowd = backend::crowd()?;
    super::admin::detail(&crowd, id, &backend::base_url()).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "admin_create_study")]
pub async fn admin_create_study(form: StudyForm) -> Result<CreateOutcome, ServerFnError> {
    crate::auth::require_admin().await?;
    let crowd = backend::crowd()?;
    super::admin::create(&crowd, &form).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "admin_study_status")]
pub async fn admin_study_status(id: i64, status: String) -> Result<(), ServerFnError> {
    crate::auth::require_admin().await?;
    let crowd = backend::crowd()?;
    super::admin::set_status(&crowd, id, &status).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "admin_exclude")]
pub async fn admin_exclude(
    study_id: i64,
    session_id: i64,
    excluded: bool,
    reason: String,
) -> Result<(), ServerFnError> {
    crate::auth::require_admin().await?;
    let crowd = backend::crowd()?;
    super::admin::exclude(&crowd, study_id, session_id, excluded, &reason).await.map_err(backend::fail)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "admin_study_episode")]
pub async fn admin_study_episode(study_id: i64, episode_id: i64) -> Result<StudyEpisodeView, ServerFnError> {
    crate::auth::require_admin().await?;
    let crowd = backend::crowd()?;
    super::admin::episode(&crowd, study_id, episode_id).await.map_err(backend::fail)
}
