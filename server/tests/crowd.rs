//! Crowd studies through the whole site (`serve::app_with_auth`) with axum's test client: an admin creates a
//! study, a worker plays a Telepathy and a Travel episode through the Prolific link against the expert agent
//! and gets one completion code; reloading and reusing the link give no second code; forged, foreign and
//! missing session tokens are refused; one session per worker; MTurk preview makes no session; every admin
//! route refuses non-admins; the admin sees, excludes and exports the episodes (CSV cells defused), text a
//! worker typed renders inert in the admin's transcript view, and the Eval table gets the real-user scores.
//! Inside MTurk's cross-site iframe the flow works without cookies (the token in headers) and forged tokens or
//! CSRF proofs are refused; only study pages may be framed; a lab of workers behind one address is not stopped
//! by the per-IP limits while one worker is stopped by its own; a study's fixed Prolific code is shown once per
//! session, after the rules are met.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{Answer, Browser, PASSWORD, Site};
use serde_json::{Value, json};
use userrl_app::auth::{AuthConfig, Rate, hash_password};

const PAYLOAD: &str = "<script>alert('xss')</script><img src=x onerror=alert(2)>";

async fn site(name: &str) -> Site {
    // The site's per-IP limits are tested with auth; here they must not cut a test worker's polling short.
    let config = AuthConfig {
        admin_password_hash: Some(hash_password(PASSWORD).unwrap()),
        mutate_rate: Rate::per_second(1000.0, 10_000),
        general_rate: Rate::per_second(1000.0, 10_000),
        ..AuthConfig::default()
    };
    site_with(name, config).await
}

async fn site_with(name: &str, config: AuthConfig) -> Site {
    common::site(&format!("crowd-{name}"), config).await
}

/// The crowd portal's calls. A framed (cookie-less) browser is the study page in MTurk's cross-site iframe: it
/// sends the study session token `study_enter` handed out (`keep_access`) in headers instead of cookies.
impl Browser<'_> {
    /// Keeps the study session token a new session's `study_enter` handed out (what the page stores).
    fn keep_access(&mut self, entered: &Answer) {
        let access = &entered.json()["access"];
        let token = access["token"].as_str().expect("a new session hands out its token").to_string();
        let csrf = access["csrf"].as_str().unwrap().to_string();
        self.headers = vec![("x-study-token", token), ("x-csrf-token", csrf), ("sec-fetch-site", "same-origin".into())];
    }

    /// The study token and its CSRF token, once kept.
    fn access(&self) -> (String, String) {
        (self.headers[0].1.clone(), self.headers[1].1.clone())
    }

    async fn post(&mut self, uri: &str, body: Value) -> Answer {
        let request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        // A framed page carries its token in its headers, or (entering) has no cookie to bind a CSRF token to.
        let request = if self.cookieless { request } else { request.header("x-csrf-token", self.token().await) };
        self.send(request.body(Body::from(body.to_string())).unwrap()).await
    }

    async fn call(&mut self, function: &str, args: Value) -> Answer {
        self.post(&format!("/api/fn/{function}"), args).await
    }

    async fn login(&mut self) {
        let answer = self.post("/admin/login", json!({ "password": PASSWORD })).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
}

fn study_form(slug: &str, platform: &str) -> Value {
    json!({
        "name": format!("Study {slug}"),
        "slug": slug,
        "gyms": "",
        "tasks": "telepathy/telepathy-0001\ntravel/travel-0001",
        "split": "test",
        "models": "expert",
        "episodes_per_worker": "2",
        "time_limit_min": "30",
        "max_turns": "3",
        "pay_note": "£1 for ~5 minutes",
        "instructions": "Answer the agent as the user would.",
        "consent_text": "I agree to take part.",
        "consent_version": "v1",
        "platform": platform,
        "completion_url": "",
        "open": true,
    })
}

/// Creates a study as the admin; returns its id. The task ids are each gym's first test task.
async fn create_study(site: &Site, slug: &str, platform: &str) -> i64 {
    let mut admin = Browser::new(site, [127, 0, 0, 1]);
    admin.login().await;
    let mut form = study_form(slug, platform);
    form["tasks"] = json!(first_test_tasks(site).await);
    let created = admin.post("/api/admin/studies", form).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    created.json()["Created"]["id"].as_i64().unwrap()
}

