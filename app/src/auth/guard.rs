//! The guard in front of every route: admin sessions from the cookie, the visitor cookie CSRF tokens are bound
//! to when nobody is signed in, CSRF and cross-site checks on mutations, per-IP rate limits, the body cap, and
//! the two authorization checks (`AdminSession`, `Operator`) as axum extractors and as server-function calls.
//!
//! Tokens: a session token and a visitor secret are 256 random bits, sent as 64 hex digits in `HttpOnly`,
//! `SameSite=Strict` cookies. The server stores only the SHA-256 of a session token. A page's CSRF token is the
//! SHA-256 of a fixed label and the secret it is bound to (the session token when signed in, else the visitor
//! secret): pages can show it, and it cannot be turned back into the cookie. It needs no server key, so it
//! survives restarts and works across processes sharing one database.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use leptos::prelude::*;
use sha2::{Digest, Sha256};
use userrl_store::{Store, StoreError};

use super::limit::{Rate, RateLimiter};
use super::{AuthInfo, CSRF_FIELD, CSRF_HEADER, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};

/// The admin session cookie.
pub const SESSION_COOKIE: &str = "userrl_session";
/// The visitor cookie every browser gets; CSRF tokens are bound to it while nobody is signed in.
pub const VISITOR_COOKIE: &str = "userrl_visitor";
/// The largest request body outside `/v1` (server functions read bodies without a limit of their own).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The most of a form body read to find its CSRF field.
const MAX_FORM_SCAN: usize = 64 * 1024;
/// Paths that authenticate without cookies (bearer keys): no CSRF check.
const CSRF_EXEMPT: [&str; 1] = ["/v1/"];
/// The crowd worker's server functions (`study_enter`, `study_view`, ...): per-worker limits and a per-IP
/// ceiling instead of the site's per-IP budgets, and a cookie-less session path (see [`STUDY_TOKEN_HEADER`]).
pub const WORKER_ROUTES: &str = "/api/fn/study_";
/// The header that carries a worker's study session token where cookies are not sent (the study page framed
/// by MTurk in a cross-site iframe, where `SameSite=Strict` cookies stay home). A worker call with this header
/// must carry `csrf_for(token)` as its CSRF token; the site's cookies play no part in it.
pub const STUDY_TOKEN_HEADER: &str = "x-study-token";
/// Who may frame the study pages: MTurk shows an ExternalQuestion in an iframe on these hosts (production,
/// its worker site, the sandbox). Every other page may not be framed at all.
pub const STUDY_FRAME_ANCESTORS: &str =
    "frame-ancestors 'self' https://www.mturk.com https://worker.mturk.com https://workersandbox.mturk.com";

