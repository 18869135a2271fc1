//! Admin auth through the whole site (`serve::app_with_auth`) with axum's test client: sign-in with the right
//! and the wrong password, sign-out, admin routes without a session, CSRF-less and cross-site mutations,
//! forged and expired session cookies, the rate limits (429 with `Retry-After`), the first-run setup page (this
//! machine only, once) and the body cap. A small cookie jar plays the browser.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{Answer, Browser, PASSWORD, with_admin};
use serde_json::{Value, json};
use userrl_app::auth::{AuthConfig, Rate, SESSION_COOKIE, VISITOR_COOKIE, csrf_for, hash_token};

const LOCAL: [u8; 4] = [127, 0, 0, 1];
const REMOTE: [u8; 4] = [192, 0, 2, 7];

/// The whole site on a temporary database, with `config` (an admin password from "the environment" unless the
/// test clears it).
async fn site(name: &str, config: AuthConfig) -> common::Site {
    common::site(&format!("auth-{name}"), config).await
}

impl Browser<'_> {
    async fn post_json(&mut self, uri: &str, token: Option<&str>, body: Value) -> Answer {
        let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        self.send(request.body(Body::from(body.to_string())).unwrap()).await
    }

    async fn post_form(&mut self, uri: &str, fields: &[(&str, &str)]) -> Answer {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    async fn login(&mut self, password: &str) -> Answer {
        let token = self.token().await;
        self.post_json("/admin/login", Some(&token), json!({ "password": password })).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_password_signs_in_the_wrong_one_does_not_and_logout_ends_the_session() {
    let site = site("login", with_admin()).await;
    let mut browser = Browser::new(&site, REMOTE);
    let status = browser.status().await;
    assert_eq!((status["signed_in"].as_bool(), status["admin_exists"].as_bool()), (Some(false), Some(true)));
    assert_eq!(status["from_env"], true);

    let wrong = browser.login("not the password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
    assert!(!browser.cookies.contains_key(SESSION_COOKIE));

    let right = browser.login(PASSWORD).await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
    let cookie = right.set_cookies().into_iter().find(|c| c.starts_with(SESSION_COOKIE)).unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Secure"), "plain http must not get Secure cookies: {cookie}");
    let session = browser.cookies[SESSION_COOKIE].clone();
    assert_eq!(right.json()["csrf_token"], csrf_for(&session), "the new token is bound to the session");
    // The database holds the hash of the token, never the token.
    assert!(site.store.session(&hash_token(&session), 0).await.unwrap().is_some());
    assert!(site.store.session(&session, 0).await.unwrap().is_none());

    let status = browser.status().await;
    assert_eq!(status["signed_in"], true);
    assert_eq!(status["csrf_token"], csrf_for(&session));
    let admin = browser.get("/admin").await;
    assert_eq!(admin.status, StatusCode::OK);
    assert!(admin.body.contains("Sign out"), "{}", admin.body);
    assert_eq!(admin.headers[header::X_FRAME_OPTIONS], "DENY");

    let token = browser.token().await;
    let out = browser.post_json("/admin/logout", Some(&token), json!({})).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert!(!browser.cookies.contains_key(SESSION_COOKIE), "logout must clear the cookie");
    assert!(site.store.session(&hash_token(&session), 0).await.unwrap().is_none(), "logout must delete the session");
    // The old token no longer signs in, even when replayed.
    browser.cookies.insert(SESSION_COOKIE.into(), session);
    assert_eq!(browser.status().await["signed_in"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_form_works_without_javascript() {
    let site = site("form", with_admin()).await;
    let mut browser = Browser::new(&site, REMOTE);
    let page = browser.get("/admin/login?next=/runs/1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("type=\"password\""), "{}", page.body);
    let token = csrf_for(&browser.cookies[VISITOR_COOKIE]);
    assert!(page.body.contains(&format!("value=\"{token}\"")), "the form must carry the CSRF field");

    let wrong =
        browser.post_form("/admin/login", &[("csrf_token", &token), ("password", "nope"), ("next", "/runs/1")]).await;
    assert_eq!(wrong.status, StatusCode::SEE_OTHER);
    assert_eq!(wrong.location(), "/admin/login?error=wrong&next=%2Fruns%2F1");
    let shown = browser.get(wrong.location()).await;
    assert!(shown.body.contains("Wrong password."), "{}", shown.body);

    let right =
        browser.post_form("/admin/login", &[("csrf_token", &token), ("password", PASSWORD), ("next", "/runs/1")]).await;
    assert_eq!(right.status, StatusCode::SEE_OTHER);
    assert_eq!(right.location(), "/runs/1");
    assert!(browser.cookies.contains_key(SESSION_COOKIE));
    // Where to go next is a local path only.
    browser.cookies.remove(SESSION_COOKIE);
    let evil = browser
        .post_form("/admin/login", &[("csrf_token", &token), ("password", PASSWORD), ("next", "//evil.example")])
        .await;
    assert_eq!(evil.location(), "/admin");
    // Signed in, the login page sends the admin on.
    assert_eq!(browser.get("/admin/login").await.location(), "/admin");
    // A form without its CSRF field is refused.
    let session_token = csrf_for(&browser.cookies[SESSION_COOKIE]);
    let refused = browser.post_form("/admin/logout", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let out = browser.post_form("/admin/logout", &[("csrf_token", &session_token)]).await;
    assert_eq!((out.status, out.location()), (StatusCode::SEE_OTHER, "/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_and_run_controls_refuse_visitors_without_a_session() {
    let site = site("guard", with_admin()).await;
    let mut browser = Browser::new(&site, LOCAL);
    let page = browser.get("/admin").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/admin/login?next=/admin");
    let page = browser.get("/admin/studies?id=3").await;
    assert_eq!(page.location(), "/admin/login?next=/admin/studies%3Fid%3D3");
    for uri in ["/api/admin", "/api/admin/studies", "/api/admin/studies/1/export"] {
        let api = browser.get(uri).await;
        assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(api.json()["error"].as_str().unwrap().contains("sign in"), "{}", api.body);
    }
    // An admin exists, so even this machine needs the session to control runs.
    let token = browser.token().await;
    for uri in ["/api/runs/1/cancel", "/api/runs/1/resume"] {
        let answer = browser.post_json(uri, Some(&token), json!({})).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{uri}: {}", answer.body);
    }
    let launch = Request::post("/api/runs")
        .header(header::CONTENT_TYPE, "application/toml")
        .header("x-csrf-token", &token)
        .body(Body::from("name = \"x\"\n"))
        .unwrap();
    assert_eq!(browser.send(launch).await.status, StatusCode::UNAUTHORIZED);
    for function in ["launch_run", "cancel_run", "resume_run"] {
        let body = if function == "launch_run" { json!({"config": "name = \"x\""}) } else { json!({"id": 1}) };
        let answer = browser.post_json(&format!("/api/fn/{function}"), Some(&token), body).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{function}: {}", answer.body);
    }
    assert!(site.store.runs().await.unwrap().is_empty(), "a refused launch created a run");
    // Reading stays public.
    assert_eq!(browser.get("/api/runs").await.status, StatusCode::OK);
    assert_eq!(browser.get("/").await.status, StatusCode::OK);

    // Signed in, the same calls pass the check (and reach the job manager: no such run).
    assert_eq!(browser.login(PASSWORD).await.status, StatusCode::OK);
    let token = browser.token().await;
    let answer = browser.post_json("/api/runs/1/cancel", Some(&token), json!({})).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    let api = browser.get("/api/admin/nothing-here").await;
    assert_ne!(api.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_without_the_csrf_token_or_from_another_site_are_refused() {
    let site = site("csrf", with_admin()).await;
    let mut browser = Browser::new(&site, LOCAL);
    assert_eq!(browser.login(PASSWORD).await.status, StatusCode::OK);
    let session_token = browser.token().await;
    let visitor_token = csrf_for(&browser.cookies[VISITOR_COOKIE]);

    let cases: [(&str, Option<&str>); 3] = [
        ("no token", None),
        ("a made-up token", Some("0000")),
        ("the visitor's token while signed in", Some(&visitor_token)),
    ];
    for (what, token) in cases {
        let answer = browser.post_json("/api/runs/1/cancel", token, json!({})).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}: {}", answer.body);
        assert!(answer.json()["error"].as_str().unwrap().contains("CSRF"), "{what}: {}", answer.body);
        let answer = browser.post_json("/api/fn/list_runs", token, json!({})).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}: server function");
    }
    let answer = browser.post_json("/api/runs/1/cancel", Some(&session_token), json!({})).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "the right token passes: {}", answer.body);

    // The right token from another site's page is still refused.
    for (name, value) in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site"), ("origin", "null")] {
        let request = Request::post("/api/runs/1/cancel")
            .header(header::HOST, "127.0.0.1:3000")
            .header(name, value)
            .header("x-csrf-token", &session_token)
            .body(Body::empty())
            .unwrap();
        let answer = browser.send(request).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{name}: {value}");
    }
    let same = Request::post("/api/runs/1/cancel")
        .header(header::HOST, "127.0.0.1:3000")
        .header("origin", "http://127.0.0.1:3000")
        .header("sec-fetch-site", "same-origin")
        .header("x-csrf-token", &session_token)
        .body(Body::empty())
        .unwrap();
    assert_eq!(browser.send(same).await.status, StatusCode::NOT_FOUND);

    // A login from another site (login CSRF) is refused too.
    let mut other = Browser::new(&site, LOCAL);
    let answer = other.post_json("/admin/login", None, json!({ "password": PASSWORD })).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(!other.cookies.contains_key(SESSION_COOKIE));

    // /v1 authenticates by bearer key, not cookies: no CSRF token needed (no such model here: 404, not 403).
    let answer = other.post_json("/v1/chat/completions", None, json!({"model": "none", "messages": []})).await;
    assert_ne!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_session_cookies_sign_nobody_in() {
    let site = site("forged", with_admin()).await;
    let mut browser = Browser::new(&site, LOCAL);
    let forged = "ab".repeat(32);
    for cookie in [forged.as_str(), "not-hex", ""] {
        browser.cookies.insert(SESSION_COOKIE.into(), cookie.into());
        let page = browser.get("/admin").await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{cookie:?}");
        if !cookie.is_empty() {
            assert!(
                page.set_cookies()
                    .iter()
                    .any(|c| c.starts_with(&format!("{SESSION_COOKIE}=;")) && c.contains("Max-Age=0")),
                "a cookie that signs nobody in is cleared: {:?}",
                page.set_cookies()
            );
        }
    }
    // Its would-be CSRF token does not help either.
    browser.cookies.insert(SESSION_COOKIE.into(), forged.clone());
    let answer = browser.post_json("/api/runs/1/cancel", Some(&csrf_for(&forged)), json!({})).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);

    // A real session past its expiry.
    let expired = "cd".repeat(32);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    site.store.create_session(&hash_token(&expired), now - 1_000, "127.0.0.1", "test").await.unwrap();
    browser.cookies.insert(SESSION_COOKIE.into(), expired.clone());
    assert_eq!(browser.get("/admin").await.status, StatusCode::SEE_OTHER);
    browser.cookies.insert(SESSION_COOKIE.into(), expired.clone());
    assert_eq!(browser.get("/api/admin/x").await.status, StatusCode::UNAUTHORIZED);
    browser.cookies.insert(SESSION_COOKIE.into(), expired.clone());
    assert_eq!(browser.status().await["signed_in"], false);
    // The same token with a live row signs in: it was the expiry that refused it.
    let live = "ef".repeat(32);
    site.store.create_session(&hash_token(&live), now + 60_000, "127.0.0.1", "test").await.unwrap();
    browser.cookies.insert(SESSION_COOKIE.into(), live);
    assert_eq!(browser.status().await["signed_in"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    // Refills too slow to matter while the test runs: the counts below are exact.
    let config = AuthConfig {
        login_rate: Rate::per_second(1.0 / 3600.0, 3),
        mutate_rate: Rate::per_second(0.0, 4),
        general_rate: Rate::per_second(0.0, 12),
        ..with_admin()
    };
    let site = site("limits", config).await;
    let mut browser = Browser::new(&site, REMOTE);
    let token = browser.token().await; // 1 request of the general 12
    for attempt in 0..3 {
        let answer = browser.post_json("/admin/login", Some(&token), json!({"password": "guess"})).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let limited = browser.post_json("/admin/login", Some(&token), json!({"password": PASSWORD})).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{}", limited.body);
    let retry: u64 = limited.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
    assert!(!browser.cookies.contains_key(SESSION_COOKIE), "even the right password waits");
    // Four mutations in total (the login attempts counted): the next one waits.
    let answer = browser.post_json("/api/fn/list_runs", Some(&token), json!({})).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{}", answer.body);
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
    // Reads go on until the general cap (12 requests so far: 1 + 4 + 1 + 6).
    for _ in 0..6 {
        assert_eq!(browser.get("/api/runs").await.status, StatusCode::OK);
    }
    let capped = browser.get("/api/runs").await;
    assert_eq!(capped.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(capped.headers.contains_key(header::RETRY_AFTER));
    // Limits are per address: another client is unaffected, and this machine is outside the general cap.
    let mut other = Browser::new(&site, [198, 51, 100, 1]);
    assert_eq!(other.get("/api/runs").await.status, StatusCode::OK);
    let mut local = Browser::new(&site, LOCAL);
    for _ in 0..20 {
        assert_eq!(local.get("/api/runs").await.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_page_works_once_and_only_from_this_machine() {
    // Setup and sign-in attempts from this machine add up; the limit itself is tested above.
    let config = AuthConfig { login_rate: Rate::per_minute(60, 20), ..AuthConfig::default() };
    let site = site("setup", config).await;
    // From another machine: the page says no and the form is refused.
    let mut remote = Browser::new(&site, REMOTE);
    let page = remote.get("/admin/setup").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("only works from the machine running the server"), "{}", page.body);
    let token = remote.token().await;
    let answer = remote.post_json("/admin/setup", Some(&token), json!({"password": "remote password"})).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    // Through a proxy on this machine, the request is not local either.
    let mut proxied = Browser::new(&site, LOCAL);
    let token = proxied.token().await;
    let request = Request::post("/admin/setup")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-forwarded-for", "203.0.113.5")
        .header("x-csrf-token", &token)
        .body(Body::from(json!({"password": "proxied password"}).to_string()))
        .unwrap();
    assert_eq!(proxied.send(request).await.status, StatusCode::FORBIDDEN);
    // Without an admin, a remote visitor cannot control runs; this machine can.
    let token = remote.token().await;
    let answer = remote.post_json("/api/runs/1/cancel", Some(&token), json!({})).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);

    let mut local = Browser::new(&site, LOCAL);
    let token = local.token().await;
    assert_eq!(local.post_json("/api/runs/1/cancel", Some(&token), json!({})).await.status, StatusCode::NOT_FOUND);
    let page = local.get("/admin/setup").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Create the admin"), "{}", page.body);
    let short = local.post_json("/admin/setup", Some(&token), json!({"password": "short"})).await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    let differ = local.post_json("/admin/setup", Some(&token), json!({"password": PASSWORD, "confirm": "other"})).await;
    assert_eq!(differ.status, StatusCode::BAD_REQUEST);
    let made = local.post_json("/admin/setup", Some(&token), json!({"password": PASSWORD, "confirm": PASSWORD})).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    assert!(local.cookies.contains_key(SESSION_COOKIE), "setup signs the admin in");
    let stored = site.store.admin_password_hash().await.unwrap().unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains(PASSWORD), "{stored}");

    // Once an admin exists: refused, from anywhere, and the page says so.
    let mut again = Browser::new(&site, LOCAL);
    let token = again.token().await;
    let answer = again.post_json("/admin/setup", Some(&token), json!({"password": "another password"})).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    let page = again.get("/admin/setup").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("An admin exists already"), "{}", page.body);
    assert_eq!(site.store.admin_password_hash().await.unwrap().unwrap(), stored);
    // The password works for signing in, and run controls now need the session.
    let answer = again.post_json("/api/runs/1/cancel", Some(&token), json!({})).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(again.login(PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_are_refused_before_they_are_read() {
    let site = site("body", with_admin()).await;
    let mut browser = Browser::new(&site, LOCAL);
    let token = browser.token().await;
    let huge = vec![b' '; userrl_app::auth::MAX_BODY_BYTES + 1];
    let request = Request::post("/api/fn/list_runs")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, huge.len())
        .header("x-csrf-token", &token)
        .body(Body::from(huge))
        .unwrap();
    let answer = browser.send(request).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.body);
    // Sign-in bodies have a small limit of their own.
    let long = "x".repeat(20 * 1024);
    let answer = browser.post_json("/admin/login", Some(&token), json!({ "password": long })).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}
