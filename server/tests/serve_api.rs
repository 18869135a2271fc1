//! The JSON API and the job manager through axum's test client, on a temporary SQLite store, with real jobs:
//! a tiny training run launched over HTTP runs to the end and its metrics, transcripts and checkpoints are
//! served; an eval job writes eval rows; queued runs wait for the slot; cancel and shutdown set the statuses
//! that let a run be resumed. Bad input of every kind gets a 4xx with a JSON message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use userrl_app::auth::{Auth, AuthConfig, VISITOR_COOKIE, csrf_for};
use userrl_server::serve::api::{self, ApiState};
use userrl_server::serve::{JobManager, JobOptions, paths};
use userrl_store::Store;
use userrl_types::{RunRow, RunStatus};

/// A run that takes a few seconds: SFT on a handful of expert records, one small GRPO step, one eval episode.
const TINY: &str = r#"
name = "tiny"
seed = 3
[model]
tiny = { layers = 1, hidden = 32, heads = 2, kv_heads = 1, ffn = 64, tokenizer = "models/SmolLM2-135M-Instruct.Q4_1.gguf" }
[data]
gyms = ["intention"]
[sft]
epochs = 1
lr = 3e-3
batch_size = 4
max_seq_len = 1536
max_examples = 4
[grpo]
steps = 1
prompts_per_step = 1
group_size = 2
mini_batches = 1
max_turns = 2
max_new_tokens = 16
max_total_tokens = 1536
lr = 1e-4
[eval]
every = 0
limit_per_gym = 1
[checkpoint]
every = 1
"#;

/// A run long enough to be cancelled or interrupted mid-way.
fn long_config(name: &str) -> String {
    TINY.replace("name = \"tiny\"", &format!("name = \"{name}\"")).replace("steps = 1\n", "steps = 500\n")
}