/// A misconfigured secret, or a store failure while checking one.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Config(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of [`Auth`]; [`AuthConfig::from_env`] reads them from the environment.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The admin's argon2 PHC hash from the environment. When set it is the only admin password (the setup page
    /// is closed); when `None`, the admin is whoever the setup page stored in the database, if anyone.
    pub admin_password_hash: Option<String>,
    /// Always mark cookies `Secure` (behind an https proxy that does not send `X-Forwarded-Proto`).
    pub secure_cookies: bool,
    /// Take the client address from the last `X-Forwarded-For` hop (only behind a proxy that sets it).
    pub trust_forwarded: bool,
    pub session_ttl: Duration,
    /// Login and setup attempts per IP (this machine included).
    pub login_rate: Rate,
    /// Mutating requests (POST/PUT/PATCH/DELETE) per IP, except from this machine (loopback).
    pub mutate_rate: Rate,
    /// Every request per IP, except from this machine (loopback).
    pub general_rate: Rate,
    /// The crowd worker's calls per IP, except from this machine: a ceiling high enough for a lab of workers
    /// behind one NAT (each worker has a budget of its own in the crowd portal). Worker calls count against
    /// neither `general_rate` nor `mutate_rate`, so polling an episode never eats the site's budgets.
    pub worker_rate: Rate,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            admin_password_hash: None,
            secure_cookies: false,
            trust_forwarded: false,
            session_ttl: Duration::from_secs(12 * 3600),
            login_rate: Rate::per_minute(5, 5),
            mutate_rate: Rate::per_second(5.0, 60),
            general_rate: Rate::per_second(30.0, 300),
            worker_rate: Rate::per_second(100.0, 1000),
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl AuthConfig {
    /// Reads `USERRL_ADMIN_PASSWORD` (hashed here, kept only as the hash) or `USERRL_ADMIN_PASSWORD_HASH` (an
    /// argon2 PHC string), `USERRL_SECURE_COOKIES=1`, `USERRL_TRUST_FORWARDED=1` and `USERRL_SESSION_HOURS`
    /// (default 12). Rate limits keep their defaults.
    pub fn from_env() -> Result<AuthConfig, AuthError> {
        let admin_password_hash = match (env_value("USERRL_ADMIN_PASSWORD"), env_value("USERRL_ADMIN_PASSWORD_HASH")) {
            (Some(_), Some(_)) => {
                return Err(AuthError::Config(
                    "set USERRL_ADMIN_PASSWORD or USERRL_ADMIN_PASSWORD_HASH, not both".into(),
                ));
            }
            (Some(password), None) => {
                check_new_password(&password).map_err(|e| AuthError::Config(format!("USERRL_ADMIN_PASSWORD: {e}")))?;
                Some(super::password::hash_password(&password)?)
            }
            (None, Some(hash)) => {
                let hash = hash.trim().to_string();
                super::password::check_phc(&hash)
                    .map_err(|e| AuthError::Config(format!("USERRL_ADMIN_PASSWORD_HASH: {e}")))?;
                Some(hash)
            }
            (None, None) => None,
        };
        let mut config = AuthConfig {
            admin_password_hash,
            secure_cookies: env_flag("USERRL_SECURE_COOKIES"),
            trust_forwarded: env_flag("USERRL_TRUST_FORWARDED"),
            ..AuthConfig::default()
        };
        if let Some(hours) = env_value("USERRL_SESSION_HOURS") {
            let hours: f64 = hours
                .trim()
                .parse()
                .ok()
                .filter(|h: &f64| h.is_finite() && *h > 0.0 && *h <= 24.0 * 365.0)
                .ok_or_else(|| {
                    AuthError::Config(format!("USERRL_SESSION_HOURS: {hours:?} is not a number of hours"))
                })?;
            config.session_ttl = Duration::from_secs_f64(hours * 3600.0);
        }
        Ok(config)
    }
}

/// Why a new password is refused (the setup page and `USERRL_ADMIN_PASSWORD` use the same rule).
pub(crate) fn check_new_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("the password must have at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("the password must have at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// The site's auth state: the store, the settings and the rate limiters. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: AuthConfig,
    /// Set once an admin is known to exist (admins are never removed, so it never goes back).
    admin_known: AtomicBool,
    login_limit: RateLimiter<IpAddr>,
    mutate_limit: RateLimiter<IpAddr>,
    general_limit: RateLimiter<IpAddr>,
    worker_limit: RateLimiter<IpAddr>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("admin_from_env", &self.inner.config.admin_password_hash.is_some())
            .finish_non_exhaustive()
    }
}

/// How a password check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    Correct,
    Wrong,
    NoAdmin,
}

