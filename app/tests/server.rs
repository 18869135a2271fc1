//! The app's router through axum without a network: pages render server-side with the store's data, the
//! live stream, exports and downloads answer, bad input gets a 4xx with a message, and text from transcripts
//! is escaped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use userrl_app::auth::{Auth, AuthConfig, VISITOR_COOKIE, csrf_for};
use userrl_app::model::LaunchOutcome;
use userrl_app::{AppContext, LaunchError, RunLauncher, site_options, site_router};
use userrl_store::{NewRun, Store};
use userrl_types::{RunKind, RunStatus, Speaker, TranscriptMessage, TranscriptRecord};

struct TestLauncher;

#[async_trait::async_trait]
impl RunLauncher for TestLauncher {
    fn presets(&self) -> Vec<(String, String)> {
        vec![("smoke".into(), "name = \"smoke\"\n".into())]
    }
    async fn launch(&self, config_toml: &str) -> Result<i64, LaunchError> {
        if config_toml.contains("lr = -1") {
            Err(LaunchError { field: Some("grpo.lr".into()), message: "must be positive".into() })
        } else {
            Ok(42)
        }
    }
    async fn cancel(&self, _run_id: i64) -> Result<(), String> {
        Ok(())
    }
    async fn resume(&self, run_id: i64) -> Result<(), String> {
        Err(format!("run {run_id} cannot be resumed"))
    }
}

struct Fixture {
    store: Store,
    ctx: AppContext,
    router: axum::Router,
    run: i64,
    transcript: i64,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const PAYLOAD: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

async fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("userrl-app-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.join("db.sqlite").display())).await.unwrap();
    let run = store
        .create_run(&NewRun {
            name: "fixture-run".into(),
            kind: RunKind::Train,
            config: "name = \"fixture-run\"\n[grpo]\nsteps = 3\n".into(),
            gyms: vec!["intention".into()],
            model: "tiny".into(),
            device: "cpu".into(),
            total_steps: 3,
        })
        .await
        .unwrap();
    store.set_run_status(run, RunStatus::Running, "").await.unwrap();
    for step in 0..3 {
        let values = vec![("reward".to_string(), step as f64 * 0.5), ("loss".to_string(), 1.0 / (step + 1) as f64)];
        store.append_metrics(run, step, 1_000 + step, &values).await.unwrap();
    }
    let record = TranscriptRecord {
        gym: "intention".into(),
        task_id: "t1".into(),
        reward: 0.25,
        turn_rewards: vec![0.25],
        termination: "answered".into(),
        messages: vec![
            TranscriptMessage { speaker: Speaker::User, text: PAYLOAD.into(), tokens: vec![], reward: None },
            TranscriptMessage {
                speaker: Speaker::Assistant,
                text: "ok".into(),
                tokens: vec![(PAYLOAD.into(), 0.5)],
                reward: Some(0.25),
            },
        ],
        ..Default::default()
    };
    let transcript = store.add_transcript(run, 2, 0, 1, false, &serde_json::to_value(&record).unwrap()).await.unwrap();
    let ckpt = dir.join("step-2");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("config.json"), "{\"layers\": 2}").unwrap();
    std::fs::write(dir.join("secret.txt"), "secret").unwrap();
    store.add_checkpoint(run, 2, &ckpt.to_string_lossy()).await.unwrap();
    let auth = Auth::new(store.clone(), AuthConfig::default());
    let ctx = AppContext {
        store: store.clone(),
        launcher: Arc::new(TestLauncher),
        auth,
        crowd: None,
        episodes: Arc::new(userrl_app::hosts::Disabled),
        chat: Arc::new(userrl_app::hosts::Disabled),
    };
    let router = site_router(ctx.clone(), site_options());
    Fixture { store, ctx, router, run, transcript, _dir: TempDir(dir) }
}

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, String, String) {
    let res = router.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let ctype = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn runs_page_renders_the_runs_table() {
    let f = fixture("runs").await;
    let (status, ctype, body) = get(&f.router, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/html"));
    assert!(body.contains("fixture-run"), "{body}");
    assert!(body.contains("/pkg/userrl.js"), "hydration script missing");
    assert!(body.contains("status-running"));
}

#[tokio::test]
async fn run_page_draws_charts_server_side() {
    let f = fixture("run").await;
    let (status, _, body) = get(&f.router, &format!("/runs/{}", f.run)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("data-key=\"reward\""), "{body}");
    assert!(body.contains("<polyline"), "no line drawn");
    assert!(body.contains("config.json"), "checkpoint file not listed");
    assert!(body.contains("Rollout health"));
}

#[tokio::test]
async fn run_header_and_runs_table_show_the_phase_against_its_own_total() {
    let f = fixture("progress").await;
    // SFT logs its own steps (here 139) while the run's planned total counts GRPO steps (3).
    f.store.append_metrics(f.run, 139, 5_000, &[("sft/loss".into(), 1.5)]).await.unwrap();
    f.store.set_progress(f.run, "sft", 140, 150).await.unwrap();
    let (status, _, body) = get(&f.router, &format!("/runs/{}", f.run)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("SFT 140 / 150"), "{body}");
    assert!(!body.contains("139 / 3"), "SFT steps shown against the GRPO total");
    let (_, _, runs) = get(&f.router, "/").await;
    assert!(runs.contains("SFT 140 / 150"), "{runs}");

    f.store.set_progress(f.run, "grpo", 3, 24).await.unwrap();
    let (_, _, body) = get(&f.router, &format!("/runs/{}", f.run)).await;
    assert!(body.contains("GRPO 3 / 24"), "{body}");
}

#[tokio::test]
async fn checkpoints_link_to_the_chat_page() {
    let f = fixture("chat-link").await;
    let checkpoint = f.store.checkpoints(f.run).await.unwrap()[0].id;
    let (_, _, body) = get(&f.router, &format!("/runs/{}", f.run)).await;
    let link = format!("href=\"/chat?run={}&amp;checkpoint={checkpoint}\"", f.run);
    assert!(body.contains(&link), "no {link} in {body}");
}

#[tokio::test]
async fn unknown_pages_and_runs_are_not_found() {
    let f = fixture("missing").await;
    let (status, _, body) = get(&f.router, "/no/such/page").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("Page not found"));
    let (status, _, _) = get(&f.router, "/api/runs/999/live").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = get(&f.router, "/api/runs/999/export?key=reward").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("run 999 not found"));
    let (status, _, body) = get(&f.router, "/runs/999").await;
    // The page streams: whether the server function's 404 reaches the status line depends on whether the
    // store answered before the first chunk went out. Either way the page says what is wrong.
    assert!(status == StatusCode::OK || status == StatusCode::NOT_FOUND, "{status}");
    assert!(body.contains("run not found"), "{body}");
}