struct Harness {
    dir: PathBuf,
    store: Store,
    manager: JobManager,
    router: Router,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

async fn harness(name: &str, max_jobs: usize) -> Harness {
    let dir = std::env::temp_dir().join(format!("userrl-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.join("test.db").display())).await.unwrap();
    let manager = JobManager::new(
        store.clone(),
        JobOptions {
            runs_dir: dir.join("runs"),
            root: workspace_root(),
            configs_dir: Some(workspace_root().join("configs")),
            max_jobs,
        },
    );
    let auth = Auth::new(store.clone(), AuthConfig::default());
    let router = api::router(ApiState { store: store.clone(), jobs: manager.clone(), auth });
    Harness { dir, store, manager, router }
}

/// The visitor secret the test client's requests carry (with its CSRF token), as a browser's would.
const VISITOR: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A request as a local browser page sends it: from this machine (no admin is set up in these tests, so run
/// controls accept it), with the visitor cookie and the page's CSRF token.
fn local_browser(mut request: Request<Body>) -> Request<Body> {
    let headers = request.headers_mut();
    headers.insert(header::COOKIE, format!("{VISITOR_COOKIE}={VISITOR}").parse().unwrap());
    headers.insert("x-csrf-token", csrf_for(VISITOR).parse().unwrap());
    request.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 50000))));
    request
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(local_browser(request)).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    async fn post(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Request::post(uri).body(Body::empty()).unwrap()).await
    }

    async fn launch(&self, toml: &str) -> (StatusCode, Value) {
        let request = Request::post("/api/runs")
            .header(header::CONTENT_TYPE, "application/toml")
            .body(Body::from(toml.to_string()))
            .unwrap();
        self.send(request).await
    }

    async fn run(&self, id: i64) -> RunRow {
        let (status, body) = self.get(&format!("/api/runs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Polls until the run's status satisfies `done`; the deadline only guards against a hang.
    async fn wait(&self, id: i64, done: impl Fn(RunStatus) -> bool) -> RunRow {
        let deadline = std::time::Instant::now() + Duration::from_secs(900);
        loop {
            let run = self.run(id).await;
            if done(run.status) {
                return run;
            }
            assert!(std::time::Instant::now() < deadline, "run {id} stuck in {:?}: {}", run.status, run.message);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()), "no message: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_message() {
    let h = harness("bad", 1).await;
    let (s, b) = h.get("/api/runs/999").await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = h.get("/api/runs/abc").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    let (s, b) = h.get("/api/runs/999/metrics/reward").await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = h.get("/api/transcripts/5").await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = h.post("/api/runs/999/cancel").await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = h.post("/api/runs/999/resume").await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = h.get("/api/nope").await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = h.send(Request::delete("/api/runs").body(Body::empty()).unwrap()).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED);

    // Malformed TOML, an unknown key, an invalid value: 400 naming the key where there is one.
    let (s, b) = h.launch("name = = 3").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    let (s, b) = h.launch(&TINY.replace("group_size = 2", "group_sise = 2")).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    assert_eq!(b["field"], "grpo.group_sise", "{b}");
    let (s, b) = h.launch(&TINY.replace("mini_batches = 1", "mini_batches = 3")).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    assert_eq!(b["field"], "grpo.mini_batches", "{b}");
    let (s, b) = h.launch(&TINY.replace("models/SmolLM2", "models/NoSuch")).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    assert_eq!(b["field"], "model.tiny.tokenizer", "{b}");
    let (s, b) = h.launch("[evaluate]\nagent = \"expert\"\ngyms = [\"nogym\"]\n").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);

    // Wrong content type, non-UTF-8, a body over the limit.
    let request =
        Request::post("/api/runs").header(header::CONTENT_TYPE, "application/json").body(Body::from("{}")).unwrap();
    let (s, b) = h.send(request).await;
    assert_error(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, b) = h.send(Request::post("/api/runs").body(Body::from(TINY)).unwrap()).await;
    assert_error(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let request = Request::post("/api/runs")
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(vec![0xff, 0xfe, 0x00]))
        .unwrap();
    let (s, b) = h.send(request).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    let huge = format!("# {}\n{TINY}", "x".repeat(api::MAX_CONFIG_BYTES + 1));
    let (s, b) = h.launch(&huge).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.store.runs().await.unwrap().is_empty(), "a rejected launch created a run");

    // Bad query parameters on an existing run.
    let id = h
        .store
        .create_run(&userrl_store::NewRun {
            name: "row".into(),
            kind: userrl_types::RunKind::Train,
            config: String::new(),
            gyms: vec![],
            model: String::new(),
            device: String::new(),
            total_steps: 0,
        })
        .await
        .unwrap();
    for query in ["buckets=0", "buckets=abc", "buckets=99999999", "from=5&to=1", "nope=1", "buckets=-3"] {
        let (s, b) = h.get(&format!("/api/runs/{id}/metrics/reward?{query}")).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST);
    }
    for query in ["limit=0", "limit=100000", "offset=-1", "step=x", "validate=maybe", "min_reward=2&max_reward=1"] {
        let (s, b) = h.get(&format!("/api/runs/{id}/transcripts?{query}")).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST);
    }
    let (s, b) = h.get(&format!("/api/runs/{id}/metrics/reward?buckets=10")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["buckets"].as_array().map(Vec::len), Some(0));
    // A run that is not live cannot be cancelled; a queued row cannot be resumed.
    let (s, b) = h.post(&format!("/api/runs/{id}/cancel")).await;
    assert_error(s, &b, StatusCode::CONFLICT);
    let (s, b) = h.post(&format!("/api/runs/{id}/resume")).await;
    assert_error(s, &b, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_training_run_is_launched_runs_to_the_end_and_is_served() {
    let h = harness("train", 1).await;
    let (status, body) = h.launch(TINY).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    let run = h.wait(id, |s| !s.is_live()).await;
    assert_eq!(run.status, RunStatus::Finished, "{}", run.message);
    assert_eq!((run.name.as_str(), run.total_steps, run.gyms.clone()), ("tiny", 1, vec!["intention".to_string()]));
    assert!(run.started_at.is_some() && run.finished_at.is_some());

    let (_, runs) = h.get("/api/runs").await;
    assert_eq!(runs.as_array().map(Vec::len), Some(1));
    let (s, keys) = h.get(&format!("/api/runs/{id}/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    let keys: Vec<String> = serde_json::from_value(keys).unwrap();
    for key in ["reward", "sft/loss", "loss"] {
        assert!(keys.iter().any(|k| k == key), "no {key} in {keys:?}");
    }
    let (s, series) = h.get(&format!("/api/runs/{id}/metrics/sft/loss?buckets=4")).await;
    assert_eq!(s, StatusCode::OK, "{series}");
    assert_eq!(series["key"], "sft/loss");
    let buckets = series["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty() && buckets.len() <= 4, "{series}");
    assert!(buckets.iter().all(|b| b["min"].as_f64() <= b["max"].as_f64()));

    let (s, list) = h.get(&format!("/api/runs/{id}/transcripts?limit=50")).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let list = list.as_array().unwrap().clone();
    // One GRPO group of two rollouts, plus the final evaluation episode.
    assert!(list.iter().filter(|t| t["validate"] == false).count() == 2, "{list:?}");
    assert!(list.iter().any(|t| t["validate"] == true), "{list:?}");
    let (s, only_eval) = h.get(&format!("/api/runs/{id}/transcripts?validate=true&gym=intention")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(only_eval.as_array().unwrap().iter().all(|t| t["validate"] == true));
    let tid = list[0]["id"].as_i64().unwrap();
    let (s, one) = h.get(&format!("/api/transcripts/{tid}")).await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(one["summary"]["id"], tid);
    assert!(one["record"]["messages"].as_array().is_some_and(|m| m.len() >= 2), "{one}");

    let (s, checkpoints) = h.get(&format!("/api/runs/{id}/checkpoints")).await;
    assert_eq!(s, StatusCode::OK);
    let checkpoints = checkpoints.as_array().unwrap();
    assert!(!checkpoints.is_empty());
    for c in checkpoints {
        let path = c["path"].as_str().unwrap();
        assert!(path.starts_with(h.dir.join("runs").join(id.to_string()).to_str().unwrap()), "{path}");
        assert!(Path::new(path).join("config.json").exists(), "{path}");
    }
    let (s, health) = h.get(&format!("/api/runs/{id}/health")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(health["episodes"].as_i64().unwrap() >= 2, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eval_run_writes_one_eval_row_per_gym_and_its_episodes() {
    let h = harness("eval", 1).await;
    let doc =
        "name = \"experts\"\n[evaluate]\nagent = \"expert\"\ngyms = [\"turtle\", \"telepathy\"]\nlimit_per_gym = 2\n";
    let (status, body) = h.launch(doc).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    let run = h.wait(id, |s| !s.is_live()).await;
    assert_eq!(run.status, RunStatus::Finished, "{}", run.message);
    assert_eq!((run.kind, run.total_steps, run.step), (userrl_types::RunKind::Eval, 4, 4));
    let (_, evals) = h.get("/api/evals").await;
    let evals: Vec<userrl_types::EvalRow> = serde_json::from_value(evals).unwrap();
    let mut gyms: Vec<&str> = evals.iter().map(|e| e.gym.as_str()).collect();
    gyms.sort_unstable();
    assert_eq!(gyms, ["telepathy", "turtle"]);
    for e in &evals {
        assert_eq!(
            (e.run_id, e.model.as_str(), e.user_kind.as_str(), e.split.as_str()),
            (Some(id), "expert", "scripted", "test")
        );
        assert_eq!((e.episodes, e.success_rate, e.normalized), (2, 1.0, 1.0), "{e:?}");
    }
    let (_, transcripts) = h.get(&format!("/api/runs/{id}/transcripts")).await;
    assert_eq!(transcripts.as_array().map(Vec::len), Some(4));
    // A finished run does not resume.
    let (s, b) = h.post(&format!("/api/runs/{id}/resume")).await;
    assert_error(s, &b, StatusCode::CONFLICT);
}

/// An eval job the server stopped half-way (its run interrupted, two of four episodes stored, as the first
/// attempt left them) resumes after a restart: it plays only the two missing episodes, each (gym, task) ends
/// up stored once, and the eval rows cover all four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_eval_run_resumes_with_the_missing_episodes() {
    use userrl_gym::{Catalog, GymKind, Split};

    let h = harness("eval-resume", 1).await;
    let doc =
        "name = \"experts\"\n[evaluate]\nagent = \"expert\"\ngyms = [\"turtle\", \"telepathy\"]\nlimit_per_gym = 2\n";
    let id = h
        .store
        .create_run(&userrl_store::NewRun {
            name: "experts".into(),
            kind: userrl_types::RunKind::Eval,
            config: doc.into(),
            gyms: vec!["turtle".into(), "telepathy".into()],
            model: "expert".into(),
            device: "cpu".into(),
            total_steps: 4,
        })
        .await
        .unwrap();
    h.store.set_run_status(id, RunStatus::Running, "").await.unwrap();
    // The plan's order: turtle's first two test tasks (steps 1, 2), then telepathy's (steps 3, 4). The first
    // attempt stored steps 1 and 3, as failures the expert would not make.
    let catalog = Catalog::builtin(&[GymKind::Turtle, GymKind::Telepathy]).unwrap();
    let mut plan = Vec::new();
    for gym in catalog.gyms() {
        for task in gym.task_ids(Some(Split::Test)).into_iter().take(2) {
            plan.push((gym.kind().name().to_string(), task));
        }
    }
    let mut first_ids = Vec::new();
    for step in [1, 3] {
        let (gym, task) = &plan[step - 1];
        let record = serde_json::json!({"gym": gym, "task_id": task, "reward": 0.0, "score": 0.0,
            "normalized": 0.0, "success": false, "termination": "first-attempt", "advantage": 0.0,
            "turn_rewards": [0.0], "messages": []});
        first_ids.push(h.store.add_transcript(id, step as i64, 0, 0, true, &record).await.unwrap());
    }
    assert_eq!(h.store.mark_interrupted().await.unwrap(), 1);
    assert_eq!(h.run(id).await.status, RunStatus::Interrupted);

    let (s, body) = h.post(&format!("/api/runs/{id}/resume")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let run = h.wait(id, |s| !s.is_live()).await;
    assert_eq!(run.status, RunStatus::Finished, "{}", run.message);
    assert_eq!((run.phase.as_str(), run.phase_step, run.phase_total), ("eval", 4, 4));

    let (_, list) = h.get(&format!("/api/runs/{id}/transcripts")).await;
    let list: Vec<userrl_types::TranscriptSummary> = serde_json::from_value(list).unwrap();
    let mut played: Vec<(i64, String, String, bool)> =
        list.iter().map(|t| (t.step, t.gym.clone(), t.task_id.clone(), t.success)).collect();
    played.sort();
    let want: Vec<(i64, String, String, bool)> =
        plan.iter().enumerate().map(|(i, (g, t))| (i as i64 + 1, g.clone(), t.clone(), i % 2 == 1)).collect();
    assert_eq!(played, want, "each episode once, the stored ones kept");
    for first in first_ids {
        let (_, one) = h.get(&format!("/api/transcripts/{first}")).await;
        assert_eq!(one["summary"]["termination"], "first-attempt", "a stored episode was played again: {one}");
    }
    let (_, evals) = h.get("/api/evals").await;
    let evals: Vec<userrl_types::EvalRow> = serde_json::from_value(evals).unwrap();
    assert_eq!(evals.len(), 2);
    for e in &evals {
        assert_eq!((e.run_id, e.episodes, e.success_rate), (Some(id), 2, 0.5), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_at_a_time_the_other_queues_and_both_cancel() {
    let h = harness("queue", 1).await;
    let (_, a) = h.launch(&long_config("a")).await;
    let (_, b) = h.launch(&long_config("b")).await;
    let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    // Whichever took the slot runs; the other waits in the queue.
    let (running, queued) = loop {
        let (ra, rb) = (h.run(a).await, h.run(b).await);
        match (ra.status, rb.status) {
            (RunStatus::Running, RunStatus::Queued) => break (a, b),
            (RunStatus::Queued, RunStatus::Running) => break (b, a),
            (sa, sb) => {
                assert!(sa.is_live() && sb.is_live(), "{sa:?} {sb:?}: {} {}", ra.message, rb.message);
                assert!(!(sa == RunStatus::Running && sb == RunStatus::Running), "two jobs run at once");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (s, body) = h.post(&format!("/api/runs/{queued}/cancel")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let run = h.wait(queued, |s| !s.is_live()).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.step == 0 && run.started_at.is_none(), "a cancelled queued run never started: {run:?}");
    assert_eq!(h.run(running).await.status, RunStatus::Running);
    let (s, body) = h.post(&format!("/api/runs/{running}/cancel")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(h.wait(running, |s| !s.is_live()).await.status, RunStatus::Cancelled);
    assert!(h.manager.live_runs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_interrupts_running_jobs_and_they_resume() {
    let h = harness("shutdown", 1).await;
    let (_, body) = h.launch(&long_config("long")).await;
    let id = body["id"].as_i64().unwrap();
    h.wait(id, |s| s == RunStatus::Running).await;
    // Once it is training (a metric is logged), a stop saves a resumable checkpoint.
    while h.store.metric_keys(id).await.unwrap().is_empty() {
        assert_eq!(h.run(id).await.status, RunStatus::Running);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.manager.shutdown(Duration::from_secs(600)).await;
    let run = h.run(id).await;
    assert_eq!(run.status, RunStatus::Interrupted, "{}", run.message);
    assert!(h.manager.live_runs().is_empty());
    let out = h.dir.join("runs").join(id.to_string());
    assert!(userrl_rl::resume::latest(&out).is_ok(), "no resumable checkpoint in {}", out.display());

    // A restarted server resumes it; then it can be cancelled again.
    let restarted = JobManager::new(
        h.store.clone(),
        JobOptions {
            runs_dir: h.dir.join("runs"),
            root: workspace_root(),
            configs_dir: paths::configs_dir(),
            max_jobs: 1,
        },
    );
    restarted.resume(id).await.unwrap();
    assert!(restarted.resume(id).await.is_err(), "a live run resumed twice");
    let auth = Auth::new(h.store.clone(), AuthConfig::default());
    let router = api::router(ApiState { store: h.store.clone(), jobs: restarted.clone(), auth });
    let h2 = Harness { dir: h.dir.join("second"), store: h.store.clone(), manager: restarted, router };
    h2.wait(id, |s| s == RunStatus::Running).await;
    let (s, body) = h2.post(&format!("/api/runs/{id}/cancel")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(h2.wait(id, |s| !s.is_live()).await.status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_starts_the_quickstart_demo_once() {
    let h = harness("demo", 1).await;
    let id = h.manager.launch_demo_if_empty().await.unwrap().expect("a demo run on an empty store");
    let run = h.run(id).await;
    assert_eq!(run.name, "quickstart");
    assert!(run.status.is_live(), "{:?}: {}", run.status, run.message);
    assert_eq!(h.manager.launch_demo_if_empty().await.unwrap(), None, "a second demo run");
    let (s, presets) = h.get("/api/presets").await;
    assert_eq!(s, StatusCode::OK);
    assert!(presets.as_array().unwrap().iter().any(|p| p["name"] == "quickstart"), "{presets}");
    h.manager.cancel(id).await.unwrap();
    assert_eq!(h.wait(id, |s| !s.is_live()).await.status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_site_serves_pages_the_api_and_v1_together() {
    let h = harness("site", 1).await;
    let id = h
        .launch("name = \"site-eval\"\n[evaluate]\nagent = \"random\"\ngyms = [\"turtle\"]\nlimit_per_gym = 1\n")
        .await
        .1["id"]
        .as_i64()
        .unwrap();
    h.wait(id, |s| !s.is_live()).await;
    let auth = Auth::new(h.store.clone(), AuthConfig::default());
    let site = userrl_server::serve::app_with_auth(h.store.clone(), h.manager.clone(), &[], auth).await.unwrap();
    let get = |uri: &str| site.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap());
    let page = get("/").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&html).contains("site-eval"), "the runs page does not list the run");
    let api = get("/api/runs").await.unwrap();
    assert_eq!(api.status(), StatusCode::OK);
    let unknown = get("/api/no/such/route").await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let models = get("/v1/models").await.unwrap();
    assert_eq!(models.status(), StatusCode::OK);
    let checkpoints = get(&format!("/api/runs/{id}/checkpoints")).await.unwrap();
    assert_eq!(checkpoints.status(), StatusCode::OK);
}