impl Auth {
    pub fn new(store: Store, config: AuthConfig) -> Auth {
        let inner = Inner {
            admin_known: AtomicBool::new(config.admin_password_hash.is_some()),
            login_limit: RateLimiter::new(config.login_rate),
            mutate_limit: RateLimiter::new(config.mutate_rate),
            general_limit: RateLimiter::new(config.general_rate),
            worker_limit: RateLimiter::new(config.worker_rate),
            store,
            config,
        };
        Auth { inner: Arc::new(inner) }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// The limiter of login and setup attempts per IP.
    pub fn login_limit(&self) -> &RateLimiter<IpAddr> {
        &self.inner.login_limit
    }

    /// Whether an admin password exists (environment or database).
    pub async fn admin_exists(&self) -> Result<bool, StoreError> {
        if self.inner.admin_known.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let exists = self.inner.store.admin_password_hash().await?.is_some();
        if exists {
            self.inner.admin_known.store(true, Ordering::Relaxed);
        }
        Ok(exists)
    }

    async fn admin_hash(&self) -> Result<Option<String>, StoreError> {
        match &self.inner.config.admin_password_hash {
            Some(hash) => Ok(Some(hash.clone())),
            None => self.inner.store.admin_password_hash().await,
        }
    }

    /// Checks a password against the admin's hash (argon2 runs off the async workers).
    pub async fn check_password(&self, password: String) -> Result<PasswordCheck, AuthError> {
        let Some(hash) = self.admin_hash().await? else { return Ok(PasswordCheck::NoAdmin) };
        let ok = tokio::task::spawn_blocking(move || super::password::verify_password(&password, &hash))
            .await
            .map_err(|e| AuthError::Hash(e.to_string()))??;
        Ok(if ok { PasswordCheck::Correct } else { PasswordCheck::Wrong })
    }

    /// Stores the first admin's password; `Ok(false)` when an admin exists already (also from the environment).
    pub async fn create_admin(&self, password: String) -> Result<bool, AuthError> {
        if self.inner.config.admin_password_hash.is_some() {
            return Ok(false);
        }
        check_new_password(&password).map_err(AuthError::Config)?;
        let hash = tokio::task::spawn_blocking(move || super::password::hash_password(&password))
            .await
            .map_err(|e| AuthError::Hash(e.to_string()))??;
        let created = self.inner.store.create_admin(&hash).await?;
        self.inner.admin_known.store(true, Ordering::Relaxed);
        Ok(created)
    }

    /// Starts an admin session; returns the cookie's token (only its hash is stored).
    pub async fn start_session(&self, ip: &str, user_agent: &str) -> Result<String, StoreError> {
        let now = now_ms();
        // Old rows are useless: clear them while we are writing anyway.
        if let Err(e) = self.inner.store.delete_expired_sessions(now).await {
            tracing::warn!(error = %e, "cannot remove expired sessions");
        }
        let token = random_token();
        let ttl = i64::try_from(self.inner.config.session_ttl.as_millis()).unwrap_or(i64::MAX);
        let user_agent: String = user_agent.chars().take(256).collect();
        self.inner.store.create_session(&hash_token(&token), now.saturating_add(ttl), ip, &user_agent).await?;
        Ok(token)
    }

    pub async fn end_session(&self, token: &str) -> Result<(), StoreError> {
        self.inner.store.delete_session(&hash_token(token)).await.map(|_| ())
    }

    /// The `Set-Cookie` value of a new session.
    pub fn session_cookie(&self, token: &str, secure: bool) -> HeaderValue {
        let max_age = self.inner.config.session_ttl.as_secs();
        cookie(SESSION_COOKIE, token, Some(max_age), secure)
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_session_cookie(&self, secure: bool) -> HeaderValue {
        cookie(SESSION_COOKIE, "", Some(0), secure)
    }

    /// Runs the guard for one request (what [`protect`] installs).
    async fn guard(&self, mut req: Request, next: Next) -> Response {
        let path = req.uri().path().to_string();
        let cookie_free = CSRF_EXEMPT.iter().any(|p| path.starts_with(p) || path == p.trim_end_matches('/'));
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_canonical());
        let headers = req.headers();
        let proxied = ["x-forwarded-for", "x-real-ip", "forwarded"].iter().any(|h| headers.contains_key(*h));
        let client_ip =
            if self.inner.config.trust_forwarded && proxied { forwarded_for(headers).or(peer) } else { peer };
        let loopback = match (proxied, self.inner.config.trust_forwarded) {
            (false, _) => peer.is_some_and(|ip| ip.is_loopback()),
            (true, true) => client_ip.is_some_and(|ip| ip.is_loopback()),
            (true, false) => false,
        };
        // Requests without a peer address (in-process tests) share one bucket.
        let ip_key = client_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let worker_route = path.starts_with(WORKER_ROUTES);
        let limit = if worker_route { &self.inner.worker_limit } else { &self.inner.general_limit };
        if !loopback && let Err(limited) = limit.check(&ip_key) {
            return frame_policy(limited.into_response(), false);
        }

        if !cookie_free {
            let declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over the limit of {MAX_BODY_BYTES} bytes"),
                );
            }
            req = req.map(|body| Body::new(http_body_util::Limited::new(body, MAX_BODY_BYTES)));
        }