#[tokio::test]
async fn transcript_text_is_escaped() {
    let f = fixture("xss").await;
    let (status, _, body) = get(&f.router, &format!("/transcripts/{}", f.transcript)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("<script>alert(1)"), "payload rendered as markup");
    assert!(!body.contains("<img src=x"), "payload rendered as markup");
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{body}");
    assert!(body.contains("msg-user") && body.contains("msg-agent"));
    assert!(body.contains("turn 1 · reward 0.2500"));
}

#[tokio::test]
async fn export_gives_csv_and_json_and_rejects_bad_formats() {
    let f = fixture("export").await;
    let (status, ctype, body) = get(&f.router, &format!("/api/runs/{}/export?key=reward&format=csv", f.run)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/csv"));
    assert_eq!(body, "step,wall_time,value\n0,1000,0\n1,1001,0.5\n2,1002,1\n");
    let (status, _, body) = get(&f.router, &format!("/api/runs/{}/export?key=reward&format=json", f.run)).await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["points"].as_array().unwrap().len(), 3);
    let (status, _, body) = get(&f.router, &format!("/api/runs/{}/export?key=reward&format=xml", f.run)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown format"));
    let (status, _, _) = get(&f.router, &format!("/api/runs/{}/export", f.run)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "missing key");
    let (status, _, _) = get(&f.router, "/api/runs/abc/export?key=reward").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn checkpoint_files_download_only_listed_files() {
    let f = fixture("ckpt").await;
    let cid = f.store.checkpoints(f.run).await.unwrap()[0].id;
    let (status, _, body) = get(&f.router, &format!("/api/runs/{}/checkpoints/{cid}/config.json", f.run)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "{\"layers\": 2}");
    for bad in ["..%2Fsecret.txt", "secret.txt", "nope.bin"] {
        let (status, _, _) = get(&f.router, &format!("/api/runs/{}/checkpoints/{cid}/{bad}", f.run)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    }
    let (status, _, _) = get(&f.router, &format!("/api/runs/{}/checkpoints/{}/config.json", f.run, cid + 7)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn live_stream_sends_new_metrics() {
    let f = fixture("live").await;
    let res = f
        .router
        .clone()
        .oneshot(Request::get(format!("/api/runs/{}/live", f.run)).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    f.store.append_metrics(f.run, 7, 2_000, &[("reward".into(), 0.75)]).await.unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("\n\n") {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await.expect("no live event").unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.starts_with("data: "), "{text}");
    let event: serde_json::Value = serde_json::from_str(text.trim().trim_start_matches("data: ")).unwrap();
    assert_eq!(event, serde_json::json!({"type": "metrics", "step": 7, "values": [["reward", 0.75]]}));
}

/// The first SSE message of a live stream response, as JSON.
async fn first_event(body: &mut Body) -> serde_json::Value {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("\n\n") {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await.expect("no live event").unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let message = text.split("\n\n").next().unwrap_or_default();
    assert!(message.starts_with("data: "), "{text}");
    serde_json::from_str(message.trim_start_matches("data: ")).unwrap()
}

#[tokio::test]
async fn live_stream_sends_the_compared_runs_points_and_progress() {
    let f = fixture("live-compare").await;
    let other = f
        .store
        .create_run(&NewRun {
            name: "other".into(),
            kind: RunKind::Train,
            config: String::new(),
            gyms: vec![],
            model: "tiny".into(),
            device: "cpu".into(),
            total_steps: 3,
        })
        .await
        .unwrap();
    let uri = format!("/api/runs/{}/live?compare={other},999999,x", f.run);
    let res = f.router.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    f.store.append_metrics(other, 5, 2_000, &[("reward".into(), 0.5)]).await.unwrap();
    let event = first_event(&mut body).await;
    assert_eq!(event, serde_json::json!({"type": "compared", "run_id": other, "step": 5, "values": [["reward", 0.5]]}));
    f.store.set_progress(f.run, "grpo", 2, 3).await.unwrap();
    let event = first_event(&mut body).await;
    assert_eq!(event, serde_json::json!({"type": "progress", "phase": "grpo", "step": 2, "total": 3}));
}

/// A browser's visitor secret (any 64 hex digits) and the CSRF token a page would carry for it.
const VISITOR: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A server-function call as the browser bundle makes it: from this machine, with the visitor cookie and the
/// page's CSRF token.
async fn call(router: &axum::Router, path: &str, json: serde_json::Value) -> (StatusCode, String) {
    let mut req = Request::post(path)
        .header("content-type", "application/json")
        .header("cookie", format!("{VISITOR_COOKIE}={VISITOR}"))
        .header("x-csrf-token", csrf_for(VISITOR))
        .body(Body::from(json.to_string()))
        .unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 50000))));
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn server_functions_answer_and_reject_bad_input() {
    use leptos::server_fn::ServerFn;
    use userrl_app::api::{ChartSeries, LaunchRun, ListTranscripts, ResumeRun, RunOverview};
    let f = fixture("fns").await;
    assert_eq!(LaunchRun::PATH, "/api/fn/launch_run", "server functions have fixed URLs");
    let (status, body) = call(&f.router, LaunchRun::PATH, serde_json::json!({"config": "[grpo]\nlr = -1\n"})).await;
    assert_eq!(status, StatusCode::OK);
    let outcome: LaunchOutcome = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome, LaunchOutcome::Invalid { field: Some("grpo.lr".into()), message: "must be positive".into() });
    let (_, body) = call(&f.router, LaunchRun::PATH, serde_json::json!({"config": "name = \"x\""})).await;
    assert_eq!(serde_json::from_str::<LaunchOutcome>(&body).unwrap(), LaunchOutcome::Launched(42));

    let (status, body) =
        call(&f.router, ChartSeries::PATH, serde_json::json!({"run_ids": [f.run], "key": "reward", "buckets": 100}))
            .await;
    assert_eq!(status, StatusCode::OK);
    let series: Vec<userrl_types::MetricSeries> = serde_json::from_str(&body).unwrap();
    assert_eq!(series[0].buckets.iter().map(|b| b.count).sum::<i64>(), 3);

    let (status, body) =
        call(&f.router, ChartSeries::PATH, serde_json::json!({"run_ids": [f.run], "key": "reward", "buckets": 0}))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&f.router, ChartSeries::PATH, serde_json::json!({"run_ids": "nope"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&f.router, RunOverview::PATH, serde_json::json!({"id": 12345})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let q = serde_json::json!({"run_id": f.run, "query": {"min_reward": 2.0, "max_reward": 1.0, "offset": 0}});
    let (status, _) = call(&f.router, ListTranscripts::PATH, q).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(&f.router, ResumeRun::PATH, serde_json::json!({"id": f.run})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("cannot be resumed"), "{body}");
}

#[tokio::test]
async fn server_functions_need_the_csrf_token_and_run_controls_a_local_caller() {
    use leptos::server_fn::ServerFn;
    use userrl_app::api::{LaunchRun, ListRuns};
    let f = fixture("csrf").await;
    let send = |token: Option<String>, peer: [u8; 4]| {
        let mut req = Request::post(LaunchRun::PATH)
            .header("content-type", "application/json")
            .header("cookie", format!("{VISITOR_COOKIE}={VISITOR}"));
        if let Some(token) = token {
            req = req.header("x-csrf-token", token);
        }
        let mut req = req.body(Body::from(serde_json::json!({"config": "name = \"x\""}).to_string())).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((peer, 40000))));
        f.router.clone().oneshot(req)
    };
    let missing = send(None, [127, 0, 0, 1]).await.unwrap();
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let body = missing.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    let wrong = send(Some(csrf_for(&"f".repeat(64))), [127, 0, 0, 1]).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    // With no admin set up, run controls accept only this machine.
    let remote = send(Some(csrf_for(VISITOR)), [192, 0, 2, 7]).await.unwrap();
    assert_eq!(remote.status(), StatusCode::FORBIDDEN);
    let local = send(Some(csrf_for(VISITOR)), [127, 0, 0, 1]).await.unwrap();
    assert_eq!(local.status(), StatusCode::OK);
    // Reading stays public (with the token, as every POST).
    let (status, body) = call(&f.router, ListRuns::PATH, serde_json::json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn pages_carry_the_csrf_token_and_give_new_visitors_a_cookie() {
    let f = fixture("meta").await;
    let res = f.router.clone().oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with(&format!("{VISITOR_COOKIE}=")), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let secret = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains(&format!("<meta name=\"csrf-token\" content=\"{}\"", csrf_for(&secret))), "{html}");
    // A returning visitor keeps the cookie (no new one).
    let again = Request::get("/").header("cookie", format!("{VISITOR_COOKIE}={VISITOR}")).body(Body::empty()).unwrap();
    let res = f.router.clone().oneshot(again).await.unwrap();
    assert!(res.headers().get("set-cookie").is_none());
    let (status, _, body) = get(&f.router, "/admin/login").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("No admin is set up yet"), "{body}");
}

/// Sets the flag when dropped, so a failing test still stops its helper thread (the runtime waits for it).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Building a router lists the app's routes, which holds a process-wide leptos flag that parks every resource
/// first polled meanwhile, forever. Pages rendered while other routers are built (as parallel tests do) must
/// still finish: before `site_router` listed the routes once per process, a render here stalled for good.
#[tokio::test]
async fn pages_render_while_other_routers_are_built() {
    let f = fixture("rebuild").await;
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let builder = {
        let (ctx, stop) = (f.ctx.clone(), stop.0.clone());
        tokio::task::spawn_blocking(move || {
            let mut built = 0u32;
            while !stop.load(Ordering::Relaxed) || built == 0 {
                drop(site_router(ctx.clone(), site_options()));
                built += 1;
            }
            built
        })
    };
    let pages = ["/".to_string(), format!("/runs/{}", f.run), format!("/transcripts/{}", f.transcript)];
    for round in 0..10 {
        for page in &pages {
            let rendered = tokio::time::timeout(Duration::from_secs(60), get(&f.router, page)).await;
            let (status, _, body) = rendered.unwrap_or_else(|_| panic!("{page} (round {round}) never finished"));
            assert_eq!(status, StatusCode::OK, "{page}: {body}");
            assert!(body.contains("fixture-run") || body.contains("msg-agent"), "{page}: {body}");
        }
    }
    drop(stop);
    assert!(builder.await.unwrap() > 0);
}
