//! Admin auth, CSRF protection and rate limits for the whole site (issue 6).
//!
//! # For the other pages and routes (read this first)
//!
//! One guard (`protect`, an axum middleware) runs in front of every route of `userrl serve`. For each request
//! it resolves the admin session cookie, gives every browser a visitor cookie, checks CSRF on every mutating
//! request, applies the per-IP rate limits and body cap, and leaves a [`RequestAuth`] in the request's
//! extensions. Everything below reads that extension; nothing opens its own path to the cookies.
//!
//! - **Who may do what.** Two levels, one check each, usable from axum handlers (extractors) and from Leptos
//!   server functions (async functions reading the request through `leptos_axum`):
//!   - admin only — `/admin/*` pages, `/api/admin/*`, studies, exports of people's data:
//!     handler argument `_: AdminSession`, or `require_admin().await?` in a server function;
//!   - operator — launching, cancelling, resuming runs and loading models: an admin session, or, while no
//!     admin exists at all, a request from this machine (loopback, no proxy headers): handler argument
//!     `_: Operator`, or `require_operator().await?`.
//!
//!   Reading pages and the read-only API stays public. The guard itself already refuses `/api/admin/*` without
//!   an admin session (401) and redirects `/admin/*` pages to the login page, so a forgotten check fails closed;
//!   still call the check in every admin handler (client-side navigation calls server functions directly).
//! - **CSRF.** Every POST/PUT/PATCH/DELETE outside `/v1` (bearer-key auth, no cookies) must carry the page's
//!   token in the `x-csrf-token` header or, for an HTML form (`application/x-www-form-urlencoded`), in a hidden
//!   field named `csrf_token` ([`CSRF_FIELD`]); else 403 with `{"error": ...}`. The browser bundle adds the
//!   header to every same-origin `fetch` (so server functions need nothing); forms put
//!   `<input type="hidden" name=CSRF_FIELD value=csrf_token() />` inside. Cross-site `Origin` or
//!   `Sec-Fetch-Site` headers are refused too. Scripts: `GET /api/auth` (keep the cookies) returns the token.
//! - **Rate limits.** [`RateLimiter`] is a per-key token bucket: `limiter.check(&key)` gives `Err(Limited)`,
//!   which is a 429 response with `Retry-After`; the crowd portal keys one by worker session. The crowd
//!   worker's server functions (`/api/fn/study_*`) count against a higher per-IP ceiling (`worker_rate`, for a
//!   lab of workers behind one NAT) instead of the general and mutation budgets.
//! - **Crowd workers without cookies.** MTurk frames the study page in a cross-site iframe, where our
//!   `SameSite=Strict` cookies are not sent. The worker's page therefore also holds its study session token
//!   and sends it in the `x-study-token` header ([`STUDY_TOKEN_HEADER`]) with `x-csrf-token` = `csrf_for(token)`;
//!   the guard checks that pair instead of the cookies. Entering a study with no cookies and no token needs no
//!   CSRF token (there is no credential to forge with). Admin routes keep cookies and CSRF.
//! - **Framing.** Study pages (`/study/*`) may be framed by MTurk's hosts only ([`STUDY_FRAME_ANCESTORS`]);
//!   every other response carries `X-Frame-Options: DENY` and `frame-ancestors 'none'`.

use leptos::prelude::*;
use leptos::server_fn::codec::Json;
use serde::{Deserialize, Serialize};

#[cfg(feature = "ssr")]
mod guard;
#[cfg(feature = "ssr")]
mod limit;
#[cfg(feature = "ssr")]
mod password;
#[cfg(feature = "ssr")]
mod routes;

#[cfg(feature = "ssr")]
pub use guard::{
    AdminSession, Auth, AuthConfig, AuthError, AuthRejection, MAX_BODY_BYTES, Operator, RequestAuth, SESSION_COOKIE,
    STUDY_FRAME_ANCESTORS, STUDY_TOKEN_HEADER, VISITOR_COOKIE, WORKER_ROUTES, csrf_for, hash_token, protect,
    require_admin, require_operator,
};
#[cfg(feature = "ssr")]
pub use limit::{Limited, Rate, RateLimiter};
#[cfg(feature = "ssr")]
pub use password::{hash_password, verify_password};
#[cfg(feature = "ssr")]
pub use routes::routes;