        let headers = req.headers();
        let study_token = worker_route
            .then(|| headers.get(STUDY_TOKEN_HEADER).map(|v| v.to_str().unwrap_or("").trim().to_string()))
            .flatten();
        let has_cookies = headers.contains_key(header::COOKIE);
        let secure = self.inner.config.secure_cookies || came_over_https(headers);
        let session_cookie = cookie_value(headers, SESSION_COOKIE).filter(|t| is_token(t));
        let had_session_cookie = cookie_value(headers, SESSION_COOKIE).is_some();
        let visitor_cookie = cookie_value(headers, VISITOR_COOKIE).filter(|t| is_token(t));
        let admin = match &session_cookie {
            Some(token) => match self.inner.store.session(&hash_token(token), now_ms()).await {
                Ok(Some(row)) => Some(AdminSession { expires_at: row.expires_at }),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the session; treating the request as signed out");
                    None
                }
            },
            None => None,
        };
        let had_valid_session = admin.is_some();
        let session_token = if had_valid_session { session_cookie } else { None };
        let (visitor, new_visitor) = match visitor_cookie {
            Some(v) => (v, false),
            None => (random_token(), true),
        };
        let csrf_token = csrf_for(session_token.as_deref().unwrap_or(&visitor));
        let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();

        // Every answer from here on (refusals included) carries the cookie changes this request needs.
        let visitor_cookie = new_visitor.then(|| cookie(VISITOR_COOKIE, &visitor, None, secure));
        let clear_session = (had_session_cookie && !had_valid_session).then(|| self.clear_session_cookie(secure));
        let study_page = matches!(req.method(), &Method::GET | &Method::HEAD) && path.starts_with("/study/");
        let finish = move |mut res: Response| -> Response {
            res = frame_policy(res, study_page);
            if let Some(set) = visitor_cookie.clone() {
                res.headers_mut().append(header::SET_COOKIE, set);
            }
            let sets_session = res.headers().get_all(header::SET_COOKIE).iter().any(|v| {
                v.to_str().is_ok_and(|v| v.starts_with(SESSION_COOKIE) && v[SESSION_COOKIE.len()..].starts_with('='))
            });
            if let Some(clear) = clear_session.clone().filter(|_| !sets_session) {
                // A cookie that signs nobody in (expired, forged, from an old database) is removed.
                res.headers_mut().append(header::SET_COOKIE, clear);
            }
            res
        };
        let method = req.method().clone();
        let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
        let admin_api = path == "/api/admin" || path.starts_with("/api/admin/");
        if admin_api && admin.is_none() {
            return finish(AuthRejection::SignInRequired { page: false, next: String::new() }.into_response());
        }
        if mutating && !cookie_free {
            if let Err(refusal) = same_origin(req.headers(), self.inner.config.trust_forwarded) {
                return finish(json_error(StatusCode::FORBIDDEN, refusal));
            }
            // Server functions are POSTs even when they only read: a busy page on this machine must not trip this.
            // Worker calls have their own ceiling (above) and per-worker budgets in the crowd portal.
            if !worker_route
                && !loopback
                && let Err(limited) = self.inner.mutate_limit.check(&ip_key)
            {
                return finish(limited.into_response());
            }
            let (given, rebuilt) = match presented_csrf(req).await {
                Ok(found) => found,
                Err(res) => return finish(*res),
            };
            req = rebuilt;
            // The worker's cookie-less path: the token the page holds is the secret its CSRF token is bound to.
            // A worker call with no cookies and no token (entering the study inside MTurk's iframe) carries no
            // credential a forged request could ride on, so there is nothing for a CSRF token to protect; the
            // cross-site check above still applies, and such a call can only open a new session.
            let expected = match &study_token {
                Some(token) if is_token(token) => csrf_for(token),
                Some(_) => return finish(json_error(StatusCode::FORBIDDEN, "malformed study session token")),
                None if worker_route && !has_cookies => String::new(),
                None => csrf_token.clone(),
            };
            match given {
                _ if expected.is_empty() => {}
                None => {
                    let message = format!(
                        "missing CSRF token: send the page's token in the {CSRF_HEADER} header or the {CSRF_FIELD} \
                         form field"
                    );
                    return finish(json_error(StatusCode::FORBIDDEN, message));
                }
                Some(given) if !same_secret(given.as_bytes(), expected.as_bytes()) => {
                    let why = if study_token.is_some() {
                        "the CSRF token does not match the study session token: reload the study page"
                    } else if new_visitor && session_token.is_none() {
                        "the CSRF token belongs to no cookie of this browser: load a page of this site first"
                    } else {
                        "the CSRF token does not match this session: reload the page"
                    };
                    return finish(json_error(StatusCode::FORBIDDEN, why));
                }
                Some(_) => {}
            }
        }

        let page = matches!(method, Method::GET | Method::HEAD);
        let admin_page = page && (path == "/admin" || path.starts_with("/admin/"));
        let open_page = matches!(path.as_str(), "/admin/login" | "/admin/setup");
        if admin_page && !open_page && admin.is_none() {
            let next = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            return finish(AuthRejection::SignInRequired { page: true, next }.into_response());
        }
        if page && path == "/admin/login" && admin.is_some() {
            return finish(Redirect::to("/admin").into_response());
        }
        let setup_refused = page && path == "/admin/setup" && !self.setup_allowed(loopback).await;

        let request_auth = RequestAuth {
            auth: self.clone(),
            client_ip,
            loopback,
            admin,
            csrf_token,
            secure,
            user_agent,
            session_token,
        };
        req.extensions_mut().insert(request_auth);
        let mut res = next.run(req).await;

        if setup_refused && res.status().is_success() {
            *res.status_mut() = StatusCode::FORBIDDEN;
        }
        if admin_page {
            // Admin pages show people's data: no caching (and, like every page but the study's, no framing).
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        finish(res)
    }

    /// The setup page accepts a visitor only while no admin exists and only from this machine.
    async fn setup_allowed(&self, loopback: bool) -> bool {
        loopback && matches!(self.admin_exists().await, Ok(false))
    }
}