/// `telepathy/<id>\ntravel/<id>`: the first test task of each gym, as the creation form lists tasks.
async fn first_test_tasks(_site: &Site) -> String {
    use userrl_gym::{Catalog, GymKind, Split};
    let catalog = Catalog::builtin(&[GymKind::Telepathy, GymKind::Travel]).unwrap();
    catalog
        .gyms()
        .iter()
        .map(|g| format!("{}/{}", g.kind().name(), g.task_ids(Some(Split::Test))[0]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An answer that fits any prompt: ordinary conversation where asked what a message does, the first option
/// elsewhere, nothing ticked, the lowest scale value, and `text` in every text field.
fn answer_for(prompt: &Value, text: &str) -> Value {
    let mut values = serde_json::Map::new();
    for c in prompt["controls"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        match c["type"].as_str().unwrap() {
            "buttons" => {
                let options = c["options"].as_array().unwrap();
                let pick = options.iter().find(|o| o["id"] == "conversation").unwrap_or(&options[0]);
                values.insert(name, pick["id"].clone());
            }
            "checkboxes" => {}
            "scale" => {
                values.insert(name, c["min"].clone());
            }
            _ => {
                values.insert(name, json!(text));
            }
        }
    }
    json!({ "values": values })
}

/// Plays every assigned episode to its end, answering each prompt with `answer_for(prompt, text)`.
async fn play_all(worker: &mut Browser<'_>, slug: &str, text: &str) -> Value {
    let mut view = worker.call("study_view", json!({ "slug": slug })).await.json();
    for _ in 0..2000 {
        if view["can_complete"] == true {
            return view;
        }
        let current = &view["current"];
        if !current["prompt"].is_null() {
            let prompt = current["prompt"].clone();
            let answer = answer_for(&prompt, text);
            let res =
                worker.call("study_answer", json!({ "slug": slug, "prompt_id": prompt["id"], "answer": answer })).await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.body);
            view = res.json();
            continue;
        }
        let running = view["episodes"].as_array().unwrap().iter().any(|e| e["state"] == "running");
        if !running && current["ended"] == true {
            let res = worker.call("study_next", json!({ "slug": slug })).await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.body);
            view = res.json();
            continue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = worker.call("study_view", json!({ "slug": slug })).await.json();
    }
    panic!("the episodes did not end: {view}");
}

fn prolific(pid: &str) -> Value {
    json!({ "PROLIFIC_PID": pid, "STUDY_ID": "st1", "SESSION_ID": format!("se-{pid}") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_plays_telepathy_and_travel_and_gets_one_code() {
    let site = site("complete").await;
    let study = create_study(&site, "pilot", "prolific").await;
    let mut worker = Browser::new(&site, [192, 0, 2, 10]);

    let entered = worker.call("study_enter", json!({ "slug": "pilot", "params": prolific("W1") })).await;
    assert_eq!(entered.status, StatusCode::OK, "{}", entered.body);
    assert!(entered.sets_cookie("userrl_study_pilot="), "entering sets the session cookie");
    let cookie = entered
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("userrl_study_pilot="))
        .unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let entry = entered.json();
    assert_eq!(entry["mode"], "session");
    assert_eq!(entry["view"]["state"], "consent");
    assert_eq!(entry["view"]["study"]["consent_text"], "I agree to take part.");
    assert!(entry["view"]["study"].get("tasks").is_none(), "workers never see the task list");

    // Nothing happens before consent; a consent to another text version is refused.
    let early = worker.call("study_begin", json!({ "slug": "pilot" })).await;
    assert_eq!(early.status, StatusCode::CONFLICT, "{}", early.body);
    let stale = worker.call("study_consent", json!({ "slug": "pilot", "version": "v0" })).await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let consented = worker.call("study_consent", json!({ "slug": "pilot", "version": "v1" })).await;
    assert_eq!(consented.json()["state"], "instructions", "{}", consented.body);
    let session = site.store.worker_sessions(study).await.unwrap().remove(0);
    assert_eq!(session.consent_version.as_deref(), Some("v1"));
    assert!(session.consent_at.is_some());
    assert_eq!(session.ids.worker_id, "W1");

    let begun = worker.call("study_begin", json!({ "slug": "pilot" })).await;
    assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
    assert_eq!(begun.json()["state"], "episodes");
    let early_code = worker.call("study_complete", json!({ "slug": "pilot" })).await;
    assert_eq!(early_code.status, StatusCode::CONFLICT, "no code before the episodes end");

    let done = play_all(&mut worker, "pilot", PAYLOAD).await;
    let gyms: Vec<&str> = done["episodes"].as_array().unwrap().iter().map(|e| e["gym"].as_str().unwrap()).collect();
    let mut sorted = gyms.clone();
    sorted.sort();
    assert_eq!(sorted, ["telepathy", "travel"], "one episode of each task");

    let completed = worker.call("study_complete", json!({ "slug": "pilot" })).await;
    assert_eq!(completed.status, StatusCode::OK, "{}", completed.body);
    let completion = completed.json();
    let code = completion["code"].as_str().unwrap().to_string();
    assert_eq!(code.len(), 12);
    assert_eq!(completion["redirect"], format!("https://app.prolific.com/submissions/complete?cc={code}"));

    // The code is given once: asking again, reloading the page or opening the link again gives no code.
    let again = worker.call("study_complete", json!({ "slug": "pilot" })).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(!again.body.contains(&code));
    let reload = worker.call("study_view", json!({ "slug": "pilot" })).await;
    assert_eq!(reload.json()["state"], "completed");
    assert!(!reload.body.contains(&code));
    let relink = worker.call("study_enter", json!({ "slug": "pilot", "params": prolific("W1") })).await;
    assert_eq!(relink.status, StatusCode::OK);
    assert_eq!(relink.json()["view"]["state"], "completed");
    assert!(!relink.body.contains(&code));
    // The same link in another browser (no cookie) does not start over either.
    let mut other = Browser::new(&site, [192, 0, 2, 11]);
    let elsewhere = other.call("study_enter", json!({ "slug": "pilot", "params": prolific("W1") })).await;
    assert_eq!(elsewhere.status, StatusCode::CONFLICT, "{}", elsewhere.body);
    assert!(!elsewhere.body.contains(&code));
    let session = site.store.worker_sessions(study).await.unwrap().remove(0);
    assert_eq!(session.completion_code.as_deref(), Some(code.as_str()));

    // The admin sees both episodes with their rewards, the transcript with the worker's text inert, exports.
    let mut admin = Browser::new(&site, [127, 0, 0, 1]);
    admin.login().await;
    let detail = admin.get(&format!("/api/admin/studies/{study}")).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    let detail = detail.json();
    let episodes = detail["episodes"].as_array().unwrap();
    assert_eq!(episodes.len(), 2);
    assert!(
        episodes.iter().all(|e| e["state"] == "ended" && e["score"].is_number() && e["turns"].as_i64().unwrap() >= 1)
    );
    assert!(episodes.iter().all(|e| !e["answer_ms"].as_array().unwrap().is_empty()), "per-answer times are kept");
    assert_eq!(detail["progress"]["completed"], 1);
    assert!(
        detail["link"].as_str().unwrap().ends_with(
            "/study/pilot?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
        )
    );

    let travel = episodes.iter().find(|e| e["gym"] == "travel").unwrap();
    let page = admin.get(&format!("/admin/studies/{study}/episodes/{}", travel["id"])).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert("), "the worker's text is shown escaped");
    assert!(!page.body.contains(PAYLOAD), "the worker's markup never reaches the page raw");
    let study_page = admin.get(&format!("/admin/studies/{study}")).await;
    assert_eq!(study_page.status, StatusCode::OK);
    assert!(!study_page.body.contains("<script>alert('xss')"));

    let csv = admin.get(&format!("/api/admin/studies/{study}/export.csv")).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/csv"));
    assert_eq!(csv.body.lines().count(), 3, "{}", csv.body);
    assert!(csv.body.contains(&code));
    let jsonl = admin.get(&format!("/api/admin/studies/{study}/export.jsonl")).await;
    assert_eq!(jsonl.status, StatusCode::OK);
    let lines: Vec<Value> = jsonl.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines.iter().any(|l| l["answers"].to_string().contains("<script>alert('xss')</script>")),
        "JSONL keeps the text exactly"
    );

    // Excluding (not rejecting) the session takes it out of the real-user scores; the reason is CSV-safe.
    let session_id = session.id;
    let evals = admin.call("list_evals", json!({})).await.json();
    assert!(evals.as_array().unwrap().iter().any(|e| e["user_kind"] == "human" && e["model"] == "expert"), "{evals}");
    let excluded = admin
        .post(
            &format!("/api/admin/studies/{study}/sessions/{session_id}/exclude"),
            json!({ "excluded": true, "reason": "=HYPERLINK(\"http://x\")" }),
        )
        .await;
    assert_eq!(excluded.status, StatusCode::OK, "{}", excluded.body);
    let csv = admin.get(&format!("/api/admin/studies/{study}/export.csv")).await;
    assert!(csv.body.contains("\"'=HYPERLINK(\"\"http://x\"\")\""), "{}", csv.body);
    let evals = admin.call("list_evals", json!({})).await.json();
    assert!(!evals.as_array().unwrap().iter().any(|e| e["user_kind"] == "human"), "{evals}");
    let eval_page = admin.get("/eval").await;
    assert!(eval_page.body.contains("real user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_and_missing_session_tokens_are_refused() {
    let site = site("tokens").await;
    create_study(&site, "alpha", "prolific").await;
    create_study(&site, "beta", "prolific").await;
    let mut worker = Browser::new(&site, [192, 0, 2, 20]);
    let none = worker.call("study_view", json!({ "slug": "alpha" })).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{}", none.body);

    worker.cookies.insert("userrl_study_alpha".into(), "ab".repeat(32));
    let forged = worker.call("study_view", json!({ "slug": "alpha" })).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    let forged_answer =
        worker.call("study_answer", json!({ "slug": "alpha", "prompt_id": 1, "answer": { "values": {} } })).await;
    assert_eq!(forged_answer.status, StatusCode::FORBIDDEN);
    worker.cookies.clear();

    let entered = worker.call("study_enter", json!({ "slug": "alpha", "params": prolific("W2") })).await;
    assert_eq!(entered.status, StatusCode::OK, "{}", entered.body);
    let token = worker.cookies["userrl_study_alpha"].clone();
    assert!(site.store.worker_session_by_token(&token).await.unwrap().is_none(), "only the hash is stored");
    // Alpha's token replayed as beta's cookie belongs to another study.
    worker.cookies.insert("userrl_study_beta".into(), token.clone());
    let foreign = worker.call("study_view", json!({ "slug": "beta" })).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.body);
    // The cookie of one worker with another worker's link is refused.
    let swapped = worker.call("study_enter", json!({ "slug": "alpha", "params": prolific("W3") })).await;
    assert_eq!(swapped.status, StatusCode::FORBIDDEN, "{}", swapped.body);
    // A replayed prompt id is refused (the prompt is answered once).
    worker.call("study_consent", json!({ "slug": "alpha", "version": "v1" })).await;
    let view = worker.call("study_begin", json!({ "slug": "alpha" })).await.json();
    let mut view = view;
    for _ in 0..500 {
        if !view["current"]["prompt"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = worker.call("study_view", json!({ "slug": "alpha" })).await.json();
    }
    let prompt = view["current"]["prompt"].clone();
    let answer = answer_for(&prompt, "a fine answer");
    let first =
        worker.call("study_answer", json!({ "slug": "alpha", "prompt_id": prompt["id"], "answer": answer })).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let replay =
        worker.call("study_answer", json!({ "slug": "alpha", "prompt_id": prompt["id"], "answer": answer })).await;
    assert_eq!(replay.status, StatusCode::CONFLICT, "{}", replay.body);
    // Over-long text is refused with a message, not a panic.
    let long = "x".repeat(20_000);
    let huge = worker
        .call(
            "study_answer",
            json!({ "slug": "alpha", "prompt_id": 999, "answer": { "values": { "response": long } } }),
        )
        .await;
    assert_eq!(huge.status, StatusCode::BAD_REQUEST, "{}", huge.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_per_worker_and_mturk_preview_makes_none() {
    let site = site("sessions").await;
    let study = create_study(&site, "pilot", "prolific").await;
    let mut first = Browser::new(&site, [192, 0, 2, 30]);
    let entered = first.call("study_enter", json!({ "slug": "pilot", "params": prolific("W4") })).await;
    assert_eq!(entered.status, StatusCode::OK, "{}", entered.body);
    let reload = first.call("study_enter", json!({ "slug": "pilot", "params": prolific("W4") })).await;
    assert_eq!(reload.status, StatusCode::OK);
    assert!(!reload.sets_cookie("userrl_study_pilot="), "reloading resumes the same session");
    let mut second = Browser::new(&site, [192, 0, 2, 31]);
    let elsewhere = second.call("study_enter", json!({ "slug": "pilot", "params": prolific("W4") })).await;
    assert_eq!(elsewhere.status, StatusCode::CONFLICT, "{}", elsewhere.body);
    assert_eq!(site.store.worker_sessions(study).await.unwrap().len(), 1);
    let bad = second.call("study_enter", json!({ "slug": "pilot", "params": { "STUDY_ID": "x" } })).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "a link without PROLIFIC_PID");
    let missing = second.call("study_enter", json!({ "slug": "nope", "params": prolific("W5") })).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let turk = create_study(&site, "turk", "mturk").await;
    let mut previewer = Browser::new(&site, [192, 0, 2, 32]);
    let preview = previewer
        .call(
            "study_enter",
            json!({ "slug": "turk", "params": { "assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "H1" } }),
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    assert_eq!(preview.json()["mode"], "preview");
    assert!(!preview.sets_cookie("userrl_study_turk="));
    assert!(site.store.worker_sessions(turk).await.unwrap().is_empty(), "a preview makes no session");
    let evil = previewer
        .call(
            "study_enter",
            json!({ "slug": "turk", "params": { "workerId": "A1", "assignmentId": "X1", "hitId": "H1", "turkSubmitTo": "https://evil.example" } }),
        )
        .await;
    assert_eq!(evil.status, StatusCode::BAD_REQUEST, "only MTurk's own hosts take the form post");
    let accepted = previewer
        .call(
            "study_enter",
            json!({ "slug": "turk", "params": { "workerId": "A1", "assignmentId": "X1", "hitId": "H1", "turkSubmitTo": "https://workersandbox.mturk.com" } }),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    assert_eq!(accepted.json()["view"]["state"], "consent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_everyone_else() {
    let site = site("admin").await;
    let study = create_study(&site, "pilot", "prolific").await;
    let mut visitor = Browser::new(&site, [192, 0, 2, 40]);
    for uri in [
        "/api/admin/studies".to_string(),
        format!("/api/admin/studies/{study}"),
        format!("/api/admin/studies/{study}/export.csv"),
        format!("/api/admin/studies/{study}/export.jsonl"),
        format!("/api/admin/studies/{study}/episodes/1"),
    ] {
        let answer = visitor.get(&uri).await;
        assert!(matches!(answer.status.as_u16(), 401 | 403), "{uri}: {} {}", answer.status, answer.body);
    }
    let create = visitor.post("/api/admin/studies", study_form("sneaky", "prolific")).await;
    assert!(matches!(create.status.as_u16(), 401 | 403), "{}", create.status);
    let exclude =
        visitor.post(&format!("/api/admin/studies/{study}/sessions/1/exclude"), json!({ "excluded": true })).await;
    assert!(matches!(exclude.status.as_u16(), 401 | 403));
    for (function, args) in [
        ("admin_studies", json!({})),
        ("admin_study", json!({ "id": study })),
        ("admin_create_study", json!({ "form": study_form("sneaky2", "prolific") })),
        ("admin_study_status", json!({ "id": study, "status": "closed" })),
        ("admin_exclude", json!({ "study_id": study, "session_id": 1, "excluded": true, "reason": "" })),
        ("admin_study_episode", json!({ "study_id": study, "episode_id": 1 })),
    ] {
        let answer = visitor.call(function, args).await;
        assert!(matches!(answer.status.as_u16(), 401 | 403), "{function}: {} {}", answer.status, answer.body);
    }
    let page = visitor.get("/admin/studies").await;
    assert!(page.status.is_redirection() || matches!(page.status.as_u16(), 401 | 403), "{}", page.status);
    assert!(site.store.study_by_slug("sneaky").await.unwrap().is_none());
    assert_eq!(site.store.study(study).await.unwrap().unwrap().status.as_str(), "open");

    // The form's errors name their field.
    let mut admin = Browser::new(&site, [127, 0, 0, 1]);
    admin.login().await;
    let mut bad = study_form("Bad Slug", "prolific");
    bad["tasks"] = json!(first_test_tasks(&site).await);
    let refused = admin.post("/api/admin/studies", bad).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["field"], "slug");
    let mut unknown = study_form("ok-slug", "prolific");
    unknown["tasks"] = json!("telepathy/no-such-task");
    assert_eq!(admin.post("/api/admin/studies", unknown).await.json()["field"], "tasks");
    let mut model = study_form("ok-slug", "prolific");
    model["tasks"] = json!(first_test_tasks(&site).await);
    model["models"] = json!("/no/such/model.gguf");
    assert_eq!(admin.post("/api/admin/studies", model).await.json()["field"], "models");
}

fn mturk(worker: &str) -> Value {
    json!({
        "workerId": worker,
        "assignmentId": format!("AS-{worker}"),
        "hitId": "H1",
        "turkSubmitTo": "https://workersandbox.mturk.com",
    })
}

/// A worker call with the given headers only (no cookies), for the refusals of the token path.
async fn raw_call(site: &Site, function: &str, args: Value, headers: &[(&str, &str)]) -> Answer {
    let mut worker = Browser::framed(site, [192, 0, 2, 99]);
    let mut request = Request::post(format!("/api/fn/{function}")).header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    worker.send(request.body(Body::from(args.to_string())).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_mturks_iframe_a_worker_needs_no_cookies_and_forged_tokens_are_refused() {
    let site = site("iframe").await;
    create_study(&site, "turk", "mturk").await;
    create_study(&site, "other", "mturk").await;

    // Only the study pages may be framed, and only by MTurk's hosts; every other page by nobody.
    let mut page = Browser::new(&site, [192, 0, 2, 50]);
    let study_page = page.get("/study/turk?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE").await;
    assert_eq!(study_page.status, StatusCode::OK);
    let csp = study_page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("frame-ancestors") && csp.contains("https://workersandbox.mturk.com"), "{csp}");
    assert!(!study_page.headers.contains_key(header::X_FRAME_OPTIONS));
    for uri in ["/", "/admin/login", "/eval", "/api/auth"] {
        let other = page.get(uri).await;
        assert_eq!(other.headers[header::X_FRAME_OPTIONS], "DENY", "{uri}");
        assert_eq!(other.headers[header::CONTENT_SECURITY_POLICY], "frame-ancestors 'none'", "{uri}");
    }

    // The whole flow without a single cookie: the token from `study_enter` travels in headers.
    let mut worker = Browser::framed(&site, [192, 0, 2, 51]);
    let entered = worker.call("study_enter", json!({ "slug": "turk", "params": mturk("A1") })).await;
    assert_eq!(entered.status, StatusCode::OK, "{}", entered.body);
    assert_eq!(entered.json()["view"]["state"], "consent");
    worker.keep_access(&entered);
    let (token, csrf) = worker.access();
    assert_eq!(token.len(), 64);
    assert!(site.store.worker_session_by_token(&token).await.unwrap().is_none(), "only the hash is stored");
    // Reopening the link in the frame (the page sends its token) resumes without handing the token out again.
    let again = worker.call("study_enter", json!({ "slug": "turk", "params": mturk("A1") })).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert!(again.json().get("access").is_none(), "{}", again.body);
    let consented = worker.call("study_consent", json!({ "slug": "turk", "version": "v1" })).await;
    assert_eq!(consented.status, StatusCode::OK, "{}", consented.body);
    let begun = worker.call("study_begin", json!({ "slug": "turk" })).await;
    assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
    play_all(&mut worker, "turk", "a plain answer").await;
    let completed = worker.call("study_complete", json!({ "slug": "turk" })).await;
    assert_eq!(completed.status, StatusCode::OK, "{}", completed.body);
    let completion = completed.json();
    assert_eq!(completion["mturk_submit"]["action"], "https://workersandbox.mturk.com/mturk/externalSubmit");
    assert_eq!(completion["mturk_submit"]["assignment_id"], "AS-A1");
    let code = completion["code"].as_str().unwrap().to_string();
    assert!(worker.cookies.is_empty());
    let replay = worker.call("study_complete", json!({ "slug": "turk" })).await;
    assert_eq!(replay.status, StatusCode::CONFLICT, "the code is handed out once: {}", replay.body);
    assert!(!replay.body.contains(&code));

    // Refusals: a forged token (with its matching CSRF token), the real token with a wrong, missing or
    // cross-site CSRF proof, a malformed token, the token on another study or another worker's link.
    let slug = json!({ "slug": "turk" });
    let forged = "ab".repeat(32);
    let forged_csrf = userrl_app::auth::csrf_for(&forged);
    let refused = [
        (
            "forged",
            raw_call(&site, "study_view", slug.clone(), &[("x-study-token", &forged), ("x-csrf-token", &forged_csrf)])
                .await,
        ),
        (
            "wrong csrf",
            raw_call(&site, "study_view", slug.clone(), &[("x-study-token", &token), ("x-csrf-token", &forged_csrf)])
                .await,
        ),
        ("no csrf", raw_call(&site, "study_view", slug.clone(), &[("x-study-token", &token)]).await),
        (
            "malformed",
            raw_call(&site, "study_view", slug.clone(), &[("x-study-token", "abc"), ("x-csrf-token", "abc")]).await,
        ),
        (
            "cross-site",
            raw_call(
                &site,
                "study_view",
                slug.clone(),
                &[("x-study-token", &token), ("x-csrf-token", &csrf), ("sec-fetch-site", "cross-site")],
            )
            .await,
        ),
        (
            "other study",
            raw_call(
                &site,
                "study_view",
                json!({ "slug": "other" }),
                &[("x-study-token", &token), ("x-csrf-token", &csrf)],
            )
            .await,
        ),
        (
            "other worker",
            raw_call(
                &site,
                "study_enter",
                json!({ "slug": "turk", "params": mturk("A2") }),
                &[("x-study-token", &token), ("x-csrf-token", &csrf)],
            )
            .await,
        ),
    ];
    for (what, answer) in &refused {
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}: {}", answer.body);
        assert!(!answer.body.contains(&code), "{what}");
    }
    let ok = raw_call(&site, "study_view", slug.clone(), &[("x-study-token", &token), ("x-csrf-token", &csrf)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.json()["state"], "completed");
    // Without the token, the same worker cannot start over in a fresh frame.
    let mut fresh = Browser::framed(&site, [192, 0, 2, 52]);
    let restart = fresh.call("study_enter", json!({ "slug": "turk", "params": mturk("A1") })).await;
    assert_eq!(restart.status, StatusCode::CONFLICT, "{}", restart.body);

    // A study token opens no admin route: those keep cookies and CSRF.
    let admin_api =
        raw_call(&site, "admin_studies", json!({}), &[("x-study-token", &token), ("x-csrf-token", &csrf)]).await;
    assert!(matches!(admin_api.status.as_u16(), 401 | 403), "{} {}", admin_api.status, admin_api.body);
    let mut request = Request::get("/api/admin/studies").body(Body::empty()).unwrap();
    request.headers_mut().insert("x-study-token", token.parse().unwrap());
    assert_eq!(Browser::framed(&site, [192, 0, 2, 53]).send(request).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_behind_one_nat_takes_a_study_together_within_per_worker_limits() {
    // The site's default limits: 5 mutations a second per IP (burst 60) would stop a lab after a few polls.
    let config = AuthConfig { admin_password_hash: Some(hash_password(PASSWORD).unwrap()), ..AuthConfig::default() };
    let site = site_with("nat", config).await;
    create_study(&site, "lab", "prolific").await;
    const NAT: [u8; 4] = [198, 51, 100, 7];
    const WORKERS: usize = 40;

    let mut workers: Vec<Browser<'_>> = (0..WORKERS).map(|_| Browser::framed(&site, NAT)).collect();
    for (i, worker) in workers.iter_mut().enumerate() {
        let entered = worker.call("study_enter", json!({ "slug": "lab", "params": prolific(&format!("L{i}")) })).await;
        assert_eq!(entered.status, StatusCode::OK, "worker {i} entering: {}", entered.body);
        worker.keep_access(&entered);
        let consented = worker.call("study_consent", json!({ "slug": "lab", "version": "v1" })).await;
        assert_eq!(consented.status, StatusCode::OK, "worker {i}: {}", consented.body);
        let begun = worker.call("study_begin", json!({ "slug": "lab" })).await;
        assert_eq!(begun.status, StatusCode::OK, "worker {i}: {}", begun.body);
    }
    // Everyone polls their episode's state, round after round: 400 more calls from one address.
    for round in 0..10 {
        for (i, worker) in workers.iter_mut().enumerate() {
            let view = worker.call("study_view", json!({ "slug": "lab" })).await;
            assert_eq!(view.status, StatusCode::OK, "round {round}, worker {i}: {}", view.body);
        }
    }

    // One worker hammering is stopped by its own budget, with a Retry-After, and nobody else is.
    let mut limited = None;
    for _ in 0..200 {
        let view = workers[0].call("study_view", json!({ "slug": "lab" })).await;
        if view.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(view);
            break;
        }
        assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    }
    let limited = limited.expect("a single worker's calls are limited");
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
    let neighbour = workers[1].call("study_view", json!({ "slug": "lab" })).await;
    assert_eq!(neighbour.status, StatusCode::OK, "{}", neighbour.body);
    for worker in &mut workers {
        worker.call("study_leave", json!({ "slug": "lab" })).await;
    }

    // Everything else from that address still has the site's per-IP mutation budget.
    let mut visitor = Browser::new(&site, NAT);
    let csrf = visitor.token().await;
    let mut statuses = Vec::new();
    for _ in 0..80 {
        let request = Request::post("/api/fn/auth_status")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-csrf-token", csrf.as_str())
            .body(Body::from("{}"))
            .unwrap();
        statuses.push(visitor.send(request).await.status);
    }
    assert_eq!(statuses[0], StatusCode::OK);
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "the per-IP mutation budget still applies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_prolific_code_is_shown_once_per_session_after_the_rules_are_met() {
    let site = site("fixed").await;
    let mut admin = Browser::new(&site, [127, 0, 0, 1]);
    admin.login().await;
    let mut form = study_form("fixed", "prolific");
    form["tasks"] = json!(first_test_tasks(&site).await.lines().next().unwrap());
    form["episodes_per_worker"] = json!("1");
    for (platform, code) in [("mturk", "STUDYCODE1"), ("prolific", "has spaces"), ("prolific", "<b>")] {
        let mut bad = form.clone();
        bad["platform"] = json!(platform);
        bad["completion_code"] = json!(code);
        let refused = admin.post("/api/admin/studies", bad).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{platform} {code}: {}", refused.body);
        assert_eq!(refused.json()["field"], "completion_code");
    }
    form["completion_code"] = json!(" C1X2Y3Z4 ");
    let created = admin.post("/api/admin/studies", form).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let study = created.json()["Created"]["id"].as_i64().unwrap();
    assert_eq!(site.store.study(study).await.unwrap().unwrap().spec.completion_code, "C1X2Y3Z4");

    for (n, pid) in ["F1", "F2"].into_iter().enumerate() {
        let mut worker = Browser::new(&site, [192, 0, 2, 60 + n as u8]);
        let entered = worker.call("study_enter", json!({ "slug": "fixed", "params": prolific(pid) })).await;
        assert_eq!(entered.status, StatusCode::OK, "{}", entered.body);
        assert!(!entered.body.contains("C1X2Y3Z4"), "the code is never shown before the end");
        worker.call("study_consent", json!({ "slug": "fixed", "version": "v1" })).await;
        let begun = worker.call("study_begin", json!({ "slug": "fixed" })).await;
        assert!(!begun.body.contains("C1X2Y3Z4"));
        let early = worker.call("study_complete", json!({ "slug": "fixed" })).await;
        assert_eq!(early.status, StatusCode::CONFLICT, "no code before the rules are met");
        assert!(!early.body.contains("C1X2Y3Z4"));
        play_all(&mut worker, "fixed", "an answer").await;
        let completed = worker.call("study_complete", json!({ "slug": "fixed" })).await;
        assert_eq!(completed.status, StatusCode::OK, "{}", completed.body);
        assert_eq!(completed.json()["code"], "C1X2Y3Z4");
        assert_eq!(completed.json()["redirect"], "https://app.prolific.com/submissions/complete?cc=C1X2Y3Z4");
        let again = worker.call("study_complete", json!({ "slug": "fixed" })).await;
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert!(!again.body.contains("C1X2Y3Z4"), "once per session");
        let reload = worker.call("study_view", json!({ "slug": "fixed" })).await;
        assert_eq!(reload.json()["state"], "completed");
        assert!(!reload.body.contains("C1X2Y3Z4"));
    }
    // Each session keeps a receipt code of its own; the CSV shows the code the workers were given.
    let sessions = site.store.worker_sessions(study).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s.completion_code.as_ref().is_some_and(|c| c.len() == 12)));
    let csv = admin.get(&format!("/api/admin/studies/{study}/export.csv")).await;
    assert_eq!(csv.body.matches("C1X2Y3Z4").count(), 2, "{}", csv.body);
}
