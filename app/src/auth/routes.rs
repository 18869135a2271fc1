//! The sign-in endpoints: `POST /admin/login`, `POST /admin/logout`, `POST /admin/setup` (first run, this
//! machine only) and `GET /api/auth` (the visitor's state and CSRF token, for scripts). Each accepts an HTML
//! form (answered with a redirect, so the pages work before the browser bundle has loaded) or JSON (answered
//! with JSON). The guard has already checked CSRF and the general limits; login and setup add a per-IP limit
//! on attempts.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::guard::{PasswordCheck, RequestAuth, csrf_for, json_error};

/// Sign-in bodies are a password and a few fields.
const MAX_AUTH_BODY: usize = 16 * 1024;

/// The routes, for any router state (they read everything from the guard's [`RequestAuth`]). The pages at
/// the same paths (GET) are Leptos routes; `site_router` merges both.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/setup", post(setup))
        .route("/api/auth", get(status))
        .layer(DefaultBodyLimit::max(MAX_AUTH_BODY))
}

/// A sign-in body's fields, from JSON or a form.
struct Fields {
    json: bool,
    password: String,
    confirm: Option<String>,
    next: Option<String>,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
}

fn parse_fields(headers: &HeaderMap, body: &[u8]) -> Result<Fields, Box<Response>> {
    if is_json(headers) {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Box::new(json_error(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}"))))?;
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let password = text("password")
            .ok_or_else(|| Box::new(json_error(StatusCode::BAD_REQUEST, "send {\"password\": \"...\"}")))?;
        return Ok(Fields { json: true, password, confirm: text("confirm"), next: text("next") });
    }
    let mut fields = Fields { json: false, password: String::new(), confirm: None, next: None };
    let mut has_password = false;
    for (key, value) in form_urlencoded::parse(body) {
        match key.as_ref() {
            "password" => {
                fields.password = value.into_owned();
                has_password = true;
            }
            "confirm" => fields.confirm = Some(value.into_owned()),
            "next" => fields.next = Some(value.into_owned()),
            _ => {}
        }
    }
    if !has_password {
        return Err(Box::new(json_error(StatusCode::BAD_REQUEST, "the form has no password field")));
    }
    Ok(fields)
}

/// Where to go after signing in: a path on this site only (never `//host` or a full URL).
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control)
                && !p.starts_with("/admin/login")
                && !p.starts_with("/admin/setup") =>
        {
            p.to_string()
        }
        _ => "/admin".to_string(),
    }
}

/// A form error goes back to the page with a short code it knows how to say.
fn back_to(page: &str, code: &str, next: Option<&str>) -> Response {
    let mut target = format!("{page}?error={code}");
    if let Some(next) = next.filter(|n| !n.is_empty()) {
        target.push_str("&next=");
        target.push_str(&form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>());
    }
    Redirect::to(&target).into_response()
}

/// Signs in: a new session, its cookie, and the new CSRF token (bound to the session).
async fn signed_in(request: &RequestAuth, json: bool, next: Option<&str>) -> Response {
    if let Some(old) = &request.session_token
        && let Err(e) = request.auth.end_session(old).await
    {
        tracing::warn!(error = %e, "cannot end the previous session");
    }
    let token = match request.auth.start_session(&request.ip_text(), &request.user_agent).await {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "cannot store the session");
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "cannot store the session: database error");
        }
    };
    let cookie = request.auth.session_cookie(&token, request.secure);
    let mut res = if json {
        Json(json!({ "ok": true, "csrf_token": csrf_for(&token) })).into_response()
    } else {
        Redirect::to(&local_path(next)).into_response()
    };
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res
}