/// Who may frame a response: study pages only MTurk's hosts (and this site), everything else nobody. A
/// policy a handler set itself is kept.
fn frame_policy(mut res: Response, study_page: bool) -> Response {
    let headers = res.headers_mut();
    if headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        return res;
    }
    if study_page {
        // `frame-ancestors` overrides X-Frame-Options where both are set; old browsers without CSP would then
        // refuse the frame MTurk needs, so study pages carry the CSP alone.
        headers.remove(header::X_FRAME_OPTIONS);
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(STUDY_FRAME_ANCESTORS));
    } else {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    }
    res
}

/// Installs the guard in front of every route of `router` (idempotent: a request guarded once passes the
/// inner guards untouched, so nested routers may each install it).
pub fn protect<S: Clone + Send + Sync + 'static>(router: axum::Router<S>, auth: &Auth) -> axum::Router<S> {
    router.layer(axum::middleware::from_fn_with_state(auth.clone(), guard))
}

async fn guard(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    if req.extensions().get::<RequestAuth>().is_some() {
        return next.run(req).await;
    }
    auth.guard(req, next).await
}

/// What the guard found out about a request; in the request's extensions for every handler and server
/// function (`Extension<RequestAuth>`, or `Parts::extensions` in Leptos).
#[derive(Clone)]
pub struct RequestAuth {
    pub auth: Auth,
    /// The client's address (the peer, or the proxy's `X-Forwarded-For` hop when trusted); `None` in
    /// in-process requests without connection info.
    pub client_ip: Option<IpAddr>,
    /// The request comes from this machine, directly (no proxy headers).
    pub loopback: bool,
    /// The signed-in admin, if any.
    pub admin: Option<AdminSession>,
    /// The CSRF token for this request's pages and forms.
    pub csrf_token: String,
    /// Cookies set for this request's answer should be `Secure`.
    pub secure: bool,
    pub user_agent: String,
    pub(crate) session_token: Option<String>,
}

impl std::fmt::Debug for RequestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAuth")
            .field("client_ip", &self.client_ip)
            .field("loopback", &self.loopback)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl RequestAuth {
    /// The client address as text, for the session row.
    pub fn ip_text(&self) -> String {
        self.client_ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// The key per-IP limits use.
    pub fn ip_key(&self) -> IpAddr {
        self.client_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// What the pages show about the visitor.
    pub async fn status(&self) -> Result<AuthInfo, StoreError> {
        let admin_exists = self.auth.admin_exists().await?;
        Ok(AuthInfo {
            signed_in: self.admin.is_some(),
            admin_exists,
            from_env: self.auth.config().admin_password_hash.is_some(),
            setup_allowed: !admin_exists && self.loopback,
            may_operate: self.admin.is_some() || (!admin_exists && self.loopback),
        })
    }
}

/// A signed-in admin. As an extractor it refuses requests without an admin session: 401 with a JSON message
/// for API calls, a redirect to the login page for page loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSession {
    /// Unix milliseconds when the session ends.
    pub expires_at: i64,
}

/// Someone allowed to launch, cancel and resume runs and to load models: a signed-in admin, or anyone on this
/// machine while no admin exists (the local-first default; the server binds 127.0.0.1 unless told otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// `None` when allowed as a local user with no admin set up.
    pub admin: Option<AdminSession>,
}

