//! What the whole-site test binaries share (`auth.rs`, `crowd.rs`): the site (`serve::app_with_auth`) on a
//! temporary database, and a small browser (a cookie jar, a peer address, headers of its own) that sends
//! requests through the router in-process. Each binary adds the calls it needs in an `impl Browser` of its own.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use userrl_app::auth::{Auth, AuthConfig, hash_password};
use userrl_server::serve::{JobManager, JobOptions};
use userrl_store::Store;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Site {
    pub dir: PathBuf,
    pub store: Store,
    pub router: Router,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The whole site on a temporary database under `<tmp>/userrl-<name>-<pid>`, with `config`.
pub async fn site(name: &str, config: AuthConfig) -> Site {
    let dir = std::env::temp_dir().join(format!("userrl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.join("site.db").display())).await.unwrap();
    let manager = JobManager::new(
        store.clone(),
        JobOptions { runs_dir: dir.join("runs"), root: workspace_root(), configs_dir: None, max_jobs: 1 },
    );
    let auth = Auth::new(store.clone(), config);
    let router = userrl_server::serve::app_with_auth(store.clone(), manager, &[], auth).await.unwrap();
    Site { dir, store, router }
}

/// The default settings with [`PASSWORD`] as the admin's password from "the environment".
pub fn with_admin() -> AuthConfig {
    AuthConfig { admin_password_hash: Some(hash_password(PASSWORD).unwrap()), ..AuthConfig::default() }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("{}: not JSON: {}", self.status, self.body))
    }

    pub fn location(&self) -> &str {
        self.headers.get(header::LOCATION).map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }

    pub fn sets_cookie(&self, prefix: &str) -> bool {
        self.set_cookies().iter().any(|c| c.starts_with(prefix))
    }
}

/// A browser: a cookie jar, a peer address, and headers it adds to every request. A cookie-less one (a page in
/// a cross-site frame, where `SameSite=Strict` cookies are never sent) neither keeps nor sends cookies.
pub struct Browser<'a> {
    pub site: &'a Site,
    pub peer: [u8; 4],
    pub cookies: HashMap<String, String>,
    pub cookieless: bool,
    pub headers: Vec<(&'static str, String)>,
}

impl<'a> Browser<'a> {
    pub fn new(site: &'a Site, peer: [u8; 4]) -> Browser<'a> {
        Browser { site, peer, cookies: HashMap::new(), cookieless: false, headers: Vec::new() }
    }

    pub fn framed(site: &'a Site, peer: [u8; 4]) -> Browser<'a> {
        Browser { cookieless: true, ..Browser::new(site, peer) }
    }

    /// Sends `request` with the jar's cookies (unless it names its own) and this browser's headers, and keeps
    /// the cookies the answer sets.
    pub async fn send(&mut self, mut request: Request<Body>) -> Answer {
        if !self.cookieless && !self.cookies.is_empty() && !request.headers().contains_key(header::COOKIE) {
            let jar: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request.headers_mut().insert(header::COOKIE, jar.join("; ").parse().unwrap());
        }
        for (name, value) in &self.headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from((self.peer, 40000))));
        let response = self.site.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(header::SET_COOKIE).iter().filter(|_| !self.cookieless) {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
    }

    pub async fn get(&mut self, uri: &str) -> Answer {
        self.send(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    /// The visitor's state and CSRF token, as a script reads them.
    pub async fn status(&mut self) -> Value {
        let answer = self.get("/api/auth").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.json()
    }

    pub async fn token(&mut self) -> String {
        self.status().await["csrf_token"].as_str().unwrap().to_string()
    }
}