async fn login(Extension(request): Extension<RequestAuth>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(limited) = request.auth.login_limit().check(&request.ip_key()) {
        tracing::warn!(ip = %request.ip_text(), "login attempts over the limit");
        return limited.into_response();
    }
    let fields = match parse_fields(&headers, &body) {
        Ok(fields) => fields,
        Err(res) => return *res,
    };
    let next = fields.next.clone();
    match request.auth.check_password(fields.password).await {
        Ok(PasswordCheck::Correct) => {
            tracing::info!(ip = %request.ip_text(), "admin signed in");
            signed_in(&request, fields.json, next.as_deref()).await
        }
        Ok(PasswordCheck::Wrong) => {
            tracing::warn!(ip = %request.ip_text(), "wrong admin password");
            if fields.json {
                json_error(StatusCode::UNAUTHORIZED, "wrong password")
            } else {
                back_to("/admin/login", "wrong", next.as_deref())
            }
        }
        Ok(PasswordCheck::NoAdmin) => {
            if fields.json {
                json_error(
                    StatusCode::CONFLICT,
                    "no admin is set up: set USERRL_ADMIN_PASSWORD or create one at /admin/setup",
                )
            } else {
                back_to("/admin/login", "noadmin", None)
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check the admin password");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "cannot check the password now")
        }
    }
}

async fn logout(Extension(request): Extension<RequestAuth>, headers: HeaderMap) -> Response {
    if let Some(token) = &request.session_token
        && let Err(e) = request.auth.end_session(token).await
    {
        tracing::error!(error = %e, "cannot end the session");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "cannot end the session: database error");
    }
    let mut res = if is_json(&headers) || wants_json(&headers) {
        Json(json!({ "ok": true })).into_response()
    } else {
        Redirect::to("/").into_response()
    };
    res.headers_mut().append(header::SET_COOKIE, request.auth.clear_session_cookie(request.secure));
    res
}

fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

async fn setup(Extension(request): Extension<RequestAuth>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(limited) = request.auth.login_limit().check(&request.ip_key()) {
        return limited.into_response();
    }
    let json = is_json(&headers);
    let refuse = |status: StatusCode, code: &str, message: &str| {
        if json { json_error(status, message) } else { back_to("/admin/setup", code, None) }
    };
    if !request.loopback {
        tracing::warn!(ip = %request.ip_text(), "setup attempt from another machine refused");
        return refuse(
            StatusCode::FORBIDDEN,
            "remote",
            "the setup page only works from the machine running the server (loopback, without a proxy)",
        );
    }
    match request.auth.admin_exists().await {
        Ok(false) => {}
        Ok(true) => return refuse(StatusCode::FORBIDDEN, "exists", "an admin exists already: sign in at /admin/login"),
        Err(e) => {
            tracing::error!(error = %e, "cannot check for an admin");
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "cannot check for an admin: database error");
        }
    }
    let fields = match parse_fields(&headers, &body) {
        Ok(fields) => fields,
        Err(res) => return *res,
    };
    if let Err(message) = super::guard::check_new_password(&fields.password) {
        return refuse(StatusCode::BAD_REQUEST, "short", &message);
    }
    if fields.confirm.as_ref().is_some_and(|c| *c != fields.password) || (!json && fields.confirm.is_none()) {
        return refuse(StatusCode::BAD_REQUEST, "mismatch", "the two passwords differ");
    }
    match request.auth.create_admin(fields.password).await {
        Ok(true) => {
            tracing::info!("the admin was created by the setup page");
            signed_in(&request, json, Some("/admin")).await
        }
        Ok(false) => refuse(StatusCode::FORBIDDEN, "exists", "an admin exists already: sign in at /admin/login"),
        Err(e) => {
            tracing::error!(error = %e, "cannot create the admin");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "cannot store the admin: database error")
        }
    }
}

/// `GET /api/auth`: the visitor's state and the CSRF token to send with mutations (keep the cookies).
async fn status(Extension(request): Extension<RequestAuth>) -> Response {
    match request.status().await {
        Ok(status) => {
            let mut body = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
            body["csrf_token"] = json!(request.csrf_token);
            let mut res = Json(body).into_response();
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the auth state: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/admin/studies?x=1")), "/admin/studies?x=1");
        assert_eq!(local_path(Some("/runs/3")), "/runs/3");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", "evil", "/admin/login", "/a\nb"] {
            assert_eq!(local_path(Some(bad)), "/admin", "{bad:?}");
        }
        assert_eq!(local_path(None), "/admin");
    }
}