/// Why a request was refused by [`AdminSession`] or [`Operator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRejection {
    /// Needs an admin session: a page load is sent to the login page (`next` = where to go after), an API call
    /// gets 401.
    SignInRequired { page: bool, next: String },
    /// No admin exists and the request does not come from this machine: 403.
    LocalOnly,
    /// The store failed while checking: 503.
    Unavailable(String),
    /// The guard did not run for this request (a server bug): 500.
    LayerMissing,
}

impl AuthRejection {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthRejection::SignInRequired { page: true, .. } => StatusCode::SEE_OTHER,
            AuthRejection::SignInRequired { page: false, .. } => StatusCode::UNAUTHORIZED,
            AuthRejection::LocalOnly => StatusCode::FORBIDDEN,
            AuthRejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthRejection::LayerMissing => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            AuthRejection::SignInRequired { .. } => "sign in as admin first (/admin/login)".into(),
            AuthRejection::LocalOnly => "no admin is set up, so this only works from the machine running the server; \
                                         set USERRL_ADMIN_PASSWORD or create the admin at /admin/setup"
                .into(),
            AuthRejection::Unavailable(e) => format!("cannot check the admin session: {e}"),
            AuthRejection::LayerMissing => "the auth layer is missing (server bug)".into(),
        }
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        if let AuthRejection::SignInRequired { page: true, next } = &self {
            let target = if next.is_empty() || next == "/admin/login" {
                "/admin/login".to_string()
            } else {
                format!("/admin/login?next={}", percent_encode(next))
            };
            return Redirect::to(&target).into_response();
        }
        if matches!(self, AuthRejection::LayerMissing | AuthRejection::Unavailable(_)) {
            tracing::error!(error = %self.message(), "auth check failed");
        }
        json_error(self.status(), self.message())
    }
}

fn request_auth(parts: &Parts) -> Result<&RequestAuth, AuthRejection> {
    parts.extensions.get::<RequestAuth>().ok_or(AuthRejection::LayerMissing)
}

/// Page loads (GET/HEAD outside `/api/`) are redirected; everything else gets a status.
fn is_page_load(parts: &Parts) -> bool {
    matches!(parts.method, Method::GET | Method::HEAD) && !parts.uri.path().starts_with("/api/")
}