/// The request header that carries the CSRF token (what the browser bundle's `fetch` adds).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field that carries the CSRF token in plain HTML form posts.
pub const CSRF_FIELD: &str = "csrf_token";
/// Shortest admin password the setup page and `USERRL_ADMIN_PASSWORD` accept.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (argon2 takes any length; this bounds the work one request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// What a page needs to know about the visitor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    /// The request carries a valid admin session.
    pub signed_in: bool,
    /// An admin password exists (from the environment or made by the setup page).
    pub admin_exists: bool,
    /// The admin password comes from the environment (`USERRL_ADMIN_PASSWORD[_HASH]`).
    pub from_env: bool,
    /// The setup page would accept this visitor now: no admin yet, and the request comes from this machine.
    pub setup_allowed: bool,
    /// May launch, cancel and resume runs (see [`Operator`] on the server side).
    pub may_operate: bool,
}

/// The visitor's sign-in state, for pages that show or hide admin controls.
#[server(input = Json, prefix = "/api/fn", endpoint = "auth_status")]
pub async fn auth_status() -> Result<AuthInfo, ServerFnError> {
    let parts = use_context::<axum::http::request::Parts>()
        .ok_or_else(|| ServerFnError::new("the request is missing (server bug)"))?;
    let request = parts
        .extensions
        .get::<RequestAuth>()
        .ok_or_else(|| ServerFnError::new("the auth layer is missing (server bug)"))?;
    request.status().await.map_err(|e| ServerFnError::new(e.to_string()))
}

/// The CSRF token of the current request, for a hidden form field. The server reads it from the request; the
/// browser from the page's `<meta name="csrf-token">`, which the server wrote, so both render the same value.
pub fn csrf_token() -> String {
    #[cfg(feature = "ssr")]
    {
        use_context::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<RequestAuth>().map(|r| r.csrf_token.clone()))
            .unwrap_or_default()
    }
    #[cfg(all(feature = "hydrate", not(feature = "ssr")))]
    {
        document()
            .query_selector("meta[name=\"csrf-token\"]")
            .ok()
            .flatten()
            .and_then(|meta| meta.get_attribute("content"))
            .unwrap_or_default()
    }
    #[cfg(not(any(feature = "ssr", feature = "hydrate")))]
    {
        String::new()
    }
}

/// Adds the page's CSRF token (from `<meta name="csrf-token">`) as `x-csrf-token` to every same-origin
/// `fetch` that is not a GET or HEAD: server functions and any page script get CSRF protection without each
/// call knowing about it. Written without `<` and `&` so it can sit in the HTML as it is.
pub const FETCH_CSRF_SCRIPT: &str = r#"(function () {
  var meta = document.querySelector('meta[name="csrf-token"]');
  if (!meta || !window.fetch) { return; }
  var token = meta.getAttribute('content');
  var original = window.fetch;
  window.fetch = function (input, init) {
    try {
      var req = input instanceof Request ? input : null;
      var method = ((init ? init.method : null) || (req ? req.method : 'GET')).toUpperCase();
      var url = new URL(req ? req.url : String(input), window.location.href);
      if (method !== 'GET' ? (method !== 'HEAD' ? url.origin === window.location.origin : false) : false) {
        var headers = new Headers((init ? init.headers : null) || (req ? req.headers : undefined));
        if (!headers.has('x-csrf-token')) { headers.set('x-csrf-token', token); }
        init = Object.assign({}, init || {}, { headers: headers });
      }
    } catch (e) {}
    return original.call(window, input, init);
  };
})();"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_script_needs_no_escaping_in_html() {
        assert!(!FETCH_CSRF_SCRIPT.contains('<'));
        assert!(!FETCH_CSRF_SCRIPT.contains('&'));
        assert!(FETCH_CSRF_SCRIPT.contains(CSRF_HEADER));
    }
}