impl<S: Send + Sync> FromRequestParts<S> for AdminSession {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<AdminSession, AuthRejection> {
        let auth = request_auth(parts)?;
        auth.admin.clone().ok_or_else(|| AuthRejection::SignInRequired {
            page: is_page_load(parts),
            next: parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default(),
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Operator, AuthRejection> {
        let auth = request_auth(parts)?;
        if let Some(admin) = &auth.admin {
            return Ok(Operator { admin: Some(admin.clone()) });
        }
        match auth.auth.admin_exists().await {
            Ok(true) => Err(AuthRejection::SignInRequired {
                page: is_page_load(parts),
                next: parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default(),
            }),
            Ok(false) if auth.loopback => Ok(Operator { admin: None }),
            Ok(false) => Err(AuthRejection::LocalOnly),
            Err(e) => Err(AuthRejection::Unavailable(e.to_string())),
        }
    }
}

/// Runs an extractor on the current server-function request; a refusal sets the response status (401, 403,
/// ...) and becomes the function's error.
async fn check<T: FromRequestParts<(), Rejection = AuthRejection>>() -> Result<T, ServerFnError> {
    let Some(mut parts) = use_context::<Parts>() else {
        return Err(ServerFnError::new(AuthRejection::LayerMissing.message()));
    };
    match T::from_request_parts(&mut parts, &()).await {
        Ok(found) => Ok(found),
        Err(rejection) => {
            let status = match rejection.status() {
                // A server function answers data, not a page: no redirect.
                StatusCode::SEE_OTHER => StatusCode::UNAUTHORIZED,
                other => other,
            };
            if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
                res.set_status(status);
            }
            Err(ServerFnError::new(rejection.message()))
        }
    }
}

/// In a server function: the signed-in admin, or an error (status 401) saying to sign in.
///
/// ```text
/// #[server(input = Json, prefix = "/api/fn", endpoint = "list_studies")]
/// pub async fn list_studies() -> Result<Vec<Study>, ServerFnError> {
///     crate::auth::require_admin().await?;
///     ...
/// }
/// ```
pub async fn require_admin() -> Result<AdminSession, ServerFnError> {
    check::<AdminSession>().await
}

/// In a server function: allowed to launch/cancel/resume runs and load models (see [`Operator`]), or an error
/// (401 when an admin exists and nobody is signed in, 403 for a remote visitor while no admin exists).
pub async fn require_operator() -> Result<Operator, ServerFnError> {
    check::<Operator>().await
}

/// The CSRF token bound to a cookie secret (a session token or a visitor secret).
pub fn csrf_for(secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"userrl csrf v1\0");
    hasher.update(secret.as_bytes());
    hex(&hasher.finalize())
}

/// The stored form of a session token: lowercase hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// 256 random bits as 64 hex digits, from the operating system's generator (through `rand`'s thread RNG, a
/// CSPRNG seeded and reseeded from it).
pub(crate) fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A well-formed token: 64 lowercase hex digits (anything else is not ours and is never looked up).
fn is_token(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Compares in time that does not depend on where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A cookie's value from the `Cookie` headers (the first one of that name).
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` when asked; `max_age` `None` = until
/// the browser closes.
fn cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        text.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        text.push_str("; Secure");
    }
    // Names and values are ours (hex digits), so this cannot fail; an empty cookie is the safe fallback.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("userrl_invalid=; Max-Age=0"))
}

/// An https request as told by a TLS-terminating proxy. Believing it only ever adds `Secure` to cookies.
fn came_over_https(headers: &HeaderMap) -> bool {
    let proto = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("");
    let forwarded = headers.get("forwarded").and_then(|v| v.to_str().ok()).unwrap_or("");
    proto.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        || forwarded.to_ascii_lowercase().contains("proto=https")
}

/// The client address a trusted proxy appended: the last `X-Forwarded-For` entry (earlier ones are whatever the
/// client sent), or `X-Real-IP`.
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .next_back()
        .and_then(|v| v.split(',').rfind(|s| !s.trim().is_empty()))
        .map(|s| s.trim().to_string());
    let real = || headers.get("x-real-ip").and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string());
    last.or_else(real).and_then(|s| parse_ip(&s)).map(|ip| ip.to_canonical())
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| text.trim_start_matches('[').split(']').next().and_then(|s| s.parse().ok()))
}

/// Refuses cross-site requests by the browser's own headers: `Sec-Fetch-Site` must be `same-origin` or `none`
/// (typed by the user), and an `Origin` must name this host. Requests without either (scripts, old browsers)
/// rely on the CSRF token alone.
fn same_origin(headers: &HeaderMap, trust_forwarded: bool) -> Result<(), String> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        let site = site.trim().to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return Err(format!("cross-site request refused (Sec-Fetch-Site: {site})"));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("null").trim().to_ascii_lowercase();
    let host = trust_forwarded
        .then(|| headers.get("x-forwarded-host").and_then(|v| v.to_str().ok()))
        .flatten()
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        .map(|h| h.split(',').next().unwrap_or("").trim().to_ascii_lowercase());
    let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    match (authority, host) {
        (Some(authority), Some(host)) if same_authority(authority, &host) => Ok(()),
        (_, None) => Err("a request with an Origin must carry a Host header".into()),
        _ => Err(format!("cross-origin request refused (Origin: {origin})")),
    }
}

/// `host[:port]` equality, with the default ports of http and https omitted on either side.
fn same_authority(origin: &str, host: &str) -> bool {
    let strip = |s: &str| s.trim_end_matches('/').trim_end_matches(":80").trim_end_matches(":443").to_string();
    strip(origin) == strip(host)
}

/// The CSRF token the request presents: the header, else a form body's `csrf_token` field (the body is read,
/// up to `MAX_FORM_SCAN`, and put back for the handler).
async fn presented_csrf(req: Request) -> Result<(Option<String>, Request), Box<Response>> {
    if let Some(value) = req.headers().get(CSRF_HEADER) {
        let token = value.to_str().ok().map(|s| s.trim().to_string());
        return Ok((token, req));
    }
    let is_form = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    if !is_form {
        return Ok((None, req));
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_FORM_SCAN).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return Err(Box::new(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a form body is limited to {MAX_FORM_SCAN} bytes"),
            )));
        }
    };
    let token = form_urlencoded::parse(&bytes).find(|(k, _)| k == CSRF_FIELD).map(|(_, v)| v.trim().to_string());
    Ok((token, Request::from_parts(parts, Body::from(bytes))))
}

/// Percent-encodes a path for a query value (keeps unreserved characters and `/`).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub(crate) fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn tokens_are_random_hex_and_csrf_tokens_are_bound_to_their_secret() {
        let a = random_token();
        let b = random_token();
        assert!(is_token(&a) && is_token(&b));
        assert_ne!(a, b);
        assert_eq!(csrf_for(&a), csrf_for(&a));
        assert_ne!(csrf_for(&a), csrf_for(&b));
        assert_ne!(csrf_for(&a), a, "the CSRF token must not reveal the cookie");
        assert_ne!(hash_token(&a), csrf_for(&a), "the stored hash must not be the page's token");
        assert!(!is_token("ABC"));
        assert!(!is_token(&"g".repeat(64)));
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let h = headers(&[("cookie", "a=1; userrl_visitor=abc"), ("cookie", "userrl_session=\"xyz\"")]);
        assert_eq!(cookie_value(&h, VISITOR_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie_value(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie_value(&h, "missing"), None);
        let set = cookie(SESSION_COOKIE, "t", Some(60), true);
        assert_eq!(set, "userrl_session=t; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure");
    }

    #[test]
    fn cross_site_headers_are_refused_and_same_origin_ones_pass() {
        assert!(same_origin(&headers(&[]), false).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")]), false).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "cross-site")]), false).is_err());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-site")]), false).is_err());
        let ok = headers(&[("origin", "http://127.0.0.1:3000"), ("host", "127.0.0.1:3000")]);
        assert!(same_origin(&ok, false).is_ok());
        let default_port = headers(&[("origin", "https://example.org"), ("host", "example.org:443")]);
        assert!(same_origin(&default_port, false).is_ok());
        let evil = headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:3000")]);
        assert!(same_origin(&evil, false).is_err());
        let null = headers(&[("origin", "null"), ("host", "127.0.0.1:3000")]);
        assert!(same_origin(&null, false).is_err());
        let proxied = headers(&[
            ("origin", "https://userrl.example"),
            ("host", "127.0.0.1:3000"),
            ("x-forwarded-host", "userrl.example"),
        ]);
        assert!(same_origin(&proxied, true).is_ok());
        assert!(same_origin(&proxied, false).is_err());
    }

    #[test]
    fn the_trusted_client_address_is_the_last_forwarded_hop() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 10.0.0.1"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(forwarded_for(&h), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(forwarded_for(&headers(&[("x-real-ip", "::ffff:127.0.0.1")])), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(forwarded_for(&headers(&[("x-forwarded-for", "[::1]:4000")])), Some("::1".parse().unwrap()));
        assert!(came_over_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(came_over_https(&headers(&[("forwarded", "for=1.2.3.4;proto=https")])));
        assert!(!came_over_https(&headers(&[("x-forwarded-proto", "http")])));
    }

    #[test]
    fn login_redirects_keep_where_to_go_next() {
        let res = AuthRejection::SignInRequired { page: true, next: "/admin/studies?x=1&y=2".into() }.into_response();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(res.headers()[header::LOCATION], "/admin/login?next=/admin/studies%3Fx%3D1%26y%3D2");
        let api = AuthRejection::SignInRequired { page: false, next: String::new() }.into_response();
        assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn new_passwords_have_a_minimum_and_maximum_length() {
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough").is_ok());
        assert!(check_new_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}
